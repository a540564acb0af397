// AMQPTests: errors from the broker and the network map to AMQPError, and the connection
// recovers for the next operation.

import AMQP
import TalusTestSupport
import Testing

@Suite("AMQP errors")
struct ErrorTests {
    @Test("re-declaring a queue with different arguments is a 406, and the connection recovers")
    func redeclareDifferentArguments() async throws {
        let connections = Connections()
        let name = uniqueName("amqp-406")
        var queue = AMQPQueue(name)
        queue.maxPriority = 5
        let connection = try await connections.connect("406")
        try await connection.declareQueue(queue)
        try await publishConfirmed(connection, count: 1, routingKey: name)

        var different = queue
        different.maxPriority = 10
        let error = try #require(await amqpError { try await connection.declareQueue(different) })
        #expect(error.kind == .channelClosedByServer)
        #expect(error.isPreconditionFailed)
        #expect(error.replyText?.contains("PRECONDITION_FAILED") == true)
        #expect("\(error)".contains("406"))

        // Next operations on the same connection work: declare, publish with confirm, inspect.
        let state = try await connection.declareQueue(queue)
        #expect(state.messageCount == 1)
        try await publishConfirmed(connection, count: 1, first: 1, routingKey: name)
        #expect(try await connection.inspectQueue(name).messageCount == 2)
        #expect(connection.state == .connected)
        #expect(connection.reconnectCount == 0)
        // The failed declaration was not recorded for re-declaration.
        #expect(try await connection.topology.queues == [queue])
        try await connection.deleteQueue(name)
        await connections.closeAll()
    }

    @Test("a passive declaration of a missing queue is a 404, and the connection recovers")
    func missingQueue() async throws {
        let connections = Connections()
        let connection = try await connections.connect("404")
        let name = uniqueName("amqp-missing")
        let error = try #require(await amqpError { _ = try await connection.inspectQueue(name) })
        #expect(error.kind == .channelClosedByServer)
        #expect(error.isNotFound)
        let bindError = try #require(await amqpError {
            try await connection.bind(AMQPBinding(queue: name, exchange: "amq.direct", routingKey: "x"))
        })
        #expect(bindError.isNotFound)
        let state = try await connection.declareQueue(AMQPQueue(name, durable: false))
        #expect(state.name == name)
        try await connection.deleteQueue(name)
        await connections.closeAll()
    }

    @Test("publishing to a missing exchange fails that publish (404) without hurting later ones")
    func publishToMissingExchange() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-noexchange")
        let connection = try await connections.connect("noexchange", topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        let lost = try await connection.publish(AMQPMessage("lost"), exchange: uniqueName("missing"), routingKey: "x")
        let error = try #require(await amqpError { try await lost.wait() })
        #expect(error.kind == .unconfirmed)
        #expect(error.isNotFound)
        try await publishConfirmed(connection, count: 3, routingKey: queue)
        #expect(try await connection.inspectQueue(queue).messageCount == 3)
        try await connection.deleteQueue(queue)
        await connections.closeAll()
    }

    @Test("nothing listening: the first connect fails fast with connectionFailed")
    func connectionRefused() async throws {
        let port = try freeLoopbackPort()
        let configuration = try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:\(port)/", connectTimeout: .seconds(2))
        let error = try #require(await amqpError { _ = try await AMQPConnection.connect(configuration) })
        #expect(error.kind == .connectionFailed)
    }

    @Test("wrong credentials: authenticationFailed (403)")
    func wrongPassword() async throws {
        var endpoint = try AMQPEndpoint(url: try TestEnvironment.amqpURL())
        endpoint.password = "not-the-password"
        let error = try #require(await amqpError {
            _ = try await AMQPConnection.connect(AMQPConfiguration(endpoint: endpoint, connectTimeout: .seconds(5)))
        })
        #expect(error.kind == .authenticationFailed)
        #expect(error.replyCode == 403)
        #expect(!"\(error)".contains("not-the-password"))
    }

    @Test("unknown vhost: connectionFailed with the broker's 530")
    func unknownVirtualHost() async throws {
        var endpoint = try AMQPEndpoint(url: try TestEnvironment.amqpURL())
        endpoint.virtualHost = uniqueName("no-such-vhost")
        let error = try #require(await amqpError {
            _ = try await AMQPConnection.connect(AMQPConfiguration(endpoint: endpoint, connectTimeout: .seconds(5)))
        })
        #expect(error.kind == .connectionFailed)
        #expect(error.replyCode == 530)
    }

    @Test("a topology that cannot be declared fails connect")
    func badTopology() async throws {
        let connections = Connections()
        let name = uniqueName("amqp-badtopo")
        let existing = try await connections.connect("existing", topology: AMQPTopology(queues: [AMQPQueue(name)]))
        var conflicting = AMQPQueue(name)
        conflicting.maxPriority = 3
        let error = try #require(await amqpError {
            _ = try await connections.connect("conflicting", topology: AMQPTopology(queues: [conflicting]))
        })
        #expect(error.isPreconditionFailed)
        try await existing.deleteQueue(name)
        await connections.closeAll()
    }

    @Test("after close every operation fails with closed, and nothing hangs")
    func operationsAfterClose() async throws {
        let connections = Connections()
        let queue = uniqueName("amqp-closed")
        let connection = try await connections.connect("closed", topology: AMQPTopology(queues: [AMQPQueue(queue, durable: false, autoDelete: true)]))
        let consumer = try await connection.consume(queue: queue, prefetch: 1)
        let collector = Collector(consumer)
        try await connection.publish(AMQPMessage("first"), exchange: "", routingKey: queue).wait()
        let delivery = try await collector.waitForCount(1)[0]
        let confirmation = try await connection.publish(AMQPMessage("during close"), exchange: "", routingKey: queue)
        await connection.close()
        try await confirmation.wait()  // close waits for outstanding confirms
        try await collector.waitForEnd().get()  // ended normally
        #expect(connection.state == .closed(nil))
        #expect(await amqpError { try await connection.declareQueue(AMQPQueue(queue)) }?.kind == .closed)
        #expect(await amqpError { _ = try await connection.publish(AMQPMessage("x"), exchange: "", routingKey: queue) }?.kind == .closed)
        #expect(await amqpError { _ = try await connection.consume(queue: queue, prefetch: 1) }?.kind == .closed)
        #expect(throws: AMQPError.self) { try delivery.ack() }
        try await consumer.cancel()
        await connection.close()  // idempotent
        var states: [AMQPConnectionState] = []
        for await state in connection.stateChanges() { states.append(state) }
        #expect(states == [.closed(nil)])
    }

    @Test("names longer than 255 bytes are refused before anything is sent")
    func longNames() async throws {
        let connections = Connections()
        let connection = try await connections.connect("long")
        let long = String(repeating: "q", count: 256)
        #expect(await amqpError { try await connection.declareQueue(AMQPQueue(long)) }?.kind == .invalidArgument)
        #expect(await amqpError { _ = try await connection.publish(AMQPMessage("x"), exchange: "", routingKey: long) }?.kind == .invalidArgument)
        #expect(connection.state == .connected)
        await connections.closeAll()
    }
}
