// AMQPTests: publishing with confirms and consuming with acks against the real broker.

import AMQP
import TalusTestSupport
import Testing

@Suite("AMQP publish and consume")
struct PublishConsumeTests {
    @Test("10,000 persistent messages published with confirms are consumed exactly once")
    func tenThousandExactlyOnce() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-10k")
        let publisher = try await connections.connect("publisher", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        try await publishConfirmed(publisher, count: 10_000, routingKey: queue)
        #expect(publisher.statistics.confirmed == 10_000)
        #expect(try await publisher.inspectQueue(queue).messageCount == 10_000)

        let consumerConnection = try await connections.connect("consumer")
        let consumer = try await consumerConnection.consume(queue: queue, prefetch: 200)
        let collector = Collector(consumer, autoAck: true)
        try await collector.waitForCount(10_000, timeout: .seconds(120))
        try await waitUntil("every delivery acked and the queue empty") {
            guard consumerConnection.statistics.acked == 10_000 else { return false }
            return try await publisher.inspectQueue(queue).messageCount == 0
        }
        try await consumer.cancel()
        _ = try await collector.waitForEnd()
        let ids = collector.deliveries.map(\.id)
        #expect(ids.count == 10_000, "no duplicates")
        #expect(Set(ids) == Set(0..<10_000), "none missing")
        #expect(collector.deliveries.allSatisfy { !$0.redelivered && $0.properties.deliveryMode == .persistent })
        try await publisher.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("deliveries unacked when a consumer's connection closes go to another consumer, redelivered")
    func redeliveryToAnotherConsumer() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-redeliver")
        let publisher = try await connections.connect("publisher", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        try await publishConfirmed(publisher, count: 5, routingKey: queue)

        let first = try await connections.connect("consumer-1")
        let firstCollector = Collector(try await first.consume(queue: queue, prefetch: 10))
        let unacked = try await firstCollector.waitForCount(5)
        #expect(unacked.allSatisfy { !$0.redelivered })
        await first.close()

        let second = try await connections.connect("consumer-2")
        let secondCollector = Collector(try await second.consume(queue: queue, prefetch: 10), autoAck: true)
        let redelivered = try await secondCollector.waitForCount(5)
        #expect(Set(redelivered.map(\.id)) == Set(unacked.map(\.id)))
        #expect(redelivered.allSatisfy { $0.redelivered })
        // The first consumer's deliveries cannot be settled any more.
        #expect(throws: AMQPError.self) { try unacked[0].ack() }
        try await publisher.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("nack with requeue redelivers the message")
    func nackRequeueRedelivers() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-nack")
        let connection = try await connections.connect("nack", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        try await publishConfirmed(connection, count: 1, routingKey: queue)
        let collector = Collector(try await connection.consume(queue: queue, prefetch: 1))
        let first = try await collector.waitForCount(1)[0]
        #expect(!first.redelivered)
        try first.nack(requeue: true)
        let again = try await collector.waitForCount(2)[1]
        #expect(again.id == first.id)
        #expect(again.redelivered)
        try again.ack()
        #expect(throws: AMQPError.self) { try first.ack() }
        try await waitUntil("the queue to be empty") { try await connection.inspectQueue(queue).messageCount == 0 }
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    /// A work queue dead-lettering into `dead` through the direct exchange `dlx`.
    static func deadLetterTopology(_ prefix: String, ttl: Duration? = nil) -> (AMQPTopology, work: String, dead: String, dlx: String) {
        let work = uniqueName(prefix + "-work")
        let dead = uniqueName(prefix + "-dead")
        let dlx = uniqueName(prefix + "-dlx")
        var workQueue = AMQPQueue(work)
        workQueue.deadLetterExchange = dlx
        workQueue.deadLetterRoutingKey = "dead"
        workQueue.messageTTL = ttl
        let topology = AMQPTopology(
            exchanges: [AMQPExchange(dlx, kind: .direct)],
            queues: [workQueue, AMQPQueue(dead)],
            bindings: [AMQPBinding(queue: dead, exchange: dlx, routingKey: "dead")])
        return (topology, work, dead, dlx)
    }

    static func xDeath(_ delivery: AMQPDelivery) -> AMQPTable? {
        delivery.headers["x-death"]?.arrayValue?.first?.tableValue
    }

    @Test("reject without requeue dead-letters into the DLX queue with an x-death header")
    func rejectDeadLetters() async throws {
        let connections = Connections()
        let (topology, work, dead, dlx) = Self.deadLetterTopology("amqp-reject")
        let connection = try await connections.connect("reject", topology: topology)
        try await publishConfirmed(connection, count: 1, routingKey: work)
        let workCollector = Collector(try await connection.consume(queue: work, prefetch: 1))
        try workCollector.ack(try await workCollector.waitForCount(1)[0])  // first one acked normally
        try await publishConfirmed(connection, count: 1, first: 1, routingKey: work)
        let rejected = try await workCollector.waitForCount(2)[1]
        try rejected.reject(requeue: false)

        let deadCollector = Collector(try await connection.consume(queue: dead, prefetch: 1), autoAck: true)
        let deadLettered = try await deadCollector.waitForCount(1)[0]
        #expect(deadLettered.id == rejected.id)
        #expect(deadLettered.routingKey == "dead")
        #expect(deadLettered.exchange == dlx)
        let death = try #require(Self.xDeath(deadLettered), "x-death header present")
        #expect(death["reason"]?.stringValue == "rejected")
        #expect(death["queue"]?.stringValue == work)
        #expect(death["count"]?.intValue == 1)
        for queue in [work, dead] { try await connection.deleteQueue(queue) }
        try await connection.deleteExchange(dlx)
        await connections.closeAll()
    }

    @Test("an expired message (x-message-ttl) is dead-lettered")
    func ttlDeadLetters() async throws {
        let connections = Connections()
        let (topology, work, dead, dlx) = Self.deadLetterTopology("amqp-ttl", ttl: .milliseconds(200))
        let connection = try await connections.connect("ttl", topology: topology)
        try await publishConfirmed(connection, count: 1, routingKey: work)
        try await waitUntil("the message to expire into the dead-letter queue", timeout: .seconds(20)) {
            try await connection.inspectQueue(dead).messageCount == 1
        }
        #expect(try await connection.inspectQueue(work).messageCount == 0)
        let collector = Collector(try await connection.consume(queue: dead, prefetch: 1), autoAck: true)
        let expired = try await collector.waitForCount(1)[0]
        #expect(Self.xDeath(expired)?["reason"]?.stringValue == "expired")
        #expect(Self.xDeath(expired)?["queue"]?.stringValue == work)
        for queue in [work, dead] { try await connection.deleteQueue(queue) }
        try await connection.deleteExchange(dlx)
        await connections.closeAll()
    }

    @Test("x-max-priority: messages queued together are consumed highest priority first")
    func priorityOrder() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-priority")
        var priorityQueue = AMQPQueue(queue)
        priorityQueue.maxPriority = 10
        let connection = try await connections.connect("priority", topology: AMQPTopology(queues: [priorityQueue]))
        let priorities: [UInt8] = [3, 9, 0, 5, 7, 1, 8, 2, 6, 4]
        try await publishConfirmed(connection, count: priorities.count, routingKey: queue) { priorities[$0] }
        let collector = Collector(try await connection.consume(queue: queue, prefetch: 1), autoAck: true)
        let received = try await collector.waitForCount(priorities.count)
        #expect(received.map { $0.properties.priority ?? 0 } == priorities.sorted(by: >))
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("a prefetch changed at runtime is respected")
    func prefetchChangeAtRuntime() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-prefetch")
        let connection = try await connections.connect("prefetch", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        try await publishConfirmed(connection, count: 20, routingKey: queue)
        let consumer = try await connection.consume(queue: queue, prefetch: 2)
        let collector = Collector(consumer)

        // Prefetch 2: settling one lets exactly one more through, never more than 2 unacked.
        try await collector.waitForCount(2)
        for next in 3...6 {
            try collector.ack(collector.deliveries[next - 3])
            try await collector.waitForCount(next)
        }
        #expect(collector.maxUnsettledAtArrival == 2)
        #expect(collector.unsettled == 2)

        // Raised to 4 without settling anything: two more arrive.
        try await consumer.setPrefetch(4)
        #expect(consumer.prefetch == 4)
        try await collector.waitForCount(8)
        #expect(collector.unsettled == 4)

        // Lowered to 1: nothing arrives until all four are settled, then one at a time.
        try await consumer.setPrefetch(1)
        collector.resetArrivalRecord()
        for index in 4..<8 { try collector.ack(collector.deliveries[index]) }
        for next in 9...12 {
            try await collector.waitForCount(next)
            if next < 12 { try collector.ack(collector.deliveries[next - 1]) }
        }
        #expect(collector.maxUnsettledAtArrival == 1)
        #expect(collector.unsettled == 1)
        let ready = try await connection.inspectQueue(queue).messageCount
        #expect(ready == 8, "20 published, 12 delivered")
        #expect(collector.count == 12)
        await #expect(throws: AMQPError.self) { try await consumer.setPrefetch(0) }
        collector.stop()
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("properties and headers of every field type survive the round trip")
    func headersRoundTrip() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-headers")
        let connection = try await connections.connect("headers", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        let headers: AMQPTable = [
            "bool": true, "int8": .int8(-8), "uint8": .uint8(8), "int16": .int16(-16), "uint16": .uint16(16),
            "int32": .int32(-32), "uint32": .uint32(32), "int64": .int64(-64), "float": .float(1.5), "double": 2.25,
            "decimal": .decimal(scale: 2, value: 314), "string": "héllo", "bytes": .bytes([0, 1, 255]),
            "array": [1, "two", [3]], "table": ["nested": ["deeper": true]], "timestamp": .timestamp(1_700_000_000),
            "void": .void,
        ]
        let properties = AMQPProperties(
            contentType: "application/json", contentEncoding: "identity", headers: headers, deliveryMode: .persistent,
            priority: 3, correlationId: "corr", replyTo: "reply", expiration: .seconds(60), messageId: "m-1",
            timestamp: 1_700_000_001, type: "part", appId: "talus-tests")
        let body: [UInt8] = Array(0...255) + Array(repeating: 7, count: 300_000)  // several frames
        try await connection.publish(AMQPMessage(body: body, properties: properties), exchange: "", routingKey: queue).wait()
        let collector = Collector(try await connection.consume(queue: queue, prefetch: 1), autoAck: true)
        let delivery = try await collector.waitForCount(1)[0]
        #expect(delivery.body == body)
        #expect(delivery.properties == properties)
        #expect(delivery.routingKey == queue)
        #expect(delivery.exchange == "")
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("a mandatory message no queue takes fails as unroutable (312); routable ones are confirmed")
    func mandatoryReturns() async throws {
        let connections = Connections()
        let exchange = uniqueName("amqp-mandatory")
        let queue = uniqueName("amqp-mandatory-q")
        let connection = try await connections.connect("mandatory", topology: AMQPTopology(
            exchanges: [AMQPExchange(exchange, kind: .direct, durable: false, autoDelete: true)],
            queues: [AMQPQueue(queue, durable: false, autoDelete: true)],
            bindings: [AMQPBinding(queue: queue, exchange: exchange, routingKey: "routed")]))
        var confirmations: [PublishConfirmation] = []
        for index in 0..<20 {
            let key = index.isMultiple(of: 2) ? "routed" : "nowhere"
            let id: String? = index.isMultiple(of: 4) ? nil : "id-\(index)"  // some get a generated id
            confirmations.append(try await connection.publish(
                AMQPMessage("m\(index)", properties: AMQPProperties(messageId: id)), exchange: exchange, routingKey: key,
                mandatory: true))
        }
        let outcome = await confirmations.waitForAll()
        #expect(outcome.confirmedCount == 10)
        #expect(outcome.failures.map(\.index) == Array(stride(from: 1, to: 20, by: 2)))
        #expect(outcome.failures.allSatisfy { $0.error.kind == .unroutable && $0.error.replyCode == 312 })
        #expect(connection.statistics.returned == 10)
        // Without mandatory, unroutable messages are simply confirmed (and dropped).
        try await connection.publish(AMQPMessage("x"), exchange: exchange, routingKey: "nowhere").wait()
        try await connection.deleteQueue(queue)
        try await connection.deleteExchange(exchange)
        await connections.closeAll()
    }

    @Test("cancel ends the sequence; deliveries received before can still be acked")
    func cancelConsumer() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-cancel")
        let connection = try await connections.connect("cancel", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        try await publishConfirmed(connection, count: 6, routingKey: queue)
        let consumer = try await connection.consume(queue: queue, prefetch: 3)
        let collector = Collector(consumer)
        try await collector.waitForCount(3)
        try await consumer.cancel()
        try await collector.waitForEnd().get()  // ended normally
        for delivery in collector.deliveries { try delivery.ack() }
        try await waitUntil("3 messages left, none unacked") {
            let state = try await connection.inspectQueue(queue)
            return state.messageCount == 3 && state.consumerCount == 0
        }
        try await consumer.cancel()  // again: no-op
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("stopping the iteration closes the consumer's channel and requeues its unacked deliveries")
    func droppedIteratorRequeues() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-drop")
        let connection = try await connections.connect("drop", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        try await publishConfirmed(connection, count: 4, routingKey: queue)
        let collector = Collector(try await connection.consume(queue: queue, prefetch: 4))
        let received = try await collector.waitForCount(4)
        collector.stop()
        try await waitUntil("the 4 messages back in the queue") {
            try await connection.inspectQueue(queue).messageCount == 4
        }
        #expect(throws: AMQPError.self) { try received[0].ack() }
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("deleting the queue under a consumer ends its sequence with consumerCancelled")
    func serverCancel() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-server-cancel")
        let connection = try await connections.connect("server-cancel", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        let collector = Collector(try await connection.consume(queue: queue, prefetch: 1))
        let other = try await connections.connect("deleter")
        try await other.deleteQueue(queue)
        let end = try await collector.waitForEnd()
        #expect(throws: AMQPError.self) { try end.get() }
        if case .failure(let error as AMQPError) = end { #expect(error.kind == .consumerCancelled) }
        // The connection is still fine.
        let state = try await connection.declareQueue(AMQPQueue(queue, durable: false))
        #expect(state.messageCount == 0)
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }
}
