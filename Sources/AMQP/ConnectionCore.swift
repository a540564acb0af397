// AMQP: what callers and the connection thread share — the command queue (with the wake-up
// pipe that interrupts the thread's poll), the published state, counters, observers — and
// the thread itself.

import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Work for the connection thread.
enum Command: Sendable {
    case publish(PendingPublish)
    case operation(ThreadOperation)
    case settle(DeliverySettlement, SettleKind)
    case close
}

/// A closure to run on the connection thread (with its non-Sendable state), and what to do
/// if the thread is gone before it could run.
struct ThreadOperation: Sendable {
    let run: @Sendable (ConnectionLoop) -> Void
    let fail: @Sendable (AMQPError) -> Void
}

/// The state of a connection.
public enum AMQPConnectionState: Sendable, Hashable, CustomStringConvertible {
    /// Establishing the first connection.
    case connecting
    /// Connected; topology declared and consumers subscribed.
    case connected
    /// The connection was lost; waiting before (or during) reconnection attempt `attempt`.
    case reconnecting(attempt: Int, lastError: AMQPError)
    /// Closed by the application (`nil`) or after giving up reconnecting (the last error).
    /// Final.
    case closed(AMQPError?)

    public var description: String {
        switch self {
        case .connecting: "connecting"
        case .connected: "connected"
        case .reconnecting(let attempt, let error): "reconnecting (attempt \(attempt), after \(error))"
        case .closed(let error): error.map { "closed (\($0))" } ?? "closed"
        }
    }

    /// True in the `.connected` state.
    public var isConnected: Bool { self == .connected }
}

/// Counters of one connection, for metrics.
public struct AMQPStatistics: Sendable, Hashable {
    /// Successful reconnections (not counting the first connection).
    public var reconnects: Int
    /// Messages written to the broker (a message resent after a reconnection counts again
    /// only if the application republished it).
    public var published: UInt64
    /// Publishes the broker confirmed.
    public var confirmed: UInt64
    /// Publishes the broker nacked.
    public var nacked: UInt64
    /// Mandatory publishes the broker returned as unroutable.
    public var returned: UInt64
    /// Publishes that failed with ``AMQPError/Kind/unconfirmed``.
    public var unconfirmed: UInt64
    /// Publishes accepted and not settled yet (queued or awaiting a confirm).
    public var inFlightPublishes: Int
    /// Deliveries received by consumers.
    public var delivered: UInt64
    /// Deliveries acked by the application.
    public var acked: UInt64
    /// Deliveries nacked or rejected.
    public var rejected: UInt64
    /// Settlements refused because their delivery's channel was gone.
    public var staleSettlements: UInt64
    /// The broker has blocked this connection (resource alarm; connection.blocked).
    public var blocked: Bool
    /// The heartbeat interval agreed with the broker, in seconds (0: none).
    public var heartbeatSeconds: Int
}

/// Counters updated by the thread, read by anyone.
final class Counters: Sendable {
    let reconnects = Atomic<Int>(0)
    let published = Atomic<UInt64>(0)
    let confirmed = Atomic<UInt64>(0)
    let nacked = Atomic<UInt64>(0)
    let returned = Atomic<UInt64>(0)
    let unconfirmed = Atomic<UInt64>(0)
    let delivered = Atomic<UInt64>(0)
    let acked = Atomic<UInt64>(0)
    let rejected = Atomic<UInt64>(0)
    let staleSettlements = Atomic<UInt64>(0)
    let blocked = Atomic<Bool>(false)
    let heartbeat = Atomic<Int>(0)
}

/// A pipe whose read end sits in the connection thread's poll set; writing a byte wakes
/// the thread up. Only immutable file descriptors.
final class WakeupPipe: Sendable {
    let readFD: Int32
    let writeFD: Int32

    init() throws(AMQPError) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            throw AMQPError(.library, "pipe() for the connection thread", replyText: "errno \(errno)")
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readFD = fds[0]
        writeFD = fds[1]
    }

    func signal() {
        var byte: UInt8 = 1
        _ = write(writeFD, &byte, 1)
    }

    func drain() {
        var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &buffer, { read(readFD, $0.baseAddress, $0.count) }) > 0 {}
    }

    deinit {
        close(readFD)
        close(writeFD)
    }
}

/// The part of a connection shared between callers (any task or thread) and its thread.
final class ConnectionCore: Sendable {
    let configuration: AMQPConfiguration
    let logger: Logger
    let wakeup: WakeupPipe
    let limiter: PublishLimiter
    let counters = Counters()
    private let nextID = Atomic<UInt64>(0)
    private let shared = Mutex(Shared())

    private struct Shared {
        var commands: [Command] = []
        /// The thread is (about to be) blocked in poll and needs a wake-up byte.
        var sleeping = false
        /// False once the thread has exited: commands are refused.
        var accepting = true
        var state: AMQPConnectionState = .connecting
        var observers: [UInt64: AsyncStream<AMQPConnectionState>.Continuation] = [:]
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
    }

    init(configuration: AMQPConfiguration, logger: Logger) throws(AMQPError) {
        self.configuration = configuration
        self.logger = logger
        self.wakeup = try WakeupPipe()
        self.limiter = PublishLimiter(capacity: configuration.maxInFlightPublishes)
    }

    /// A number unique within this connection (consumer ids, tags).
    func makeID() -> UInt64 { nextID.wrappingAdd(1, ordering: .relaxed).newValue }

    // MARK: Callers

