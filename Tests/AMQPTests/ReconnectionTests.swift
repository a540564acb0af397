// AMQPTests: heartbeats, reconnection, and what publishers and consumers see when the
// broker goes away.

@_spi(Testing) import AMQP
import Synchronization
import TalusTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Records every state a connection goes through.
final class StateRecorder: Sendable {
    private final class Box: Sendable {
        let states = Mutex<[AMQPConnectionState]>([])
    }

    private let box = Box()
    private let task: Task<Void, Never>

    init(_ connection: AMQPConnection) {
        let stream = connection.stateChanges()
        let box = self.box
        task = Task {
            for await state in stream { box.states.withLock { $0.append(state) } }
        }
    }

    var all: [AMQPConnectionState] { box.states.withLock { $0 } }
    deinit { task.cancel() }
}

@Suite("AMQP heartbeats and reconnection")
struct ReconnectionTests {
    @Test("an idle connection with a 2 s heartbeat stays open across several intervals")
    func idleHeartbeat() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-heartbeat")
        let connection = try await connections.connect(
            "heartbeat", topology: AMQPTopology(queues: [AMQPQueue(queue, durable: false, autoDelete: true)]),
            heartbeatSeconds: 2)
        #expect(connection.statistics.heartbeatSeconds == 2)
        let states = StateRecorder(connection)
        let clock = ContinuousClock()
        let start = clock.now
        // The broker closes a connection that misses two heartbeats (4 s here), and the
        // client gives up on a broker silent for 4 s: idle for 3.5 intervals.
        try await waitUntil("7 s of idling", timeout: .seconds(15), interval: .milliseconds(250)) {
            guard connection.state == .connected else { throw TestSupportError("connection dropped: \(connection.state)") }
            return clock.now - start >= .seconds(7)
        }
        try await connection.publish(AMQPMessage("after idling"), exchange: "", routingKey: queue).wait()
        #expect(try await connection.inspectQueue(queue).messageCount == 1)
        #expect(connection.reconnectCount == 0)
        #expect(states.all == [.connected])
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("a broker that falls silent (SIGSTOP) is detected by missed heartbeats while idle, then reconnected")
    func silentBrokerDetected() async throws {
        let broker = try PrivateRabbitMQ()
        try await broker.start()
        let connections = Connections()
        let connection = try await connections.connect("silent", url: broker.url, heartbeatSeconds: 2)
        let pidText = try String(contentsOfFile: broker.directory + "/pid", encoding: .utf8)
        let pid = try #require(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        // Nothing arrives on the socket now: only the connection thread's own timer can notice
        // (two missed intervals: 4 s, plus up to half an interval of sleep).
        let clock = ContinuousClock()
        let stopped = clock.now
        kill(pid, SIGSTOP)
        do {
            try await waitUntil("the silent broker to be noticed", timeout: .seconds(8)) {
                if case .reconnecting(_, let error) = connection.state { return error.kind == .connectionLost }
                return false
            }
        } catch {
            kill(pid, SIGCONT)
            throw error
        }
        let noticedAfter = clock.now - stopped
        kill(pid, SIGCONT)
        #expect(noticedAfter >= .seconds(3), "not before the heartbeats were really missed")
        try await waitUntil("reconnected", timeout: .seconds(30)) { connection.state == .connected }
        #expect(connection.reconnectCount == 1)
        await connections.closeAll()
        await broker.stop()
    }

