// AMQP: the connection thread. It alone touches the rabbitmq-c connection state: it runs the
// commands callers queue (publish, settle, synchronous operations), reads every frame
// (confirms, returns, deliveries, closes, heartbeats), sleeps in poll on the socket and a
// wake-up pipe for at most half a heartbeat interval, and reconnects with backoff.

import CRabbitMQ
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A consumer as the connection thread sees it.
final class ConsumerRecord {
    let id: UInt64
    let queue: String
    let tag: String
    let exclusive: Bool
    let arguments: AMQPTable
    let continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation
    var prefetch: UInt16
    /// The channel it is subscribed on, while it is.
    var channel: amqp_channel_t?
    var incarnation: ChannelIncarnation?

    init(id: UInt64, queue: String, tag: String, exclusive: Bool, arguments: AMQPTable, prefetch: UInt16,
         continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation) {
        self.id = id
        self.queue = queue
        self.tag = tag
        self.exclusive = exclusive
        self.arguments = arguments
        self.prefetch = prefetch
        self.continuation = continuation
    }

    var context: String { "consumer \(tag) on queue '\(queue)'" }
}

/// A message with content frames still to come (a delivery or a returned message).
final class PartialContent {
    enum Kind {
        case delivery(deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String)
        case returned(replyCode: UInt16, replyText: String, exchange: String, routingKey: String)
    }

    let kind: Kind
    var properties = AMQPProperties(deliveryMode: nil)
    var expectedSize = 0
    var body: [UInt8] = []
    var headerSeen = false

    init(_ kind: Kind) { self.kind = kind }
}

/// Which deliveries of one channel are settled. The broker numbers a channel's deliveries
/// 1, 2, 3, ...; every tag up to ``watermark`` is settled, ``above`` holds settled tags
/// beyond it.
struct SettledTags {
    var watermark: UInt64 = 0
    var above: Set<UInt64> = []

    /// Records `tag` as settled; true when it extended the watermark (so a `multiple` ack up
    /// to it covers only settled deliveries).
    mutating func settle(_ tag: UInt64) -> Bool {
        guard tag == watermark + 1 else {
            if tag > watermark { above.insert(tag) }
            return false
        }
        watermark = tag
        while above.remove(watermark + 1) != nil { watermark += 1 }
        return true
    }
}

/// A published message awaiting its confirm.
struct InFlight {
    let request: PendingPublish
    /// The message id sent (generated for mandatory messages without one), to match returns.
    let messageId: String?
    var returned: AMQPError?
}

/// The connection thread's state. Confined to that thread: created on it, used only by it
/// (callers reach it through ``ConnectionCore/submit(_:)``).
final class ConnectionLoop {
    static let controlChannel: amqp_channel_t = 1
    static let publishChannel: amqp_channel_t = 2
    static let firstConsumerChannel: amqp_channel_t = 3

    let core: ConnectionCore
    let configuration: AMQPConfiguration
    let logger: Logger
    private let arena = CArena()
    private let messageIdPrefix = "amqp-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    private(set) var topology: AMQPTopology

    private var connection: amqp_connection_state_t?
    /// Set when the connection broke during an operation; the main loop then reconnects.
    private var broken: AMQPError?
    private var lastError: AMQPError?
    /// The application asked to close (or reconnection gave up): stop after draining.
    private var closeRequested = false
    private var closeDeadline: ContinuousClock.Instant?
    /// Why the connection ended, when not closed by the application.
    private var finalError: AMQPError?
    private var generation = 0
    private var heartbeat = 0
    /// The broker sent connection.blocked (and not yet connection.unblocked).
    private var blocked = false

    private var controlOpen = false
    private var publishOpen = false
    private var channelMax = 2047
    private var nextChannel = ConnectionLoop.firstConsumerChannel
    private var freeChannels: [amqp_channel_t] = []
    private var liveIncarnations: [amqp_channel_t: ChannelIncarnation] = [:]

    /// Publishes accepted but not written yet (while reconnecting, or behind others).
    private var backlog: [PendingPublish] = []
    /// Written publishes awaiting confirms: `inFlight[i]` has sequence number `inFlightBase + i`.
    private var inFlight: [InFlight?] = []
    private var inFlightHead = 0
    private var inFlightBase: UInt64 = 1
    private var inFlightCount = 0

    /// Active consumers (re-subscribed after a reconnection), by id.
    private var consumers: [UInt64: ConsumerRecord] = [:]
    /// Consumers by the channel they are subscribed on (cancelled ones too, until the
    /// channel goes, so late deliveries can be given back).
    private var consumersByChannel: [amqp_channel_t: ConsumerRecord] = [:]
    private var partial: [amqp_channel_t: PartialContent] = [:]
    /// Settlement bookkeeping per consumer channel, for coalescing acks.
    private var settledTags: [amqp_channel_t: SettledTags] = [:]
    /// Acks handed over by the application and not sent yet (sent at the end of each batch
    /// of commands, coalesced into `multiple` acks where possible).
    private var pendingAcks: [amqp_channel_t: [UInt64]] = [:]

    init(core: ConnectionCore, topology: AMQPTopology) {
        self.core = core
        self.configuration = core.configuration
        self.logger = core.logger
        self.topology = topology
    }

    /// Connected and usable for synchronous operations.
    var isConnected: Bool { unavailable("") == nil }

    /// Why synchronous operations cannot run now, or `nil` when they can.
    func unavailable(_ context: String) -> AMQPError? {
        if closeRequested { return AMQPError(.closed, context) }
        if connection == nil || broken != nil { return AMQPError(.notConnected, context) }
        if blocked {
            return AMQPError(.blocked, context, replyText: "the broker blocked the connection (resource alarm)")
        }
        return nil
    }

