// Domain lifecycle events: virConnectDomainEventRegisterAny(VIR_DOMAIN_EVENT_ID_LIFECYCLE) as an
// AsyncSequence. libvirt calls a C trampoline on the event loop thread; the trampoline yields into
// an AsyncStream; the registration ends when the sequence is dropped, cancelled or finished.

import CLibvirt
import Logging
import Synchronization

/// One lifecycle event of a domain (`virConnectDomainEventCallback`).
public struct DomainLifecycleEvent: Sendable, Hashable, CustomStringConvertible {
    /// The domain's name.
    public let domainName: String
    /// The domain's UUID.
    public let domainUUID: String
    /// What happened, with libvirt's detail.
    public let kind: Kind
    /// libvirt's event type (`virDomainEventType`), as delivered.
    public let rawType: Int32
    /// libvirt's event detail, as delivered.
    public let rawDetail: Int32

    /// Makes an event from libvirt's event type and detail integers.
    public init(domainName: String, domainUUID: String, type: Int32, detail: Int32) {
        self.domainName = domainName
        self.domainUUID = domainUUID
        self.kind = Kind(type: type, detail: detail)
        self.rawType = type
        self.rawDetail = detail
    }

    public var description: String { "\(domainName): \(kind)" }

    /// What happened (`virDomainEventType`), with the detail enum of that type. Details libvirt adds
    /// later map to the detail's `unknown` case (``rawDetail`` keeps the number).
    public enum Kind: Sendable, Hashable {
        case defined(DefinedDetail)
        case undefined(UndefinedDetail)
        case started(StartedDetail)
        case suspended(SuspendedDetail)
        case resumed(ResumedDetail)
        case stopped(StoppedDetail)
        case shutdown(ShutdownDetail)
        case pmSuspended(PMSuspendedDetail)
        case crashed(CrashedDetail)
        /// An event type this wrapper does not know.
        case unknown(type: Int32, detail: Int32)