    @Test("after a reconnection, old deliveries are stale and are redelivered on the new connection")
    func staleDeliveriesAfterReconnect() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-stale")
        let connection = try await connections.connect("stale", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        try await publishConfirmed(connection, count: 3, routingKey: queue)
        let consumer = try await connection.consume(queue: queue, prefetch: 5)
        let collector = Collector(consumer)
        let old = try await collector.waitForCount(3)
        let states = StateRecorder(connection)
        #expect(!old[0].isStale)

        await connection.breakConnectionForTesting()
        try await waitUntil("reconnected") { connection.reconnectCount == 1 && connection.state == .connected }
        #expect(old.allSatisfy { $0.isStale })
        let error = try #require(await amqpError { try old[0].ack() })
        #expect(error.kind == .staleDelivery)
        #expect(await amqpError { try old[0].ack() }?.kind == .alreadySettled)

        // The same consumer sequence continues on the new connection with the redeliveries.
        let all = try await collector.waitForCount(6)
        let redelivered = Array(all[3...])
        #expect(Set(redelivered.map(\.id)) == Set(old.map(\.id)))
        #expect(redelivered.allSatisfy { $0.redelivered })
        for delivery in redelivered { try delivery.ack() }
        try await waitUntil("the queue to be empty with nothing unacked") {
            let state = try await connection.inspectQueue(queue)
            return state.messageCount == 0 && connection.statistics.acked == 3
        }
        #expect(states.all.first == .connected)
        #expect(states.all.contains { if case .reconnecting = $0 { true } else { false } })
        #expect(states.all.last == .connected)
        try await consumer.cancel()
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("synchronous operations fail fast while reconnecting; publishes wait and are sent after")
    func operationsWhileReconnecting() async throws {
        let broker = try PrivateRabbitMQ()
        try await broker.start()
        let connections = Connections()
        let queue = uniqueName("amqp-down")
        let connection = try await connections.connect(
            "down", url: broker.url, topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        await broker.stop()
        try await waitUntil("the connection to notice") { connection.state != .connected }
        #expect(await amqpError { _ = try await connection.inspectQueue(queue) }?.kind == .notConnected)
        let queued = try await connection.publish(AMQPMessage("queued while down"), exchange: "", routingKey: queue)
        try await broker.start()
        try await queued.wait()
        #expect(try await connection.inspectQueue(queue).messageCount == 1)
        await connections.closeAll()
        await broker.stop()
    }

    @Test("a broker restart while publishing: every confirmed message survives, unconfirmed ones are reported")
    func brokerRestartWhilePublishing() async throws {
        let broker = try PrivateRabbitMQ()
        try await broker.start()
        let connections = Connections()
        let queue = uniqueName("amqp-restart")
        let transientQueue = uniqueName("amqp-restart-transient")
        let exchange = uniqueName("amqp-restart-x")
        // A transient exchange (gone after the restart) routes into the durable queue: the
        // publishes after the restart only succeed if the topology was re-declared.
        let topology = AMQPTopology(
            exchanges: [AMQPExchange(exchange, kind: .direct, durable: false)],
            queues: [AMQPQueue(queue), AMQPQueue(transientQueue, durable: false)],
            bindings: [AMQPBinding(queue: queue, exchange: exchange, routingKey: "parts")])
        let connection = try await connections.connect("restart", url: broker.url, topology: topology, maxInFlight: 500)
        let states = StateRecorder(connection)

        let confirmations = Mutex<[PublishConfirmation]>([])
        let stop = Atomic<Bool>(false)
        let publisher = Task {
            var index = 0
            while !stop.load(ordering: .relaxed) {
                let message = AMQPMessage("{\"id\":\(index)}", properties: AMQPProperties(messageId: String(index)))
                let confirmation = try await connection.publish(message, exchange: exchange, routingKey: "parts")
                confirmations.withLock { $0.append(confirmation) }
                index += 1
            }
        }
        try await waitUntil("300 confirmed before the restart") { connection.statistics.confirmed >= 300 }
        await broker.stop()
        try await waitUntil("the connection to notice") { connection.state != .connected }
        try await broker.start()
        try await waitUntil("reconnected", timeout: .seconds(60)) {
            connection.reconnectCount >= 1 && connection.state == .connected
        }
        let confirmedAtReconnect = connection.statistics.confirmed
        try await waitUntil("300 more confirmed after the restart") {
            connection.statistics.confirmed >= confirmedAtReconnect + 300
        }
        stop.store(true, ordering: .relaxed)
        try await publisher.value

        let all = confirmations.withLock { $0 }
        let outcome = await all.waitForAll()
        let confirmedIDs = Set(outcome.results.indices.filter { (try? outcome.results[$0].get()) != nil })
        let failures = outcome.failures
        #expect(failures.allSatisfy { $0.error.kind == .unconfirmed }, "failures: \(failures.prefix(3).map(\.error))")
        #expect(connection.statistics.unconfirmed == UInt64(failures.count))
        #expect(confirmedIDs.count + failures.count == all.count, "every publish settled")
        #expect(confirmedIDs.count > 600)

        // Everything confirmed is in the durable queue (possibly with unconfirmed ones that
        // made it too), and the transient queue was re-declared.
        let state = try await connection.inspectQueue(queue)
        #expect(Int(state.messageCount) >= confirmedIDs.count)
        _ = try await connection.inspectQueue(transientQueue)
        let collector = Collector(try await connection.consume(queue: queue, prefetch: 500), autoAck: true)
        try await collector.waitForCount(Int(state.messageCount), timeout: .seconds(60))
        let received = Set(collector.deliveries.map(\.id))
        #expect(confirmedIDs.isSubset(of: received), "missing: \(confirmedIDs.subtracting(received).sorted().prefix(10))")
        #expect(states.all.contains { if case .reconnecting = $0 { true } else { false } })
        await connections.closeAll()
        await broker.stop()
    }

    @Test("while the broker blocks the connection (memory alarm) publishes wait and operations fail fast")
    func blockedConnection() async throws {
        let broker = try PrivateRabbitMQ()
        try await broker.start()
        let connections = Connections()
        let queue = uniqueName("amqp-blocked")
        let connection = try await connections.connect("blocked", url: broker.url, topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        _ = try await broker.rabbitmqctl(["set_vm_memory_high_watermark", "absolute", "1"])
        // RabbitMQ blocks (and announces it) when the connection publishes during the alarm,
        // and then reads nothing more from it until the alarm clears.
        let first = try await connection.publish(AMQPMessage("triggers the block"), exchange: "", routingKey: queue)
        try await waitUntil("connection.blocked") { connection.statistics.blocked }
        let held = try await connection.publish(AMQPMessage("held back"), exchange: "", routingKey: queue)
        let error = try #require(await amqpError { _ = try await connection.inspectQueue(queue) })
        #expect(error.kind == .blocked)
        #expect(held.settled == nil)
        _ = try await broker.rabbitmqctl(["set_vm_memory_high_watermark", "0.4"])
        try await first.wait()
        try await held.wait()
        #expect(!connection.statistics.blocked)
        #expect(try await connection.inspectQueue(queue).messageCount == 2)
        #expect(connection.reconnectCount == 0)
        await connections.closeAll()
        await broker.stop()
    }

    @Test("with reconnection disabled a lost connection ends in closed(error)")
    func reconnectDisabled() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-noreconnect")
        let connection = try await connections.connect(
            "noreconnect", topology: AMQPTopology(queues: [AMQPQueue(queue, durable: false, autoDelete: true)]),
            reconnect: .disabled)
        let collector = Collector(try await connection.consume(queue: queue, prefetch: 1))
        await connection.breakConnectionForTesting()
        try await waitUntil("closed") { if case .closed = connection.state { true } else { false } }
        guard case .closed(let error?) = connection.state else {
            Issue.record("expected closed with an error, got \(connection.state)")
            return
        }
        #expect(error.kind == .connectionLost)
        #expect(await amqpError { _ = try await connection.publish(AMQPMessage("x"), exchange: "", routingKey: queue) } != nil)
        let end = try await collector.waitForEnd()
        #expect(throws: AMQPError.self) { try end.get() }
        await connections.closeAll()
    }
}
