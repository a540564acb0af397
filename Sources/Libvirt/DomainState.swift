// DomainState: virDomainState and its per-state reasons as Swift enums.

import CLibvirt

/// The state of a domain with the reason libvirt gives for it (`virDomainGetState`).
///
/// Reasons libvirt adds in later versions map to the reason's `unknown` case.
public enum DomainState: Sendable, Hashable, CustomStringConvertible {
    case noState
    case running(RunningReason)
    case blocked
    case paused(PausedReason)
    /// Being shut down (the guest got the request and is working on it).
    case shuttingDown
    case shutOff(ShutOffReason)
    case crashed
    case pmSuspended
    /// A state this wrapper does not know.
    case unknown(state: Int32, reason: Int32)

    /// Why a domain runs (`virDomainRunningReason`).
    public enum RunningReason: Int32, Sendable, Hashable {
        case unknown = 0, booted, migrated, restored, fromSnapshot, unpaused, migrationCanceled, saveCanceled,
            wakeup, crashed, postcopy, postcopyFailed
    }

    /// Why a domain is paused (`virDomainPausedReason`).
    public enum PausedReason: Int32, Sendable, Hashable {
        case unknown = 0, user, migration, save, dump, ioError, watchdog, fromSnapshot, shuttingDown, snapshot,
            crashed, startingUp, postcopy, postcopyFailed
    }

    /// Why a domain is shut off (`virDomainShutoffReason`).
    public enum ShutOffReason: Int32, Sendable, Hashable {
        case unknown = 0, shutdown, destroyed, crashed, migrated, saved, failed, fromSnapshot, daemon
    }

    /// Maps `virDomainGetState`'s two integers.
    public init(state: Int32, reason: Int32) {
        switch UInt32(bitPattern: state) {
        case VIR_DOMAIN_NOSTATE.rawValue: self = .noState
        case VIR_DOMAIN_RUNNING.rawValue: self = .running(RunningReason(rawValue: reason) ?? .unknown)
        case VIR_DOMAIN_BLOCKED.rawValue: self = .blocked
        case VIR_DOMAIN_PAUSED.rawValue: self = .paused(PausedReason(rawValue: reason) ?? .unknown)
        case VIR_DOMAIN_SHUTDOWN.rawValue: self = .shuttingDown
        case VIR_DOMAIN_SHUTOFF.rawValue: self = .shutOff(ShutOffReason(rawValue: reason) ?? .unknown)
        case VIR_DOMAIN_CRASHED.rawValue: self = .crashed
        case VIR_DOMAIN_PMSUSPENDED.rawValue: self = .pmSuspended
        default: self = .unknown(state: state, reason: reason)
        }
    }

    /// Whether a hypervisor process exists for the domain (anything but shut off, crashed and no
    /// state).
    public var isActive: Bool {
        switch self {
        case .running, .blocked, .paused, .shuttingDown, .pmSuspended: true
        case .noState, .shutOff, .crashed, .unknown: false
        }
    }

    /// True for ``running(_:)``.
    public var isRunning: Bool {
        if case .running = self { return true }
        return false
    }

    /// True for ``shutOff(_:)``.
    public var isShutOff: Bool {
        if case .shutOff = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .noState: "no state"
        case .running(let r): "running (\(r))"
        case .blocked: "blocked"
        case .paused(let r): "paused (\(r))"
        case .shuttingDown: "shutting down"
        case .shutOff(let r): "shut off (\(r))"
        case .crashed: "crashed"
        case .pmSuspended: "pm-suspended"
        case .unknown(let s, let r): "unknown state \(s) (reason \(r))"
        }
    }
}
