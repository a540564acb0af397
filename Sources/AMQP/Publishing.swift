// AMQP: publisher confirms as values callers can await — one per message, and for a batch —
// and the in-flight limit that gives publishers backpressure.

import Synchronization

/// The broker's answer to one published message, to await with ``wait()``.
///
/// It settles exactly once:
/// - confirmed (basic.ack): ``wait()`` returns;
/// - ``AMQPError/Kind/nacked`` (basic.nack) or ``AMQPError/Kind/unroutable`` (a `mandatory`
///   message that was returned): the broker has answered and does not hold the message;
/// - ``AMQPError/Kind/unconfirmed``: the message was written to a channel or connection
///   that died before the confirm came; the broker may or may not hold it (republish for
///   at-least-once delivery);
/// - ``AMQPError/Kind/closed``: the connection was closed before the message was sent.
public struct PublishConfirmation: Sendable {
    let state: PublishState

    /// Waits until the broker confirmed the message; throws how it failed otherwise.
    /// Cancelling the waiting task throws ``AMQPError/Kind/cancelled`` without affecting
    /// the message.
    public func wait() async throws(AMQPError) {
        try await result().get()
    }

    /// Waits for the outcome, as a `Result`.
    public func result() async -> Result<Void, AMQPError> {
        if let settled = state.settled { return settled }
        let id = state.makeWaiterID()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in state.addWaiter(id, continuation) }
        } onCancel: {
            state.cancelWaiter(id)
        }
    }

    /// The outcome if it is known already.
    public var settled: Result<Void, AMQPError>? { state.settled }
}

/// The outcomes of a batch of publishes, in the order of the confirmations.
public struct PublishBatchOutcome: Sendable {
    /// One outcome per confirmation, in order.
    public let results: [Result<Void, AMQPError>]

    /// How many were confirmed.
    public var confirmedCount: Int { results.count(where: { if case .success = $0 { true } else { false } }) }

    /// The failed ones, with their position in the batch.
    public var failures: [(index: Int, error: AMQPError)] {
        results.enumerated().compactMap { index, result in
            if case .failure(let error) = result { (index, error) } else { nil }
        }
    }

    /// Throws the first failure, if any.
    public func get() throws(AMQPError) {
        for result in results { try result.get() }
    }
}

extension Sequence where Element == PublishConfirmation {
    /// Waits for every confirmation (they are pipelined: the broker confirms them
    /// concurrently) and returns all outcomes.
    public func waitForAll() async -> PublishBatchOutcome {
        var results: [Result<Void, AMQPError>] = []
        for confirmation in self { results.append(await confirmation.result()) }
        return PublishBatchOutcome(results: results)
    }
}

/// The settle-once state behind a ``PublishConfirmation``.
final class PublishState: Sendable {
    private struct Inner {
        var result: Result<Void, AMQPError>?
        var waiters: [UInt64: CheckedContinuation<Result<Void, AMQPError>, Never>] = [:]
        var cancelled: Set<UInt64> = []
        var nextWaiter: UInt64 = 0
    }

    private let inner = Mutex(Inner())

    var settled: Result<Void, AMQPError>? { inner.withLock { $0.result } }

    func makeWaiterID() -> UInt64 {
        inner.withLock { inner in
            inner.nextWaiter += 1
            return inner.nextWaiter
        }
    }

    func addWaiter(_ id: UInt64, _ continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) {
        let immediate: Result<Void, AMQPError>? = inner.withLock { inner in
            if let result = inner.result { return result }
            if inner.cancelled.remove(id) != nil { return .failure(AMQPError(.cancelled, "waiting for a publisher confirm")) }
            inner.waiters[id] = continuation
            return nil
        }
        if let immediate { continuation.resume(returning: immediate) }
    }

    func cancelWaiter(_ id: UInt64) {
        let waiter = inner.withLock { inner in
            guard inner.result == nil else { return nil as CheckedContinuation<Result<Void, AMQPError>, Never>? }
            guard let waiter = inner.waiters.removeValue(forKey: id) else {
                inner.cancelled.insert(id)
                return nil
            }
            return waiter
        }
        waiter?.resume(returning: .failure(AMQPError(.cancelled, "waiting for a publisher confirm")))
    }