    // MARK: - Lifecycle

    /// The thread's body: connects, reports the outcome through `started`, then serves until
    /// closed.
    func run(started: @Sendable (AMQPError?) -> Void) {
        do throws(AMQPError) {
            try connect()
        } catch {
            logger.debug("AMQP connection to \(configuration.endpoint) failed: \(error)")
            finalError = error
            finish()
            started(error)
            return
        }
        core.setState(.connected)
        started(nil)
        serve()
        finish()
    }

    private func serve() {
        var commands: [Command] = []
        while true {
            if connection == nil {
                guard !closeRequested, reconnect() else { return }
                continue
            }
            core.takeCommands(&commands)
            for command in commands { execute(command) }
            commands.removeAll(keepingCapacity: true)
            flushAcks()
            if broken == nil { flushBacklog() }
            if broken == nil { pump(limit: 1024) }
            if let error = broken {
                lose(error)
                continue
            }
            if closeRequested {
                let drained = inFlightCount == 0 && backlog.isEmpty
                if drained || ContinuousClock.now >= closeDeadline! { return }
            }
            sleepIfIdle()
        }
    }

    private func execute(_ command: Command) {
        if case .settle = command {} else { flushAcks() }
        switch command {
        case .publish(let request):
            // While the broker blocks the connection (resource alarm) publishes wait here:
            // writing them would block this thread in send() and stall everything else.
            if connection == nil || broken != nil || blocked || !backlog.isEmpty || !send(request) {
                backlog.append(request)
            }
        case .operation(let operation):
            operation.run(self)
        case .settle(let settlement, let kind):
            settle(settlement, kind)
        case .close:
            requestClose()
        }
    }

    private func requestClose() {
        guard !closeRequested else { return }
        logger.debug("AMQP connection closing")
        closeRequested = true
        closeDeadline = ContinuousClock.now.advanced(by: configuration.closeTimeout)
        core.limiter.close(AMQPError(.closed, "basic.publish", replyText: "the connection is closing"))
    }

    /// Ends the thread: fails whatever is still pending, closes the connection, publishes
    /// the final state.
    private func finish() {
        core.limiter.close(finalError ?? AMQPError(.closed, "basic.publish", replyText: "the connection is closed"))
        for request in backlog {
            finishPublish(request, .failure(AMQPError(.closed, request.context, replyText: "the connection closed before it was sent")))
        }
        backlog.removeAll()
        failInFlight(finalError ?? AMQPError(.closed, "connection close"))
        for consumer in consumers.values {
            if let finalError { consumer.continuation.finish(throwing: finalError) } else { consumer.continuation.finish() }
        }
        consumers.removeAll()
        if let connection {
            // A polite close, but never a long wait for a broker that stopped answering.
            var closeTimeout = timeval(min(configuration.rpcTimeout, .seconds(2)))
            _ = amqp_set_rpc_timeout(connection, &closeTimeout)
            _ = amqp_connection_close(connection, AMQP_REPLY_SUCCESS)
            amqp_destroy_connection(connection)
            self.connection = nil
        }
        for incarnation in liveIncarnations.values { incarnation.kill() }
        liveIncarnations.removeAll()
        consumersByChannel.removeAll()
        let remaining = core.exit(finalState: .closed(finalError))
        for command in remaining {
            switch command {
            case .publish(let request):
                finishPublish(request, .failure(AMQPError(.closed, request.context)))
            case .operation(let operation):
                operation.fail(AMQPError(.closed, "connection closed"))
            case .settle, .close:
                break
            }
        }
        logger.debug("AMQP connection thread exiting: \(finalError.map { "\($0)" } ?? "closed")")
    }

    // MARK: - Connecting

    private func connect() throws(AMQPError) {
        let endpoint = configuration.endpoint
        let context = "connect to \(endpoint)"
        guard let connection = amqp_new_connection() else {
            throw AMQPError(.library, context, replyText: "amqp_new_connection failed")
        }
        guard let socket = amqp_tcp_socket_new(connection) else {
            amqp_destroy_connection(connection)
            throw AMQPError(.library, context, replyText: "amqp_tcp_socket_new failed")
        }
        var connectTimeout = timeval(configuration.connectTimeout)
        let status = amqp_socket_open_noblock(socket, endpoint.host, Int32(endpoint.port), &connectTimeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            amqp_destroy_connection(connection)
            throw AMQPError.status(status, context, connecting: true)
        }
        _ = amqp_set_handshake_timeout(connection, &connectTimeout)
        var rpcTimeout = timeval(configuration.rpcTimeout)
        _ = amqp_set_rpc_timeout(connection, &rpcTimeout)
        var properties = clientProperties()
        let reply = CRabbitMQ_login_plain(
            connection, endpoint.virtualHost, 0, Int32(configuration.frameMax), Int32(configuration.heartbeatSeconds),
            &properties, endpoint.user, endpoint.password)
        arena.reset()
        if let error = AMQPError.reply(reply, "login to \(endpoint)", connecting: true) {
            amqp_destroy_connection(connection)
            throw error
        }
        self.connection = connection
        broken = nil
        blocked = false
        core.counters.blocked.store(false, ordering: .relaxed)
        generation += 1
        let negotiatedMax = Int(amqp_get_channel_max(connection))
        channelMax = negotiatedMax == 0 ? 65535 : negotiatedMax
        heartbeat = Int(amqp_get_heartbeat(connection))
        core.counters.heartbeat.store(heartbeat, ordering: .relaxed)
        logger.debug("AMQP connected to \(endpoint) (heartbeat \(heartbeat) s, channel_max \(channelMax))")
        do throws(AMQPError) {
            try declareTopology()
            try resubscribeConsumers()
        } catch {
            reset(after: error)
            throw error
        }
    }

