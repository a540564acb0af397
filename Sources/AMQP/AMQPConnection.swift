// AMQP: the public connection type.

import Logging

/// A connection to a RabbitMQ broker, with its own thread.
///
/// ## Threads
/// rabbitmq-c connections are not thread-safe and every call into them blocks, so each
/// `AMQPConnection` owns one POSIX thread that alone touches the rabbitmq-c state. Callers
/// (any task) hand it commands through a queue and await the results; nothing blocks the
/// Swift concurrency pool. The thread sleeps in `poll` on the socket and a wake-up pipe, for
/// at most half the heartbeat interval, so heartbeats go out and a silent broker is noticed
/// even when the application is idle.
///
/// ## Channels
/// Channel 1 carries synchronous operations (declare, bind, purge, ...), channel 2 carries
/// publishes in confirm mode, and each consumer gets a channel of its own (its prefetch is
/// that channel's). A failed operation closes only its channel, which is reopened for the
/// next one, so a 406 on a declaration does not disturb publishes or consumers.
///
/// One connection can publish and consume. Use separate connections for publishing and
/// consuming anyway when both are busy: each connection is one thread, and RabbitMQ's flow
/// control blocks a whole connection that publishes too fast, which would also delay acks.
///
/// ## Reconnection
/// When the broker goes away (socket error, missed heartbeats, connection.close) the
/// connection reconnects with backoff (``AMQPReconnectPolicy``), re-declares the topology
/// it knows (the one given to ``connect(_:topology:logger:)`` plus what was declared
/// through it since), re-subscribes its consumers with their prefetch, and then sends the
/// publishes that were queued meanwhile. While it is down:
/// - publishes written to the old connection whose confirm never came fail with
///   ``AMQPError/Kind/unconfirmed`` (republish them for at-least-once delivery);
/// - new publishes are accepted and queued up to `maxInFlightPublishes` (then
///   ``publish(_:exchange:routingKey:mandatory:)`` suspends);
/// - synchronous operations fail fast with ``AMQPError/Kind/notConnected``;
/// - deliveries received on the old connection can no longer be settled
///   (``AMQPError/Kind/staleDelivery``); the broker redelivers them.
///
/// ## Flow control
/// When the broker blocks the connection (connection.blocked, a memory or disk alarm) it
/// reads nothing more from it until the alarm clears: publishes wait in the queue and
/// synchronous operations fail fast with ``AMQPError/Kind/blocked``.
///
/// ``state``, ``stateChanges()`` and ``statistics`` expose what happens, for metrics.
///
/// Keep a reference to the connection while using it (or its consumers): when the last
/// reference goes, the connection closes.
public final class AMQPConnection: Sendable {
    let core: ConnectionCore

    private init(core: ConnectionCore) {
        self.core = core
    }

