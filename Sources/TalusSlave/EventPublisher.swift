// Events to the master (DESIGN §6): every event is published persistently, with publisher
// confirms, and republished until the broker confirms it — the master drops duplicates by
// (run, seq), so at-least-once is what the slave must give. Part events carry a per-run sequence.

import AMQP
import Foundation
import Logging
import Synchronization
import TalusModel

/// Where the slave's events go.
public protocol EventSink: Sendable {
    /// Publishes `event` and returns once the broker confirmed it, retrying on its own until then.
    /// Throws only when the sink was closed or the calling task cancelled.
    func publish(_ event: EventMessage) async throws
    /// Publishes without waiting for the confirm (heartbeats: a lost one is replaced by the next).
    func publishUnconfirmed(_ event: EventMessage) async
}

/// Events to a queue on the broker through the default exchange.
public final class AMQPEventSink: EventSink {
    public let connection: AMQPConnection
    public let queue: String
    let logger: Logger

    /// - Parameter queue: `talus.events` in production; tests use queues of their own.
    public init(connection: AMQPConnection, queue: String = AMQPNames.eventsQueue, logger: Logger = Logger(label: "talus.slave.events")) {
        self.connection = connection
        self.queue = queue
        self.logger = logger
    }

    func message(_ event: EventMessage) throws -> AMQPMessage {
        let body = try TalusJSON.encoder().encode(event)
        let id = event.source.map { "\($0.run):\($0.seq)" }
        return AMQPMessage(body: Array(body), properties: AMQPProperties(
            contentType: "application/json", deliveryMode: .persistent, messageId: id, type: event.body.type, appId: "talus-slave"))
    }

    public func publish(_ event: EventMessage) async throws {
        let message = try message(event)
        var attempt = 0
        while true {
            try Task.checkCancellation()
            let outcome: Result<Void, AMQPError>
            do {
                outcome = await (try connection.publish(message, exchange: "", routingKey: queue, mandatory: true)).result()
            } catch {
                outcome = .failure(error)
            }
            switch outcome {
            case .success:
                return
            case .failure(let error) where error.kind == .closed || error.kind == .cancelled || error.kind == .invalidArgument:
                throw error
            case .failure(let error):
                attempt += 1
                let delay = Duration.milliseconds(min(5000, 50 << min(attempt, 7)))
                logger.warning("event not confirmed; publishing it again", metadata: [
                    "type": "\(event.body.type)", "error": "\(error)", "attempt": "\(attempt)"])
                try await Task.sleep(for: delay)
            }
        }
    }

    public func publishUnconfirmed(_ event: EventMessage) async {
        guard connection.state.isConnected, let message = try? message(event) else { return }
        _ = try? await connection.publish(message, exchange: "", routingKey: queue)
    }
}

/// The events of one run: numbered 1, 2, 3, … and published in that order (each confirmed
/// before the next is sent, so the master sees them in order unless a republish overtakes).
public final class RunEvents: Sendable {
    public let slave: String
    public let part: PartMessage
    public let run: String
    let sink: any EventSink
    private let seq = Mutex(0)

    public init(slave: String, part: PartMessage, run: String, sink: any EventSink) {
        self.slave = slave
        self.part = part
        self.run = run
        self.sink = sink
    }

    /// How many events were numbered so far.
    public var count: Int { seq.withLock { $0 } }

    /// Numbers `body` and publishes it, returning once confirmed. Calls must not overlap.
    public func emit(_ body: EventBody) async throws {
        let n = seq.withLock { s -> Int in s += 1; return s }
        let source = EventSource(job: part.job, idx: part.idx, attempt: part.attempt, run: run, seq: n)
        try await sink.publish(EventMessage(slave: slave, source: source, body: body))
    }
}