    private func clientProperties() -> amqp_table_t {
        var table: AMQPTable = [
            "capabilities": [
                "consumer_cancel_notify": true, "publisher_confirms": true, "basic.nack": true,
                "connection.blocked": true, "authentication_failure_close": true,
            ],
        ]
        if let name = configuration.connectionName { table["connection_name"] = .string(name) }
        return arena.table(table)
    }

    private func declareTopology() throws(AMQPError) {
        for exchange in topology.exchanges { try declare(exchange, record: false) }
        for queue in topology.queues { _ = try declare(queue, record: false) }
        for binding in topology.bindings { try bind(binding, record: false) }
    }

    private func resubscribeConsumers() throws(AMQPError) {
        for consumer in consumers.values.sorted(by: { $0.id < $1.id }) {
            do throws(AMQPError) {
                try subscribe(consumer)
            } catch {
                if broken != nil { throw error }
                // A channel-level failure (e.g. 404: the queue is gone): this consumer ends.
                if consumers.removeValue(forKey: consumer.id) != nil { consumer.continuation.finish(throwing: error) }
            }
        }
    }

    /// The connection broke: forget everything that belonged to it.
    private func reset(after error: AMQPError) {
        if let connection { amqp_destroy_connection(connection) }
        connection = nil
        broken = nil
        controlOpen = false
        publishOpen = false
        failInFlight(error)
        partial.removeAll()
        for incarnation in liveIncarnations.values { incarnation.kill() }
        liveIncarnations.removeAll()
        for consumer in consumersByChannel.values {
            consumer.channel = nil
            consumer.incarnation = nil
        }
        consumersByChannel.removeAll()
        settledTags.removeAll()
        pendingAcks.removeAll()
        nextChannel = Self.firstConsumerChannel
        freeChannels.removeAll()
    }

    private func lose(_ error: AMQPError) {
        logger.debug("AMQP connection lost: \(error)")
        reset(after: error)
        lastError = error
        if !closeRequested && !configuration.reconnect.enabled {
            finalError = error
            closeRequested = true
        }
    }

    /// Reconnects with backoff; false when closing or giving up.
    private func reconnect() -> Bool {
        var lastError = self.lastError ?? AMQPError(.connectionLost, "connection")
        var attempt = 0
        while true {
            attempt += 1
            if let maximum = configuration.reconnect.maximumAttempts, attempt > maximum {
                logger.debug("AMQP reconnection: giving up after \(maximum) attempts")
                finalError = lastError
                return false
            }
            core.setState(.reconnecting(attempt: attempt, lastError: lastError))
            let delay = configuration.reconnect.delay(beforeAttempt: attempt)
            guard waitDisconnected(until: ContinuousClock.now.advanced(by: delay)) else { return false }
            do throws(AMQPError) {
                try connect()
                core.counters.reconnects.add(1, ordering: .relaxed)
                core.setState(.connected)
                logger.debug("AMQP reconnected after \(attempt) attempt(s)")
                return true
            } catch {
                logger.debug("AMQP reconnection attempt \(attempt) failed: \(error)")
                lastError = error
                if closeRequested { return false }
            }
        }
    }

    /// Sleeps until `deadline` while disconnected, still serving commands (publishes wait in
    /// the backlog, synchronous operations fail fast). False when a close was requested.
    private func waitDisconnected(until deadline: ContinuousClock.Instant) -> Bool {
        var commands: [Command] = []
        while true {
            core.takeCommands(&commands)
            for command in commands { execute(command) }
            commands.removeAll(keepingCapacity: true)
            if closeRequested { return false }
            let now = ContinuousClock.now
            if now >= deadline { return true }
            guard core.prepareToSleep() else { continue }
            var descriptor = pollfd(fd: core.wakeup.readFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, Int32(clamping: (deadline - now).milliseconds))
            core.didWake()
        }
    }

    // MARK: - Waiting and reading

    /// Blocks in poll on the socket and the wake-up pipe, for at most half the heartbeat
    /// interval, unless there is work already.
    private func sleepIfIdle() {
        guard let connection else { return }
        if amqp_frames_enqueued(connection) != 0 || amqp_data_in_buffer(connection) != 0 { return }
        guard core.prepareToSleep() else { return }
        var timeout = heartbeat > 0 ? heartbeat * 500 : 5000
        if closeRequested, let closeDeadline {
            timeout = min(timeout, max((closeDeadline - ContinuousClock.now).milliseconds, 0))
        }
        var descriptors = [
            pollfd(fd: core.wakeup.readFD, events: Int16(POLLIN), revents: 0),
            pollfd(fd: amqp_get_sockfd(connection), events: Int16(POLLIN), revents: 0),
        ]
        _ = poll(&descriptors, 2, Int32(clamping: timeout))
        core.didWake()
    }

    /// Reads and handles the frames that are available now (at most `limit`). Calling into
    /// rabbitmq-c here also sends heartbeats when due and detects a silent broker.
    private func pump(limit: Int) {
        // Not zero: with a zero timeout rabbitmq-c never reports a missed heartbeat.
        var timeout = timeval(tv_sec: 0, tv_usec: 1)
        for _ in 0..<limit {
            guard let connection, broken == nil else { return }
            var frame = amqp_frame_t()
            let status = amqp_simple_wait_frame_noblock(connection, &frame, &timeout)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else {
                broken = AMQPError.status(status, "reading from the broker")
                return
            }
            handle(frame)
        }
    }