    /// Queues a command for the thread; false (and nothing queued) once the thread exited.
    func submit(_ command: Command) -> Bool {
        let wake: Bool? = shared.withLock { shared in
            guard shared.accepting else { return nil }
            shared.commands.append(command)
            if shared.sleeping {
                shared.sleeping = false
                return true
            }
            return false
        }
        guard let wake else { return false }
        if wake { wakeup.signal() }
        return true
    }

    /// Runs `body` on the connection thread and returns its result. With
    /// `requiresConnection`, fails fast (``AMQPError/Kind/notConnected`` while the connection
    /// is down, ``AMQPError/Kind/blocked`` while the broker blocks it) instead of waiting.
    func perform<T: Sendable>(
        _ context: String, requiresConnection: Bool = true,
        _ body: @escaping @Sendable (ConnectionLoop) throws(AMQPError) -> T
    ) async throws(AMQPError) -> T {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, AMQPError>, Never>) in
            let operation = ThreadOperation(
                run: { loop in
                    if requiresConnection, let error = loop.unavailable(context) {
                        continuation.resume(returning: .failure(error))
                        return
                    }
                    do throws(AMQPError) {
                        continuation.resume(returning: .success(try body(loop)))
                    } catch {
                        continuation.resume(returning: .failure(error))
                    }
                },
                fail: { error in continuation.resume(returning: .failure(error)) })
            if !submit(.operation(operation)) {
                continuation.resume(returning: .failure(AMQPError(.closed, context)))
            }
        }
        return try result.get()
    }

    var state: AMQPConnectionState { shared.withLock { $0.state } }

    func observeState() -> AsyncStream<AMQPConnectionState> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: AMQPConnectionState.self, bufferingPolicy: .bufferingNewest(64))
        let id = makeID()
        let final: Bool = shared.withLock { shared in
            continuation.yield(shared.state)
            guard shared.accepting else { return true }
            shared.observers[id] = continuation
            return false
        }
        if final {
            continuation.finish()
        } else {
            continuation.onTermination = { [weak self] _ in
                _ = self?.shared.withLock { $0.observers.removeValue(forKey: id) }
            }
        }
        return stream
    }

    /// Waits until the thread has exited.
    func waitForExit() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let exited = shared.withLock { shared in
                if shared.accepting { shared.exitWaiters.append(continuation) }
                return !shared.accepting
            }
            if exited { continuation.resume() }
        }
    }

    var statistics: AMQPStatistics {
        AMQPStatistics(
            reconnects: counters.reconnects.load(ordering: .relaxed),
            published: counters.published.load(ordering: .relaxed),
            confirmed: counters.confirmed.load(ordering: .relaxed),
            nacked: counters.nacked.load(ordering: .relaxed),
            returned: counters.returned.load(ordering: .relaxed),
            unconfirmed: counters.unconfirmed.load(ordering: .relaxed),
            inFlightPublishes: limiter.inFlight,
            delivered: counters.delivered.load(ordering: .relaxed),
            acked: counters.acked.load(ordering: .relaxed),
            rejected: counters.rejected.load(ordering: .relaxed),
            staleSettlements: counters.staleSettlements.load(ordering: .relaxed),
            blocked: counters.blocked.load(ordering: .relaxed),
            heartbeatSeconds: counters.heartbeat.load(ordering: .relaxed))
    }

    // MARK: The thread

    /// Moves the queued commands into `buffer` (which must be empty).
    func takeCommands(_ buffer: inout [Command]) {
        shared.withLock { shared in swap(&buffer, &shared.commands) }
    }

    /// Marks the thread as about to sleep; false if commands are waiting (do not sleep).
    func prepareToSleep() -> Bool {
        shared.withLock { shared in
            guard shared.commands.isEmpty else { return false }
            shared.sleeping = true
            return true
        }
    }

    func didWake() {
        shared.withLock { $0.sleeping = false }
        wakeup.drain()
    }

    func setState(_ state: AMQPConnectionState) {
        shared.withLock { shared in
            guard shared.state != state else { return }
            shared.state = state
            for observer in shared.observers.values { observer.yield(state) }
        }
        logger.debug("AMQP connection state: \(state)")
    }

    /// The thread is exiting: refuse further commands, publish the final state, and return
    /// the commands that were still queued (the caller fails them).
    func exit(finalState: AMQPConnectionState) -> [Command] {
        let (commands, observers, waiters) = shared.withLock { shared in
            shared.accepting = false
            shared.state = finalState
            defer {
                shared.commands = []
                shared.observers = [:]
                shared.exitWaiters = []
            }
            return (shared.commands, Array(shared.observers.values), shared.exitWaiters)
        }
        for observer in observers {
            observer.yield(finalState)
            observer.finish()
        }
        for waiter in waiters { waiter.resume() }
        return commands
    }
}

/// Starts a detached POSIX thread running `body` (a connection thread must not be a
/// Swift concurrency thread: it blocks in rabbitmq-c and poll).
func startThread(name: String, _ body: @escaping @Sendable () -> Void) throws(AMQPError) {
    final class Box: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
    let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
    var thread = pthread_t()
    let status = pthread_create(&thread, nil, { argument in
        let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
        setCurrentThreadName(box.name)
        box.body()
        return nil
    }, box)
    guard status == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        throw AMQPError(.library, "pthread_create", replyText: "error \(status)")
    }
    pthread_detach(thread)
}

/// Names the calling thread (shown by `top -H`, `ps -L`, debuggers); Linux only, best effort.
private func setCurrentThreadName(_ name: String) {
    #if os(Linux)
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    #endif
}
