// AMQP: consumers as AsyncSequences of deliveries, and acks that can never hit the wrong
// message after a reconnection.

import Synchronization

/// One message delivered to a consumer. Settle it exactly once with ``ack()``,
/// ``nack(requeue:)`` or ``reject(requeue:)``; until then it counts against the consumer's
/// prefetch.
///
/// Delivery tags are only meaningful on the channel that delivered the message. If that
/// channel or its connection is gone (the broker went away and the connection
/// reconnected), settling throws ``AMQPError/Kind/staleDelivery`` and sends nothing: the
/// broker has already put the message back in its queue, and it will be delivered again
/// (with ``redelivered`` set).
public struct AMQPDelivery: Sendable {
    /// The body bytes.
    public let body: [UInt8]
    /// The message properties (headers included).
    public let properties: AMQPProperties
    /// The exchange the message was published to (empty for the default exchange).
    public let exchange: String
    /// The routing key the message was published with (or dead-lettered with).
    public let routingKey: String
    /// The broker's tag for this delivery on its channel.
    public let deliveryTag: UInt64
    /// The broker delivered this message before (to this or another consumer) without it
    /// being acked.
    public let redelivered: Bool
    /// The tag of the consumer it was delivered to.
    public let consumerTag: String
    let settlement: DeliverySettlement

    /// The message headers (``AMQPProperties/headers``).
    public var headers: AMQPTable { properties.headers }

    /// The body as UTF-8 text.
    public var text: String { String(decoding: body, as: UTF8.self) }

    /// True once this delivery was acked, nacked or rejected (through any copy of it).
    public var isSettled: Bool { settlement.settled.load(ordering: .acquiring) }

    /// True once the channel that delivered this message is gone (the connection broke or
    /// reconnected): it can no longer be settled, and the broker has requeued the message for
    /// another consumer. A consumer that works on deliveries for a long time checks this to
    /// stop work that is now someone else's.
    public var isStale: Bool { !settlement.incarnation.isAlive }

    /// Acknowledges the message: the broker forgets it.
    ///
    /// Returns once the ack is handed to the connection thread (AMQP acks have no reply).
    /// Throws ``AMQPError/Kind/alreadySettled``, ``AMQPError/Kind/staleDelivery`` or
    /// ``AMQPError/Kind/closed``; in all three cases nothing is sent.
    public func ack() throws(AMQPError) { try settlement.settle(.ack, context: "basic.ack") }

    /// Negatively acknowledges the message: requeued (`requeue`, the default) or
    /// dead-lettered / dropped.
    public func nack(requeue: Bool = true) throws(AMQPError) {
        try settlement.settle(.nack(requeue: requeue), context: "basic.nack")
    }

    /// Rejects the message: requeued (`requeue`, the default) or dead-lettered / dropped.
    public func reject(requeue: Bool = true) throws(AMQPError) {
        try settlement.settle(.reject(requeue: requeue), context: "basic.reject")
    }
}

/// A consumer: the ``AMQPDelivery``s of one queue, as an `AsyncSequence`.
///
/// - Backpressure: the broker sends at most ``prefetch`` unsettled deliveries, so at most
///   that many wait in the sequence's buffer; settling deliveries makes room.
/// - Reconnection: the sequence survives reconnections; the consumer is re-subscribed
///   (same queue, tag and prefetch) on the new connection. Deliveries from before are stale
///   (see ``AMQPDelivery``).
/// - The sequence ends normally after ``cancel()`` or when the connection is closed, and
///   throws ``AMQPError/Kind/consumerCancelled`` when the broker cancels the consumer
///   (e.g. its queue was deleted) or the error that closed its channel.
/// - Ending the iteration by cancelling the iterating task (or dropping the iterator)
///   closes the consumer's channel, so the broker requeues its unsettled deliveries.
///
/// Iterate it from one task only.
public final class AMQPConsumer: AsyncSequence, Sendable {
    public typealias Element = AMQPDelivery
    public typealias AsyncIterator = AsyncThrowingStream<AMQPDelivery, any Error>.AsyncIterator