    /// Connects to the broker, declares `topology`, and returns the connection.
    ///
    /// Fails (without retrying) if the first connection cannot be established or the
    /// topology cannot be declared: ``AMQPError/Kind/invalidArgument`` for a bad
    /// configuration, ``AMQPError/Kind/connectionFailed`` or
    /// ``AMQPError/Kind/authenticationFailed`` for the broker, the broker's channel error
    /// for the topology. Reconnection applies once connected.
    public static func connect(
        _ configuration: AMQPConfiguration, topology: AMQPTopology = AMQPTopology(),
        logger: Logger = Logger(label: "talus.amqp")
    ) async throws(AMQPError) -> AMQPConnection {
        try configuration.validate()
        try validate(topology)
        var logger = logger
        logger[metadataKey: "amqp.connection"] = "\(configuration.connectionName ?? configuration.endpoint.description)"
        let core = try ConnectionCore(configuration: configuration, logger: logger)
        let started = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, AMQPError>, Never>) in
            do throws(AMQPError) {
                try startThread(name: "amqp-" + (configuration.connectionName ?? "connection")) {
                    ConnectionLoop(core: core, topology: topology).run { error in
                        continuation.resume(returning: error.map { .failure($0) } ?? .success(()))
                    }
                }
            } catch {
                continuation.resume(returning: .failure(error))
            }
        }
        try started.get()
        return AMQPConnection(core: core)
    }

    deinit {
        _ = core.submit(.close)
    }

    /// Closes the connection: stops accepting publishes, waits up to `closeTimeout` for the
    /// outstanding confirms, ends the consumers' sequences, closes the AMQP connection and
    /// stops the thread. Publishes still unconfirmed then fail with
    /// ``AMQPError/Kind/unconfirmed``, unsent ones with ``AMQPError/Kind/closed``.
    public func close() async {
        _ = core.submit(.close)
        await core.waitForExit()
    }

    // MARK: State and metrics

    /// The current state.
    public var state: AMQPConnectionState { core.state }

    /// The current state, then every change, until the connection is closed.
    public func stateChanges() -> AsyncStream<AMQPConnectionState> { core.observeState() }

    /// How many times the connection was re-established.
    public var reconnectCount: Int { statistics.reconnects }

    /// Counters for metrics.
    public var statistics: AMQPStatistics { core.statistics }

    // MARK: Topology

    /// Declares an exchange (and remembers it for re-declaration after reconnecting).
    public func declareExchange(_ exchange: AMQPExchange) async throws(AMQPError) {
        try Self.shortString(exchange.name, "exchange name")
        try await core.perform("exchange.declare '\(exchange.name)'") { loop throws(AMQPError) in try loop.declare(exchange) }
    }

    /// Declares a queue (and remembers it for re-declaration after reconnecting). Declaring
    /// an existing queue with different properties or arguments fails with 406
    /// PRECONDITION_FAILED (``AMQPError/isPreconditionFailed``); the connection stays usable.
    @discardableResult
    public func declareQueue(_ queue: AMQPQueue) async throws(AMQPError) -> AMQPQueueState {
        try Self.shortString(queue.name, "queue name")
        return try await core.perform("queue.declare '\(queue.name)'") { loop throws(AMQPError) in try loop.declare(queue) }
    }

    /// The message and consumer counts of an existing queue (a passive declaration). A
    /// missing queue fails with 404 NOT_FOUND (``AMQPError/isNotFound``).
    public func inspectQueue(_ name: String) async throws(AMQPError) -> AMQPQueueState {
        try Self.shortString(name, "queue name")
        return try await core.perform("queue.declare (passive) '\(name)'") { loop throws(AMQPError) in
            try loop.inspectQueue(name)
        }
    }

    /// Binds a queue to an exchange (and remembers the binding).
    public func bind(_ binding: AMQPBinding) async throws(AMQPError) {
        try Self.validate(binding)
        try await core.perform("queue.bind '\(binding.queue)'") { loop throws(AMQPError) in try loop.bind(binding) }
    }

    /// Removes a binding (and forgets it).
    public func unbind(_ binding: AMQPBinding) async throws(AMQPError) {
        try Self.validate(binding)
        try await core.perform("queue.unbind '\(binding.queue)'") { loop throws(AMQPError) in try loop.unbind(binding) }
    }

    /// Removes all ready messages from a queue; returns how many.
    @discardableResult
    public func purgeQueue(_ name: String) async throws(AMQPError) -> UInt32 {
        try Self.shortString(name, "queue name")
        return try await core.perform("queue.purge '\(name)'") { loop throws(AMQPError) in try loop.purgeQueue(name) }
    }

    /// Deletes a queue (and forgets it and its bindings); returns how many messages it held.
    @discardableResult
    public func deleteQueue(_ name: String, ifUnused: Bool = false, ifEmpty: Bool = false) async throws(AMQPError) -> UInt32 {
        try Self.shortString(name, "queue name")
        return try await core.perform("queue.delete '\(name)'") { loop throws(AMQPError) in
            try loop.deleteQueue(name, ifUnused: ifUnused, ifEmpty: ifEmpty)
        }
    }

    /// Deletes an exchange (and forgets it and its bindings).
    public func deleteExchange(_ name: String, ifUnused: Bool = false) async throws(AMQPError) {
        try Self.shortString(name, "exchange name")
        try await core.perform("exchange.delete '\(name)'") { loop throws(AMQPError) in
            try loop.deleteExchange(name, ifUnused: ifUnused)
        }
    }

    /// Declares every exchange, queue and binding of `topology`, in that order.
    public func declare(_ topology: AMQPTopology) async throws(AMQPError) {
        for exchange in topology.exchanges { try await declareExchange(exchange) }
        for queue in topology.queues { try await declareQueue(queue) }
        for binding in topology.bindings { try await bind(binding) }
    }

    /// The topology the connection re-declares after reconnecting.
    public var topology: AMQPTopology {
        get async throws(AMQPError) {
            try await core.perform("topology", requiresConnection: false) { loop in loop.topology }
        }
    }

    // MARK: Publishing

    /// Publishes a message with publisher confirms and returns at once (pipelining: many
    /// publishes can be in flight); await the returned ``PublishConfirmation`` (or a batch
    /// with ``Swift/Sequence/waitForAll()``) to learn the broker's answer.
    ///
    /// Suspends while `maxInFlightPublishes` publishes are unsettled (backpressure). Messages
    /// from one task are written in the order of the calls. Accepted while reconnecting (sent
    /// once connected). Throws ``AMQPError/Kind/closed`` after ``close()``,
    /// ``AMQPError/Kind/cancelled`` if the task is cancelled while waiting for room, and
    /// ``AMQPError/Kind/invalidArgument`` for names longer than 255 bytes.
    ///
    /// - Parameters:
    ///   - mandatory: the broker returns the message if no queue takes it; its confirmation
    ///     then fails with ``AMQPError/Kind/unroutable``. Returns are matched to publishes by
    ///     message id; one is generated when the message has none.
    @discardableResult
    public func publish(
        _ message: AMQPMessage, exchange: String, routingKey: String, mandatory: Bool = false
    ) async throws(AMQPError) -> PublishConfirmation {
        try Self.shortString(exchange, "exchange name")
        try Self.shortString(routingKey, "routing key")
        try await core.limiter.acquire()
        let request = PendingPublish(message: message, exchange: exchange, routingKey: routingKey, mandatory: mandatory)
        guard core.submit(.publish(request)) else {
            core.limiter.release()
            throw AMQPError(.closed, request.context)
        }
        return PublishConfirmation(state: request.state)
    }

    // MARK: Consuming

    /// Starts consuming from `queue` with manual acknowledgements.
    ///
    /// - Parameters:
    ///   - prefetch: how many deliveries may be unsettled at a time (at least 1); change it
    ///     later with ``AMQPConsumer/setPrefetch(_:)``.
    ///   - exclusive: no other consumer may consume from the queue meanwhile.
    ///   - arguments: basic.consume arguments (e.g. `x-priority`).
    public func consume(
        queue: String, prefetch: UInt16, exclusive: Bool = false, arguments: AMQPTable = [:]
    ) async throws(AMQPError) -> AMQPConsumer {
        try Self.shortString(queue, "queue name")
        guard prefetch > 0 else {
            throw AMQPError(.invalidArgument, "basic.consume on '\(queue)'", replyText: "prefetch must be at least 1 (0 would mean unlimited)")
        }
        let id = core.makeID()
        let tag = "talus.\(String(UInt32.random(in: 0...UInt32.max), radix: 36)).\(id)"
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: AMQPDelivery.self, throwing: (any Error).self)
        try await core.perform("basic.consume on '\(queue)'") { loop throws(AMQPError) in
            try loop.addConsumer(ConsumerRecord(
                id: id, queue: queue, tag: tag, exclusive: exclusive, arguments: arguments, prefetch: prefetch,
                continuation: continuation))
        }
        let core = self.core
        continuation.onTermination = { termination in
            if case .cancelled = termination {
                _ = core.submit(.operation(ThreadOperation(run: { $0.dropConsumer(id) }, fail: { _ in })))
            }
        }
        return AMQPConsumer(queue: queue, consumerTag: tag, id: id, prefetch: prefetch, core: core, stream: stream)
    }

    // MARK: Validation

    static func shortString(_ value: String, _ what: String) throws(AMQPError) {
        guard value.utf8.count <= 255 else {
            throw AMQPError(.invalidArgument, what, replyText: "longer than 255 bytes (\(value.utf8.count))")
        }
    }

    static func validate(_ binding: AMQPBinding) throws(AMQPError) {
        try shortString(binding.queue, "queue name")
        try shortString(binding.exchange, "exchange name")
        try shortString(binding.routingKey, "routing key")
    }

    static func validate(_ topology: AMQPTopology) throws(AMQPError) {
        for exchange in topology.exchanges { try shortString(exchange.name, "exchange name") }
        for queue in topology.queues { try shortString(queue.name, "queue name") }
        for binding in topology.bindings { try validate(binding) }
    }
}

@_spi(Testing)
extension AMQPConnection {
    /// Shuts the TCP socket down under the connection, as a network failure would; the
    /// connection notices and reconnects. For tests of the reconnection paths.
    public func breakConnectionForTesting() async {
        _ = try? await core.perform("break connection", requiresConnection: false) { loop in loop.breakSocketForTesting() }
    }
}