    /// Settles the state; returns false if it was settled already.
    @discardableResult
    func complete(_ result: Result<Void, AMQPError>) -> Bool {
        let waiters = inner.withLock { inner -> [CheckedContinuation<Result<Void, AMQPError>, Never>]? in
            guard inner.result == nil else { return nil }
            inner.result = result
            defer { inner.waiters.removeAll() }
            return Array(inner.waiters.values)
        }
        guard let waiters else { return false }
        for waiter in waiters { waiter.resume(returning: result) }
        return true
    }
}

/// A publish on its way from a caller to the connection thread; immutable.
final class PendingPublish: Sendable {
    let message: AMQPMessage
    let exchange: String
    let routingKey: String
    let mandatory: Bool
    let state = PublishState()

    init(message: AMQPMessage, exchange: String, routingKey: String, mandatory: Bool) {
        self.message = message
        self.exchange = exchange
        self.routingKey = routingKey
        self.mandatory = mandatory
    }

    var context: String { "basic.publish to exchange '\(exchange)' with routing key '\(routingKey)'" }
}

/// Counts publishes that are not settled yet and suspends publishers at the limit
/// (FIFO), so a fast producer cannot queue unbounded memory behind a slow or absent broker.
final class PublishLimiter: Sendable {
    private struct Inner {
        var available: Int
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Result<Void, AMQPError>, Never>)] = []
        var cancelled: Set<UInt64> = []
        var nextWaiter: UInt64 = 0
        var closed: AMQPError?
    }

    let capacity: Int
    private let inner: Mutex<Inner>

    init(capacity: Int) {
        self.capacity = capacity
        inner = Mutex(Inner(available: capacity))
    }

    /// Publishes taken and not yet released.
    var inFlight: Int { inner.withLock { capacity - $0.available } }

    /// Takes one slot, waiting for one if none is free.
    func acquire() async throws(AMQPError) {
        let fast: Result<Void, AMQPError>? = inner.withLock { inner in
            if let closed = inner.closed { return .failure(closed) }
            if inner.available > 0 && inner.waiters.isEmpty {
                inner.available -= 1
                return .success(())
            }
            return nil
        }
        if let fast { return try fast.get() }
        let id = inner.withLock { inner in
            inner.nextWaiter += 1
            return inner.nextWaiter
        }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) in
                let immediate: Result<Void, AMQPError>? = inner.withLock { inner in
                    if let closed = inner.closed { return .failure(closed) }
                    if inner.cancelled.remove(id) != nil { return .failure(AMQPError(.cancelled, "waiting to publish")) }
                    if inner.available > 0 && inner.waiters.isEmpty {
                        inner.available -= 1
                        return .success(())
                    }
                    inner.waiters.append((id, continuation))
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = inner.withLock { inner in
                guard let index = inner.waiters.firstIndex(where: { $0.id == id }) else {
                    inner.cancelled.insert(id)
                    return nil as CheckedContinuation<Result<Void, AMQPError>, Never>?
                }
                return inner.waiters.remove(at: index).continuation
            }
            waiter?.resume(returning: .failure(AMQPError(.cancelled, "waiting to publish")))
        }
        try result.get()
    }

    /// Gives back one slot (to the longest waiting publisher, if any).
    func release() {
        let waiter = inner.withLock { inner in
            if inner.waiters.isEmpty {
                inner.available += 1
                return nil as CheckedContinuation<Result<Void, AMQPError>, Never>?
            }
            return inner.waiters.removeFirst().continuation
        }
        waiter?.resume(returning: .success(()))
    }

    /// Fails every waiting and future ``acquire()`` with `error`.
    func close(_ error: AMQPError) {
        let waiters = inner.withLock { inner in
            inner.closed = inner.closed ?? error
            defer { inner.waiters.removeAll() }
            return inner.waiters.map(\.continuation)
        }
        for waiter in waiters { waiter.resume(returning: .failure(error)) }
    }
}