    /// Handles the frames rabbitmq-c queued during a synchronous operation.
    private func drainQueuedFrames() {
        var timeout = timeval(tv_sec: 0, tv_usec: 1)
        while let connection, broken == nil, amqp_frames_enqueued(connection) != 0 {
            var frame = amqp_frame_t()
            let status = amqp_simple_wait_frame_noblock(connection, &frame, &timeout)
            guard status == AMQP_STATUS_OK.rawValue else {
                if status != AMQP_STATUS_TIMEOUT.rawValue { broken = AMQPError.status(status, "reading from the broker") }
                return
            }
            handle(frame)
        }
    }

    private func handle(_ frame: amqp_frame_t) {
        let channel = frame.channel
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            handleMethod(frame.payload.method, channel: channel)
        case AMQP_FRAME_HEADER:
            handleHeader(frame.payload.properties.body_size, frame.payload.properties.decoded, channel: channel)
        case AMQP_FRAME_BODY:
            handleBody(frame.payload.body_fragment, channel: channel)
        default:
            break
        }
        if let connection { amqp_maybe_release_buffers_on_channel(connection, channel) }
    }

    private func handleMethod(_ method: amqp_method_t, channel: amqp_channel_t) {
        func decoded<T>(_ type: T.Type) -> T? { method.decoded?.assumingMemoryBound(to: T.self).pointee }
        switch method.id {
        case AMQP_BASIC_ACK_METHOD:
            if channel == Self.publishChannel, let ack = decoded(amqp_basic_ack_t.self) {
                confirm(ack.delivery_tag, multiple: ack.multiple != 0, ack: true)
            }
        case AMQP_BASIC_NACK_METHOD:
            if channel == Self.publishChannel, let nack = decoded(amqp_basic_nack_t.self) {
                confirm(nack.delivery_tag, multiple: nack.multiple != 0, ack: false)
            }
        case AMQP_BASIC_DELIVER_METHOD:
            if let deliver = decoded(amqp_basic_deliver_t.self) {
                partial[channel] = PartialContent(.delivery(
                    deliveryTag: deliver.delivery_tag, redelivered: deliver.redelivered != 0,
                    exchange: deliver.exchange.string, routingKey: deliver.routing_key.string))
            }
        case AMQP_BASIC_RETURN_METHOD:
            if let returned = decoded(amqp_basic_return_t.self) {
                partial[channel] = PartialContent(.returned(
                    replyCode: returned.reply_code, replyText: returned.reply_text.string,
                    exchange: returned.exchange.string, routingKey: returned.routing_key.string))
            }
        case AMQP_BASIC_CANCEL_METHOD:
            if let cancel = decoded(amqp_basic_cancel_t.self) {
                cancelledByServer(channel: channel, tag: cancel.consumer_tag.string)
            }
        case AMQP_CHANNEL_CLOSE_METHOD:
            let error = AMQPError.serverClose(method, describe(channel: channel))
                ?? AMQPError(.channelClosedByServer, describe(channel: channel))
            sendChannelCloseOK(channel)
            channelClosed(channel, error)
        case AMQP_CHANNEL_FLOW_METHOD:
            if let flow = decoded(amqp_channel_flow_t.self), let connection {
                var ok = amqp_channel_flow_ok_t(active: flow.active)
                _ = amqp_send_method(connection, channel, AMQP_CHANNEL_FLOW_OK_METHOD, &ok)
            }
        case AMQP_CONNECTION_CLOSE_METHOD:
            let error = AMQPError.serverClose(method, "connection") ?? AMQPError(.connectionClosedByServer, "connection")
            sendConnectionCloseOK()
            broken = error
        case AMQP_CONNECTION_BLOCKED_METHOD:
            logger.debug("AMQP connection blocked by the broker; holding publishes back")
            blocked = true
            core.counters.blocked.store(true, ordering: .relaxed)
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            logger.debug("AMQP connection unblocked")
            blocked = false
            core.counters.blocked.store(false, ordering: .relaxed)
        default:
            logger.trace("AMQP: ignoring method \(method.id) on channel \(channel)")
        }
    }

    private func handleHeader(_ bodySize: UInt64, _ decoded: UnsafeMutableRawPointer?, channel: amqp_channel_t) {
        guard let content = partial[channel], !content.headerSeen else {
            logger.trace("AMQP: unexpected content header on channel \(channel)")
            return
        }
        content.headerSeen = true
        content.expectedSize = Int(bodySize)
        if let decoded {
            content.properties = AMQPProperties(decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee)
        }
        if content.expectedSize == 0 {
            partial[channel] = nil
            complete(content, channel: channel)
        } else {
            content.body.reserveCapacity(content.expectedSize)
        }
    }

    private func handleBody(_ fragment: amqp_bytes_t, channel: amqp_channel_t) {
        guard let content = partial[channel], content.headerSeen else {
            logger.trace("AMQP: unexpected content body on channel \(channel)")
            return
        }
        if fragment.len > 0, let bytes = fragment.bytes {
            content.body.append(contentsOf: UnsafeRawBufferPointer(start: bytes, count: fragment.len))
        }
        if content.body.count >= content.expectedSize {
            partial[channel] = nil
            complete(content, channel: channel)
        }
    }

    private func complete(_ content: PartialContent, channel: amqp_channel_t) {
        switch content.kind {
        case .delivery(let tag, let redelivered, let exchange, let routingKey):
            deliver(content, tag: tag, redelivered: redelivered, exchange: exchange, routingKey: routingKey, channel: channel)
        case .returned(let code, let text, let exchange, let routingKey):
            returned(content.properties, code: code, text: text, exchange: exchange, routingKey: routingKey)
        }
    }

    private func describe(channel: amqp_channel_t) -> String {
        switch channel {
        case Self.controlChannel: "control channel"
        case Self.publishChannel: "publish channel"
        default: consumersByChannel[channel]?.context ?? "channel \(channel)"
        }
    }

    private func sendChannelCloseOK(_ channel: amqp_channel_t) {
        guard let connection else { return }
        var ok = amqp_channel_close_ok_t(dummy: 0)
        let status = amqp_send_method(connection, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
        if status < 0 { broken = broken ?? AMQPError.status(status, "channel.close-ok") }
    }

    private func sendConnectionCloseOK() {
        guard let connection else { return }
        var ok = amqp_connection_close_ok_t(dummy: 0)
        _ = amqp_send_method(connection, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
    }

    /// The broker closed `channel` (we have answered close-ok).
    private func channelClosed(_ channel: amqp_channel_t, _ error: AMQPError) {
        logger.debug("AMQP channel \(channel) closed by the broker: \(error)")
        partial[channel] = nil
        switch channel {
        case Self.controlChannel:
            controlOpen = false
        case Self.publishChannel:
            publishOpen = false
            failInFlight(error)
        default:
            liveIncarnations.removeValue(forKey: channel)?.kill()
            settledTags[channel] = nil
            pendingAcks[channel] = nil
            if let consumer = consumersByChannel.removeValue(forKey: channel) {
                consumer.channel = nil
                consumer.incarnation = nil
                if consumers.removeValue(forKey: consumer.id) != nil { consumer.continuation.finish(throwing: error) }
            }
            freeChannels.append(channel)
        }
    }

    // MARK: - Synchronous operations

    /// Runs a rabbitmq-c RPC (`call` returns the reply method or NULL) on `channel` and maps
    /// failures: a channel closed by the broker is acknowledged and reopened on next use; a
    /// library failure or a connection close marks the connection broken.
    private func rpc<Reply, Value>(
        _ channel: amqp_channel_t, _ context: String,
        _ call: (amqp_connection_state_t) -> UnsafeMutablePointer<Reply>?,
        extract: (Reply) -> Value
    ) throws(AMQPError) -> Value {
        guard let connection, broken == nil else { throw AMQPError(.notConnected, context) }
        let reply = call(connection)
        arena.reset()
        if let reply {
            let value = extract(reply.pointee)
            amqp_maybe_release_buffers_on_channel(connection, channel)
            return value
        }
        throw rpcFailed(amqp_get_rpc_reply(connection), channel: channel, context)
    }

    private func rpcFailed(_ reply: amqp_rpc_reply_t, channel: amqp_channel_t, _ context: String) -> AMQPError {
        let error = AMQPError.reply(reply, context) ?? AMQPError(.protocolError, context, replyText: "no reply")
        if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD {
            sendChannelCloseOK(channel)
            channelClosed(channel, error)
        } else if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD {
            sendConnectionCloseOK()
            broken = error
        } else {
            broken = error
        }
        logger.debug("AMQP \(error)")
        return error
    }

    private func ensureControlChannel() throws(AMQPError) {
        guard !controlOpen else { return }
        let channel = Self.controlChannel
        try rpc(channel, "channel.open \(channel)", { amqp_channel_open($0, channel) }, extract: { _ in () })
        controlOpen = true
    }

    private func ensurePublishChannel() throws(AMQPError) {
        guard !publishOpen else { return }
        let channel = Self.publishChannel
        try rpc(channel, "channel.open \(channel)", { amqp_channel_open($0, channel) }, extract: { _ in () })
        try rpc(channel, "confirm.select", { amqp_confirm_select($0, channel) }, extract: { _ in () })
        publishOpen = true
        inFlight.removeAll(keepingCapacity: true)
        inFlightHead = 0
        inFlightBase = 1
        inFlightCount = 0
    }

    private func bool(_ value: Bool) -> amqp_boolean_t { value ? 1 : 0 }

    func declare(_ exchange: AMQPExchange, record: Bool = true) throws(AMQPError) {
        try ensureControlChannel()
        let arena = self.arena
        try rpc(Self.controlChannel, "exchange.declare '\(exchange.name)' (\(exchange.kind.name))", { connection in
            amqp_exchange_declare(
                connection, Self.controlChannel, arena.bytes(exchange.name), arena.bytes(exchange.kind.name), 0,
                bool(exchange.durable), bool(exchange.autoDelete), bool(exchange.internal), arena.table(exchange.arguments))
        }, extract: { _ in () })
        if record { topology.record(exchange) }
    }

    func declare(_ queue: AMQPQueue, record: Bool = true) throws(AMQPError) -> AMQPQueueState {
        try ensureControlChannel()
        let arena = self.arena
        let state = try rpc(Self.controlChannel, "queue.declare '\(queue.name)'", { connection in
            amqp_queue_declare(
                connection, Self.controlChannel, arena.bytes(queue.name), 0, bool(queue.durable), bool(queue.exclusive),
                bool(queue.autoDelete), arena.table(queue.arguments))
        }, extract: { AMQPQueueState(name: $0.queue.string, messageCount: $0.message_count, consumerCount: $0.consumer_count) })
        if record { topology.record(queue) }
        return state
    }

    func inspectQueue(_ name: String) throws(AMQPError) -> AMQPQueueState {
        try ensureControlChannel()
        let arena = self.arena
        return try rpc(Self.controlChannel, "queue.declare (passive) '\(name)'", { connection in
            amqp_queue_declare(connection, Self.controlChannel, arena.bytes(name), 1, 0, 0, 0, amqp_empty_table)
        }, extract: { AMQPQueueState(name: $0.queue.string, messageCount: $0.message_count, consumerCount: $0.consumer_count) })
    }

    func bind(_ binding: AMQPBinding, record: Bool = true) throws(AMQPError) {
        try changeBinding(binding, bind: true)
        if record { topology.record(binding) }
    }

    func unbind(_ binding: AMQPBinding) throws(AMQPError) {
        try changeBinding(binding, bind: false)
        topology.forget(binding)
    }

    private func changeBinding(_ binding: AMQPBinding, bind: Bool) throws(AMQPError) {
        try ensureControlChannel()
        let arena = self.arena
        let method = bind ? "queue.bind" : "queue.unbind"
        let context = "\(method) '\(binding.queue)' to '\(binding.exchange)' with '\(binding.routingKey)'"
        // Both replies are empty (`char dummy`): read them as a byte.
        try rpc(Self.controlChannel, context, { connection -> UnsafeMutablePointer<CChar>? in
            let (queue, exchange, key) = (arena.bytes(binding.queue), arena.bytes(binding.exchange), arena.bytes(binding.routingKey))
            let arguments = arena.table(binding.arguments)
            return bind
                ? amqp_queue_bind(connection, Self.controlChannel, queue, exchange, key, arguments).map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: CChar.self) }
                : amqp_queue_unbind(connection, Self.controlChannel, queue, exchange, key, arguments).map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: CChar.self) }
        }, extract: { _ in () })
    }

    func purgeQueue(_ name: String) throws(AMQPError) -> UInt32 {
        try ensureControlChannel()
        let arena = self.arena
        return try rpc(Self.controlChannel, "queue.purge '\(name)'", { connection in
            amqp_queue_purge(connection, Self.controlChannel, arena.bytes(name))
        }, extract: { $0.message_count })
    }

    func deleteQueue(_ name: String, ifUnused: Bool, ifEmpty: Bool) throws(AMQPError) -> UInt32 {
        try ensureControlChannel()
        let arena = self.arena
        let count = try rpc(Self.controlChannel, "queue.delete '\(name)'", { connection in
            amqp_queue_delete(connection, Self.controlChannel, arena.bytes(name), bool(ifUnused), bool(ifEmpty))
        }, extract: { $0.message_count })
        topology.forgetQueue(name)
        return count
    }

    func deleteExchange(_ name: String, ifUnused: Bool) throws(AMQPError) {
        try ensureControlChannel()
        let arena = self.arena
        try rpc(Self.controlChannel, "exchange.delete '\(name)'", { connection in
            amqp_exchange_delete(connection, Self.controlChannel, arena.bytes(name), bool(ifUnused))
        }, extract: { _ in () })
        topology.forgetExchange(name)
    }

    // MARK: - Publishing

    /// Writes one publish; false if it could not be written and should wait in the backlog
    /// (the connection broke before anything was sent).
    private func send(_ request: PendingPublish) -> Bool {
        guard let connection else { return false }
        do throws(AMQPError) {
            try ensurePublishChannel()
        } catch {
            if broken != nil { return false }
            finishPublish(request, .failure(error))
            return true
        }
        let sequence = inFlightBase + UInt64(inFlight.count)
        let messageId = request.mandatory
            ? (request.message.properties.messageId ?? "\(messageIdPrefix)-\(generation)-\(sequence)")
            : request.message.properties.messageId
        inFlight.append(InFlight(request: request, messageId: messageId))
        inFlightCount += 1
        var properties = request.message.properties.c(in: arena, messageIdOverride: request.mandatory ? messageId : nil)
        let exchange = arena.bytes(request.exchange)
        let routingKey = arena.bytes(request.routingKey)
        let status = request.message.body.withUnsafeBytes { body in
            amqp_basic_publish(
                connection, Self.publishChannel, exchange, routingKey, bool(request.mandatory), 0, &properties,
                amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress)))
        }
        arena.reset()
        if status != AMQP_STATUS_OK.rawValue {
            // Possibly written in part: it stays in flight and fails as unconfirmed.
            broken = AMQPError.status(status, request.context)
        } else {
            core.counters.published.add(1, ordering: .relaxed)
        }
        return true
    }

    private func flushBacklog() {
        guard !backlog.isEmpty, connection != nil, broken == nil, !blocked else { return }
        let pending = backlog
        backlog.removeAll(keepingCapacity: true)
        for (index, request) in pending.enumerated() where !send(request) {
            backlog = Array(pending[index...])
            return
        }
    }

    /// basic.ack / basic.nack for `tag` (and everything before it when `multiple`).
    private func confirm(_ tag: UInt64, multiple: Bool, ack: Bool) {
        guard tag >= inFlightBase, tag - inFlightBase < UInt64(inFlight.count) else {
            logger.trace("AMQP: confirm for unknown sequence number \(tag)")
            return
        }
        let last = Int(tag - inFlightBase)
        let first = multiple ? inFlightHead : last
        if first <= last {
            for index in first...last {
                guard let item = inFlight[index] else { continue }
                inFlight[index] = nil
                inFlightCount -= 1
                let result: Result<Void, AMQPError>
                if !ack {
                    result = .failure(AMQPError(.nacked, item.request.context, replyText: "the broker nacked the message"))
                } else if let returned = item.returned {
                    result = .failure(returned)
                } else {
                    result = .success(())
                }
                finishPublish(item.request, result)
            }
        }
        while inFlightHead < inFlight.count && inFlight[inFlightHead] == nil { inFlightHead += 1 }
        if inFlightHead == inFlight.count {
            inFlightBase += UInt64(inFlight.count)
            inFlight.removeAll(keepingCapacity: true)
            inFlightHead = 0
        } else if inFlightHead >= 1024 && inFlightHead * 2 >= inFlight.count {
            inFlight.removeFirst(inFlightHead)
            inFlightBase += UInt64(inFlightHead)
            inFlightHead = 0
        }
    }

    /// A mandatory message came back unroutable: its confirm follows; fail it then.
    private func returned(_ properties: AMQPProperties, code: UInt16, text: String, exchange: String, routingKey: String) {
        core.counters.returned.add(1, ordering: .relaxed)
        for index in inFlightHead..<inFlight.count {
            guard let item = inFlight[index], item.request.mandatory, item.returned == nil,
                  item.messageId == properties.messageId else { continue }
            inFlight[index]!.returned = AMQPError(.unroutable, item.request.context, replyCode: code, replyText: text)
            return
        }
        logger.debug("AMQP: returned message \(properties.messageId ?? "-") to '\(exchange)'/'\(routingKey)' matches no publish")
    }

    private func finishPublish(_ request: PendingPublish, _ result: Result<Void, AMQPError>) {
        guard request.state.complete(result) else { return }
        core.limiter.release()
        switch result {
        case .success: core.counters.confirmed.add(1, ordering: .relaxed)
        case .failure(let error) where error.kind == .nacked: core.counters.nacked.add(1, ordering: .relaxed)
        case .failure(let error) where error.kind == .unconfirmed: core.counters.unconfirmed.add(1, ordering: .relaxed)
        case .failure: break
        }
    }

    /// Fails every publish awaiting a confirm as ``AMQPError/Kind/unconfirmed``.
    private func failInFlight(_ cause: AMQPError) {
        for item in inFlight[inFlightHead...] {
            guard let item else { continue }
            finishPublish(item.request, .failure(cause.asUnconfirmed(item.request.context)))
        }
        inFlight.removeAll(keepingCapacity: true)
        inFlightHead = 0
        inFlightBase = 1
        inFlightCount = 0
    }

    // MARK: - Consuming

    private func allocateChannel() throws(AMQPError) -> amqp_channel_t {
        // Numbers are not reused while fresh ones remain, so that frames of a closed channel
        // can never be mistaken for frames of a new one.
        if Int(nextChannel) <= channelMax {
            defer { nextChannel += 1 }
            return nextChannel
        }
        guard !freeChannels.isEmpty else {
            throw AMQPError(.library, "channel.open", replyText: "all \(channelMax) channels are in use")
        }
        return freeChannels.removeFirst()
    }

    func addConsumer(_ consumer: ConsumerRecord) throws(AMQPError) {
        do throws(AMQPError) {
            try subscribe(consumer)
        } catch {
            if let channel = consumer.channel {
                consumersByChannel[channel] = nil
                liveIncarnations.removeValue(forKey: channel)?.kill()
            }
            throw error
        }
        consumers[consumer.id] = consumer
    }

    private func subscribe(_ consumer: ConsumerRecord) throws(AMQPError) {
        let channel = try allocateChannel()
        try rpc(channel, "channel.open \(channel)", { amqp_channel_open($0, channel) }, extract: { _ in () })
        let incarnation = ChannelIncarnation(channel: channel)
        liveIncarnations[channel] = incarnation
        settledTags[channel] = SettledTags()
        consumer.channel = channel
        consumer.incarnation = incarnation
        consumersByChannel[channel] = consumer
        let prefetch = consumer.prefetch
        // global=true: the limit is the channel's, which RabbitMQ applies immediately when
        // changed; with one consumer per channel it is the consumer's limit.
        try rpc(channel, "basic.qos \(prefetch) for \(consumer.context)", { amqp_basic_qos($0, channel, 0, prefetch, 1) },
                extract: { _ in () })
        let arena = self.arena
        try rpc(channel, "basic.consume for \(consumer.context)", { connection in
            amqp_basic_consume(
                connection, channel, arena.bytes(consumer.queue), arena.bytes(consumer.tag), 0, 0, bool(consumer.exclusive),
                arena.table(consumer.arguments))
        }, extract: { _ in () })
        logger.debug("AMQP \(consumer.context) subscribed on channel \(channel) (prefetch \(prefetch))")
    }

    func setPrefetch(consumer id: UInt64, _ count: UInt16) throws(AMQPError) {
        guard let consumer = consumers[id] else {
            throw AMQPError(.consumerCancelled, "basic.qos", replyText: "the consumer is no longer active")
        }
        if let channel = consumer.channel, isConnected {
            try rpc(channel, "basic.qos \(count) for \(consumer.context)", { amqp_basic_qos($0, channel, 0, count, 1) },
                    extract: { _ in () })
        }
        consumer.prefetch = count
    }

    /// basic.cancel; deliveries that arrived before the broker's cancel-ok are still yielded,
    /// then the sequence ends. The channel stays open so they can be settled.
    func cancelConsumer(_ id: UInt64) throws(AMQPError) {
        guard let consumer = consumers.removeValue(forKey: id) else { return }
        defer { consumer.continuation.finish() }
        guard let channel = consumer.channel, isConnected else { return }
        let arena = self.arena
        try rpc(channel, "basic.cancel for \(consumer.context)", { connection in
            amqp_basic_cancel(connection, channel, arena.bytes(consumer.tag))
        }, extract: { _ in () })
        drainQueuedFrames()
    }

    /// The application stopped iterating: close the consumer's channel so the broker
    /// requeues what it has not settled.
    func dropConsumer(_ id: UInt64) {
        guard let consumer = consumers.removeValue(forKey: id) else { return }
        guard let channel = consumer.channel else { return }
        consumersByChannel[channel] = nil
        liveIncarnations.removeValue(forKey: channel)?.kill()
        settledTags[channel] = nil
        pendingAcks[channel] = nil
        consumer.channel = nil
        consumer.incarnation = nil
        partial[channel] = nil
        guard let connection, broken == nil else { return }
        let reply = amqp_channel_close(connection, channel, AMQP_REPLY_SUCCESS)
        if reply.reply_type == AMQP_RESPONSE_NORMAL {
            freeChannels.append(channel)
        } else {
            _ = rpcFailed(reply, channel: channel, "channel.close for \(consumer.context)")
        }
        drainQueuedFrames()
        logger.debug("AMQP \(consumer.context) dropped; channel \(channel) closed")
    }

    private func cancelledByServer(channel: amqp_channel_t, tag: String) {
        guard let consumer = consumersByChannel[channel], consumer.tag == tag else { return }
        logger.debug("AMQP \(consumer.context) cancelled by the broker")
        if consumers.removeValue(forKey: consumer.id) != nil {
            consumer.continuation.finish(throwing: AMQPError(
                .consumerCancelled, consumer.context, replyText: "the broker cancelled the consumer (queue deleted?)"))
        }
    }

    private func deliver(
        _ content: PartialContent, tag: UInt64, redelivered: Bool, exchange: String, routingKey: String,
        channel: amqp_channel_t
    ) {
        guard let consumer = consumersByChannel[channel], let incarnation = consumer.incarnation, let connection else {
            logger.trace("AMQP: delivery on channel \(channel) without a consumer (closing); the broker requeues it")
            return
        }
        core.counters.delivered.add(1, ordering: .relaxed)
        let delivery = AMQPDelivery(
            body: content.body, properties: content.properties, exchange: exchange, routingKey: routingKey,
            deliveryTag: tag, redelivered: redelivered, consumerTag: consumer.tag,
            settlement: DeliverySettlement(core: core, incarnation: incarnation, deliveryTag: tag))
        if case .terminated = consumer.continuation.yield(delivery) {
            // Nobody will read it: give it back now rather than when the channel closes.
            _ = amqp_basic_reject(connection, channel, tag, 1)
            _ = settledTags[channel]?.settle(tag)
        }
    }

    private func settle(_ settlement: DeliverySettlement, _ kind: SettleKind) {
        let incarnation = settlement.incarnation
        let channel = incarnation.channel
        let tag = settlement.deliveryTag
        guard let connection, broken == nil, incarnation.isAlive, liveIncarnations[channel] === incarnation else {
            core.counters.staleSettlements.add(1, ordering: .relaxed)
            logger.debug("AMQP: not settling stale delivery \(tag) of channel \(channel)")
            return
        }
        let status: Int32
        switch kind {
        case .ack:
            pendingAcks[channel, default: []].append(tag)
            core.counters.acked.add(1, ordering: .relaxed)
            return
        case .nack(let requeue):
            status = amqp_basic_nack(connection, channel, tag, 0, bool(requeue))
        case .reject(let requeue):
            status = amqp_basic_reject(connection, channel, tag, bool(requeue))
        }
        core.counters.rejected.add(1, ordering: .relaxed)
        _ = settledTags[channel]?.settle(tag)
        if status != AMQP_STATUS_OK.rawValue { broken = AMQPError.status(status, "settling a delivery") }
    }

    /// Sends the acks collected from the last batch of commands. Per channel, the tags that
    /// extend the run of settled tags go out as one `multiple` ack on the highest of them
    /// (which the broker still holds unacked, as it must); the others go out one by one.
    private func flushAcks() {
        guard !pendingAcks.isEmpty else { return }
        defer { pendingAcks.removeAll(keepingCapacity: true) }
        guard let connection, broken == nil else { return }
        for (channel, tags) in pendingAcks {
            guard liveIncarnations[channel] != nil, var tracker = settledTags[channel] else { continue }
            var multipleTag: UInt64?
            for tag in tags.sorted() {
                if tracker.settle(tag) {
                    multipleTag = tag
                } else if amqp_basic_ack(connection, channel, tag, 0) != AMQP_STATUS_OK.rawValue {
                    broken = AMQPError(.connectionLost, "basic.ack")
                }
            }
            settledTags[channel] = tracker
            if let multipleTag {
                let status = amqp_basic_ack(connection, channel, multipleTag, multipleTag == tags.min() ? 0 : 1)
                if status != AMQP_STATUS_OK.rawValue { broken = AMQPError.status(status, "basic.ack") }
            }
        }
    }

    // MARK: - Testing

    /// Shuts the socket down under rabbitmq-c, as a network failure would.
    func breakSocketForTesting() {
        guard let connection else { return }
        _ = shutdown(amqp_get_sockfd(connection), Int32(SHUT_RDWR))
    }
}

extension timeval {
    init(_ duration: Duration) {
        let milliseconds = max(duration.milliseconds, 0)
        self.init(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
    }
}
