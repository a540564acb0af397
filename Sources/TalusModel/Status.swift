// Status machines (DESIGN §3): each status name is an enumerated state, the allowed transitions
// are encoded once here, and every writer checks them. Users write only *requests*; the master
// writes every other state.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// The enumerated states of one status machine.
public protocol StatusName: RawRepresentable, Codable, Sendable, Hashable, CaseIterable, CustomStringConvertible
where RawValue == String {
    /// The collection whose documents carry this status (for error messages).
    static var collection: Collection { get }
    /// States a new document may be created in.
    static var initial: Set<Self> { get }
    /// For each state, the states it may move to. A state absent from the table is terminal.
    static var transitions: [Self: Set<Self>] { get }
    /// True for the states a user may write through the API (`import`, `run`, `cancel`, ...).
    var isRequest: Bool { get }
}

extension StatusName {
    public var description: String { rawValue }

    /// True when no transition leaves this state.
    public var isTerminal: Bool { (Self.transitions[self] ?? []).isEmpty }

    /// True when moving from `self` to `next` is allowed. Staying in the same state is always
    /// allowed (an update of the status details, e.g. the VNC port, is not a transition).
    public func canMove(to next: Self) -> Bool {
        next == self || (Self.transitions[self]?.contains(next) ?? false)
    }

    /// Throws ``TransitionError`` naming both states when `self → next` is not allowed.
    public func checkTransition(to next: Self, id: ObjectId? = nil) throws {
        guard canMove(to: next) else {
            throw TransitionError(collection: Self.collection.rawValue, id: id, from: rawValue, to: next.rawValue)
        }
    }

    /// The requests a user may write when the document is in this state.
    public var allowedRequests: [Self] {
        Self.allCases.filter { $0.isRequest && $0 != self && canMove(to: $0) }
    }
}

/// An illegal status transition: the document stays as it was and the writer reports this.
public struct TransitionError: Error, CustomStringConvertible, Sendable, Equatable {
    public let collection: String
    public let id: ObjectId?
    public let from: String
    public let to: String
    public var description: String {
        let doc = id.map { "\(collection)/\($0)" } ?? collection
        return "illegal status transition on \(doc): \(from) → \(to)"
    }
}

/// A status sub-document `{name, reason?, since}`.
public struct Status<Name: StatusName>: Codable, Sendable, Equatable {
    public var name: Name
    /// Why the document is in this state, for a person to act on (always set for errors).
    public var reason: String?
    /// When the document entered this state.
    public var since: Date

    public init(_ name: Name, reason: String? = nil, since: Date = bsonNow()) {
        self.name = name
        self.reason = reason
        self.since = since
    }
}

// MARK: - Images

/// Image states: `import → importing(vnc) → ready`; `configure → configuring(vnc) → ready`;
/// `create → creating(vnc?) → ready`, or `create → ready` directly for a non-interactive create
/// without a script (an overlay is created in milliseconds: no VM, nothing to show);
/// `delete → deleting → (removed)`; any → `error(reason)`.
public enum ImageState: String, StatusName {
    case `import`, importing, configure, configuring, create, creating, delete, deleting, ready, error

    public static let collection = Collection.images
    public static let initial: Set<ImageState> = [.import, .create]
    public static let transitions: [ImageState: Set<ImageState>] = [
        .import: [.importing, .error, .delete],
        .importing: [.ready, .error, .delete],
        .configure: [.configuring, .ready, .error, .delete],
        .configuring: [.ready, .error, .delete],
        .create: [.creating, .ready, .error, .delete],
        .creating: [.ready, .error, .delete],
        // A refused delete goes back to where it came from, with the reason.
        .delete: [.deleting, .ready, .error],
        .deleting: [.error],
        .ready: [.configure, .delete],
        .error: [.delete, .configure],
    ]
    public var isRequest: Bool { [.import, .configure, .create, .delete].contains(self) }

    /// States in which the master is running a VM or a file operation for the image.
    public var isTransitional: Bool { [.importing, .configuring, .creating, .deleting].contains(self) }
}

// MARK: - Jobs

/// Job states: `run → running → finished`; `cancel → cancelling → cancelled`;
/// `running → failed(reason)`.
public enum JobState: String, StatusName {
    case run, running, finished, cancel, cancelling, cancelled, failed

    public static let collection = Collection.jobs
    public static let initial: Set<JobState> = [.run]
    public static let transitions: [JobState: Set<JobState>] = [
        .run: [.running, .failed, .cancel],
        .running: [.finished, .failed, .cancel],
        .cancel: [.cancelling, .cancelled],
        .cancelling: [.cancelled],
    ]
    public var isRequest: Bool { self == .run || self == .cancel }
    /// States in which parts may be queued or running.
    public var isActive: Bool { [.run, .running, .cancel, .cancelling].contains(self) }
}

// MARK: - Parts (one unit of dispatch of a job: a VM run of the tool)

/// Part states, written by the master only.
public enum PartState: String, StatusName {
    /// Published to the job's queue, not yet started by a slave.
    case queued
    /// A slave reported `part-started`.
    case running
    /// Waiting for the master to publish another attempt after a failure.
    case retry
    case done, failed, cancelled

    public static let collection = Collection.parts
    public static let initial: Set<PartState> = [.queued]
    public static let transitions: [PartState: Set<PartState>] = [
        .queued: [.running, .retry, .done, .failed, .cancelled],
        .running: [.done, .retry, .failed, .cancelled, .queued],
        // A republished attempt may start before the master has recorded it queued again.
        .retry: [.queued, .running, .failed, .cancelled],
    ]
    public var isRequest: Bool { false }
}

// MARK: - Slaves

/// Slave states: `online → draining → offline`, and back online when heartbeats resume.
public enum SlaveState: String, StatusName {
    case online
    /// Request (admin): stop giving this slave new parts.
    case drain
    case draining, offline

    public static let collection = Collection.slaves
    public static let initial: Set<SlaveState> = [.online]
    public static let transitions: [SlaveState: Set<SlaveState>] = [
        .online: [.drain, .draining, .offline],
        .drain: [.draining, .offline, .online],
        .draining: [.offline, .online],
        .offline: [.online, .draining],
    ]
    public var isRequest: Bool { self == .drain }
}