        init(type: Int32, detail: Int32) {
            switch UInt32(bitPattern: type) {
            case VIR_DOMAIN_EVENT_DEFINED.rawValue: self = .defined(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_UNDEFINED.rawValue: self = .undefined(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_STARTED.rawValue: self = .started(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_SUSPENDED.rawValue: self = .suspended(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_RESUMED.rawValue: self = .resumed(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_STOPPED.rawValue: self = .stopped(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_SHUTDOWN.rawValue: self = .shutdown(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_PMSUSPENDED.rawValue: self = .pmSuspended(.init(rawValue: detail) ?? .unknown)
            case VIR_DOMAIN_EVENT_CRASHED.rawValue: self = .crashed(.init(rawValue: detail) ?? .unknown)
            default: self = .unknown(type: type, detail: detail)
            }
        }

        /// True for ``stopped(_:)``: the emulator is gone (shut down, destroyed, crashed, failed, ...).
        public var isStopped: Bool {
            if case .stopped = self { return true }
            return false
        }
    }

    /// `virDomainEventDefinedDetailType`
    public enum DefinedDetail: Int32, Sendable, Hashable {
        case unknown = -1, added = 0, updated, renamed, fromSnapshot
    }
    /// `virDomainEventUndefinedDetailType`
    public enum UndefinedDetail: Int32, Sendable, Hashable {
        case unknown = -1, removed = 0, renamed
    }
    /// `virDomainEventStartedDetailType`
    public enum StartedDetail: Int32, Sendable, Hashable {
        case unknown = -1, booted = 0, migrated, restored, fromSnapshot, wakeup
    }
    /// `virDomainEventSuspendedDetailType`
    public enum SuspendedDetail: Int32, Sendable, Hashable {
        case unknown = -1, paused = 0, migrated, ioError, watchdog, restored, fromSnapshot, apiError, postcopy,
            postcopyFailed
    }
    /// `virDomainEventResumedDetailType`
    public enum ResumedDetail: Int32, Sendable, Hashable {
        case unknown = -1, unpaused = 0, migrated, fromSnapshot, postcopy, postcopyFailed
    }
    /// `virDomainEventStoppedDetailType`
    public enum StoppedDetail: Int32, Sendable, Hashable {
        case unknown = -1, shutdown = 0, destroyed, crashed, migrated, saved, failed, fromSnapshot
    }
    /// `virDomainEventShutdownDetailType`: the guest (or host) started a shutdown; ``finished``
    /// comes before the ``Kind/stopped(_:)`` event.
    public enum ShutdownDetail: Int32, Sendable, Hashable {
        case unknown = -1, finished = 0, guest, host
    }
    /// `virDomainEventPMSuspendedDetailType`
    public enum PMSuspendedDetail: Int32, Sendable, Hashable {
        case unknown = -1, memory = 0, disk
    }
    /// `virDomainEventCrashedDetailType`
    public enum CrashedDetail: Int32, Sendable, Hashable {
        case unknown = -1, panicked = 0, crashLoaded
    }
}

/// Lifecycle events of a connection's domains, from ``LibvirtConnection/lifecycleEvents(for:)``.
///
/// The libvirt callback is registered before this value exists and deregistered when the
/// sequence ends: when the consuming task is cancelled, ``cancel()`` is called, the connection
/// closes (the sequence then finishes; check ``LibvirtConnection/closeReason``), or the sequence
/// and all its iterators are dropped. Events are buffered (the newest 10 000) until read.
/// Iterate it once.
public struct DomainLifecycleEvents: AsyncSequence, Sendable {
    public typealias Element = DomainLifecycleEvent
    public typealias Failure = Never

    private let stream: AsyncStream<DomainLifecycleEvent>
    private let token: Token

    /// How many undelivered events are kept; older ones are dropped past this.
    public static let bufferLimit = 10_000

    public func makeAsyncIterator() -> Iterator {
        Iterator(base: stream.makeAsyncIterator(), token: token)
    }

    /// Deregisters the callback now and ends the sequence.
    public func cancel() {
        token.subscription.end()
    }

    /// Iterates the events; keeps the registration alive while it exists.
    public struct Iterator: AsyncIteratorProtocol {
        var base: AsyncStream<DomainLifecycleEvent>.Iterator
        let token: Token

        public mutating func next() async -> DomainLifecycleEvent? {
            await base.next()
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async -> DomainLifecycleEvent? {
            await base.next(isolation: actor)
        }
    }

    static func register(on connection: LibvirtConnection, domain: LibvirtDomain?) async throws(LibvirtError)
        -> DomainLifecycleEvents
    {
        let (stream, continuation) = AsyncStream.makeStream(
            of: DomainLifecycleEvent.self, bufferingPolicy: .bufferingNewest(bufferLimit))
        let sink = EventSink(continuation: continuation)
        let callbackID = try await connection.call("virConnectDomainEventRegisterAny") {
            p throws(LibvirtError) -> Int32 in
            let opaque = Unmanaged.passRetained(sink).toOpaque()
            let id = withExtendedLifetime(domain) {
                virConnectDomainEventRegisterAny(
                    p, domain?.pointer, Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue),
                    CLibvirt_VIR_DOMAIN_EVENT_CALLBACK(EventSink.lifecycleCallback), opaque,
                    { opaque in if let opaque { Unmanaged<EventSink>.fromOpaque(opaque).release() } })
            }
            if id < 0 {
                // libvirt does not call the free callback when registration fails.
                let error = LibvirtError.last("virConnectDomainEventRegisterAny")
                Unmanaged<EventSink>.fromOpaque(opaque).release()
                throw error
            }
            return id
        }
        let subscription = Subscription(connection: connection, callbackID: callbackID, continuation: continuation)
        continuation.onTermination = { _ in subscription.end() }
        if !connection.monitor.addStream(ObjectIdentifier(subscription), finish: { subscription.end() }) {
            subscription.end()
        }
        connection.logger.debug(
            "lifecycle events registered", metadata: ["callback": "\(callbackID)", "filter": "\(domain?.name ?? "all")"])
        return DomainLifecycleEvents(stream: stream, token: Token(subscription: subscription))
    }

    /// Held by the sequence and its iterators: when the last of them goes, the subscription ends.
    final class Token: Sendable {
        let subscription: Subscription
        init(subscription: Subscription) { self.subscription = subscription }
        deinit { subscription.end() }
    }
}

/// The object libvirt's callback receives (retained by libvirt until the free callback).
final class EventSink: Sendable {
    let continuation: AsyncStream<DomainLifecycleEvent>.Continuation

    init(continuation: AsyncStream<DomainLifecycleEvent>.Continuation) {
        self.continuation = continuation
    }

    /// Runs on the libvirt event loop thread; must not block. Reads name and UUID from the domain
    /// handle (no RPC).
    static let lifecycleCallback: virConnectDomainEventCallback = { _, domain, type, detail, opaque in
        guard let opaque, let domain else { return 0 }
        let sink = Unmanaged<EventSink>.fromOpaque(opaque).takeUnretainedValue()
        sink.continuation.yield(
            DomainLifecycleEvent(
                domainName: LibvirtRuntime.name(of: domain), domainUUID: LibvirtRuntime.uuidString(of: domain),
                type: type, detail: detail))
        return 0
    }
}

/// One registered callback: ends the stream and deregisters exactly once.
final class Subscription: Sendable {
    let connection: LibvirtConnection
    let callbackID: Int32
    let continuation: AsyncStream<DomainLifecycleEvent>.Continuation
    private let ended = Atomic(false)

    init(connection: LibvirtConnection, callbackID: Int32, continuation: AsyncStream<DomainLifecycleEvent>.Continuation) {
        self.connection = connection
        self.callbackID = callbackID
        self.continuation = continuation
    }

    func end() {
        guard !ended.exchange(true, ordering: .acquiringAndReleasing) else { return }
        continuation.finish()
        connection.monitor.removeStream(ObjectIdentifier(self))
        let connection = self.connection
        let id = callbackID
        // Deregistering is an RPC: on the pool, not on the caller's (possibly event loop) thread.
        connection.threadPool.submit { _ in
            guard let p = try? connection.retainedPointer("virConnectDomainEventDeregisterAny") else { return }
            defer { virConnectClose(p) }
            if virConnectDomainEventDeregisterAny(p, id) < 0 {
                let error = LibvirtError.last("virConnectDomainEventDeregisterAny")
                connection.logger.debug("lifecycle events not deregistered", metadata: ["error": "\(error)"])
            } else {
                connection.logger.debug("lifecycle events deregistered", metadata: ["callback": "\(id)"])
            }
        }
    }
}