    /// The queue consumed from.
    public let queue: String
    /// The consumer tag (generated, unique per consumer).
    public let consumerTag: String
    let id: UInt64
    let core: ConnectionCore
    let stream: AsyncThrowingStream<AMQPDelivery, any Error>
    private let prefetchCount: Mutex<UInt16>

    init(queue: String, consumerTag: String, id: UInt64, prefetch: UInt16, core: ConnectionCore,
         stream: AsyncThrowingStream<AMQPDelivery, any Error>) {
        self.queue = queue
        self.consumerTag = consumerTag
        self.id = id
        self.core = core
        self.stream = stream
        self.prefetchCount = Mutex(prefetch)
    }

    /// The current prefetch: how many deliveries may be unsettled at a time.
    public var prefetch: UInt16 { prefetchCount.withLock { $0 } }

    /// Changes the prefetch; effective immediately (lowering it below the number of
    /// unsettled deliveries stops deliveries until enough are settled). While the
    /// connection is reconnecting, the new value is recorded and applied on resubscription.
    /// `count` must be at least 1 (in AMQP 0 means unlimited; cancel the consumer to stop it).
    public func setPrefetch(_ count: UInt16) async throws(AMQPError) {
        guard count > 0 else {
            throw AMQPError(.invalidArgument, "basic.qos", replyText: "prefetch must be at least 1 (0 would mean unlimited)")
        }
        let id = self.id
        try await core.perform("basic.qos \(count) for consumer \(consumerTag)", requiresConnection: false) { loop throws(AMQPError) in
            try loop.setPrefetch(consumer: id, count)
        }
        prefetchCount.withLock { $0 = count }
    }

    /// Stops the consumer (basic.cancel). Deliveries already received are still yielded and
    /// can still be settled; then the sequence ends.
    public func cancel() async throws(AMQPError) {
        let id = self.id
        do {
            try await core.perform("basic.cancel \(consumerTag)", requiresConnection: false) { loop throws(AMQPError) in
                try loop.cancelConsumer(id)
            }
        } catch where error.kind == .closed {
            // The connection is closed: so is the consumer.
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { stream.makeAsyncIterator() }
}

/// One opening of a channel on one connection. Deliveries remember the incarnation they
/// came from; once it is dead, their tags mean nothing (or something else) to the broker.
final class ChannelIncarnation: Sendable {
    let channel: UInt16
    let alive = Atomic<Bool>(true)

    init(channel: UInt16) { self.channel = channel }

    func kill() { alive.store(false, ordering: .releasing) }
    var isAlive: Bool { alive.load(ordering: .acquiring) }
}

/// How a delivery is settled.
enum SettleKind: Sendable {
    case ack
    case nack(requeue: Bool)
    case reject(requeue: Bool)
}

/// The settle-once part of a delivery, shared by its copies.
final class DeliverySettlement: Sendable {
    let core: ConnectionCore
    let incarnation: ChannelIncarnation
    let deliveryTag: UInt64
    let settled = Atomic<Bool>(false)

    init(core: ConnectionCore, incarnation: ChannelIncarnation, deliveryTag: UInt64) {
        self.core = core
        self.incarnation = incarnation
        self.deliveryTag = deliveryTag
    }

    func settle(_ kind: SettleKind, context: String) throws(AMQPError) {
        let context = "\(context) delivery \(deliveryTag) on channel \(incarnation.channel)"
        guard settled.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            throw AMQPError(.alreadySettled, context)
        }
        guard incarnation.isAlive else {
            throw AMQPError(.staleDelivery, context, replyText: "the channel that delivered it is gone; the broker requeued the message")
        }
        guard core.submit(.settle(self, kind)) else { throw AMQPError(.closed, context) }
    }
}
