// AMQPTests: helpers for tests against the real broker (TALUS_TEST_AMQP_URL, or a private
// one from TalusTestSupport.PrivateRabbitMQ).

import AMQP
import Synchronization
import TalusTestSupport

extension AMQPReconnectPolicy {
    /// Quick retries, for tests that restart the broker.
    static let fast = AMQPReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(500))
}

/// Connections to the shared test broker (or `url`), closed by `closeAll()`.
final class Connections: Sendable {
    private let opened = Mutex<[AMQPConnection]>([])

    func connect(
        _ name: String, url: String? = nil, topology: AMQPTopology = AMQPTopology(), heartbeatSeconds: UInt16 = 30,
        reconnect: AMQPReconnectPolicy = .fast, maxInFlight: Int = 1000
    ) async throws -> AMQPConnection {
        let configuration = try AMQPConfiguration(
            url: try url ?? TestEnvironment.amqpURL(), heartbeatSeconds: heartbeatSeconds,
            connectionName: uniqueName(name), connectTimeout: .seconds(5), rpcTimeout: .seconds(15),
            reconnect: reconnect, maxInFlightPublishes: maxInFlight)
        let connection = try await AMQPConnection.connect(configuration, topology: topology)
        opened.withLock { $0.append(connection) }
        return connection
    }

    func closeAll() async {
        for connection in opened.withLock({ $0 }) { await connection.close() }
    }
}

/// Consumes in a background task, recording every delivery; the test settles them.
final class Collector: Sendable {
    private struct State {
        var deliveries: [AMQPDelivery] = []
        var settled = 0
        /// Unsettled deliveries (including the new one) when each delivery arrived.
        var unsettledAtArrival: [Int] = []
        var ended: Result<Void, any Error>?
    }

    private final class Box: Sendable {
        let state = Mutex(State())
    }

    private let box = Box()
    private let task = Mutex<Task<Void, Never>?>(nil)
    let autoAck: Bool

    init(_ consumer: AMQPConsumer, autoAck: Bool = false) {
        self.autoAck = autoAck
        let box = self.box
        let task = Task {
            do {
                for try await delivery in consumer {
                    box.state.withLock { state in
                        state.deliveries.append(delivery)
                        state.unsettledAtArrival.append(state.deliveries.count - state.settled)
                    }
                    if autoAck {
                        box.state.withLock { $0.settled += 1 }
                        try delivery.ack()
                    }
                }
                box.state.withLock { $0.ended = .success(()) }
            } catch {
                box.state.withLock { $0.ended = .failure(error) }
            }
        }
        self.task.withLock { $0 = task }
    }

    var deliveries: [AMQPDelivery] { box.state.withLock { $0.deliveries } }
    var count: Int { box.state.withLock { $0.deliveries.count } }
    var unsettled: Int { box.state.withLock { $0.deliveries.count - $0.settled } }
    var maxUnsettledAtArrival: Int { box.state.withLock { $0.unsettledAtArrival.max() ?? 0 } }
    var ended: Result<Void, any Error>? { box.state.withLock { $0.ended } }

    /// Counts a settlement before it is sent, so a delivery it lets through never looks
    /// like one beyond the prefetch.
    func ack(_ delivery: AMQPDelivery) throws {
        box.state.withLock { $0.settled += 1 }
        try delivery.ack()
    }

    func resetArrivalRecord() { box.state.withLock { $0.unsettledAtArrival = [] } }

    /// Waits until at least `count` deliveries arrived; returns them.
    @discardableResult
    func waitForCount(_ count: Int, timeout: Duration = .seconds(30)) async throws -> [AMQPDelivery] {
        try await waitUntil("\(count) deliveries (have \(self.count))", timeout: timeout) { self.count >= count }
        return deliveries
    }

    /// Waits until the sequence ended; returns how.
    func waitForEnd(timeout: Duration = .seconds(30)) async throws -> Result<Void, any Error> {
        try await waitFor("the delivery sequence to end", timeout: timeout) { self.ended }
    }

    /// Stops iterating (the consumer's channel is closed; unsettled messages are requeued).
    func stop() { task.withLock { $0?.cancel() } }
}

/// Publishes `count` persistent messages with ids `first..<first+count` and waits for all
/// confirms.
func publishConfirmed(
    _ connection: AMQPConnection, count: Int, first: Int = 0, exchange: String = "", routingKey: String,
    priority: (Int) -> UInt8? = { _ in nil }
) async throws {
    var confirmations: [PublishConfirmation] = []
    for index in first..<(first + count) {
        let message = AMQPMessage(
            "{\"id\":\(index)}",
            properties: AMQPProperties(contentType: "application/json", priority: priority(index), messageId: String(index)))
        confirmations.append(try await connection.publish(message, exchange: exchange, routingKey: routingKey))
    }
    try await confirmations.waitForAll().get()
}

extension AMQPDelivery {
    /// The numeric message id the helpers publish with.
    var id: Int { Int(properties.messageId ?? "") ?? -1 }
}

/// Runs `body` and returns the AMQPError it throws (failing the test if it throws none).
func amqpError(_ body: () async throws -> Void) async -> AMQPError? {
    do {
        try await body()
        return nil
    } catch let error as AMQPError {
        return error
    } catch {
        return AMQPError(.library, "unexpected error type: \(error)")
    }
}
