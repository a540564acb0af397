// The AMQP side of the master (DESIGN §6): the topology it declares, and publishing parts and
// control messages with publisher confirms.

import AMQP
import BSON
import Foundation
import Logging
import Synchronization
import TalusModel

/// Exchanges and queues of a Talus namespace, declared identically by master and slaves (a
/// declaration with other arguments fails with 406 PRECONDITION_FAILED).
public enum MasterTopology {
    /// Dead-letter exchange + queue, parts exchange, control exchange, events queue.
    public static func base(_ names: AMQPNames) -> AMQPTopology {
        AMQPTopology(
            exchanges: [
                AMQPExchange(names.deadLetterExchange, kind: .fanout),
                AMQPExchange(names.partsExchange, kind: .direct),
                AMQPExchange(names.controlExchange, kind: .fanout),
            ],
            queues: [AMQPQueue(names.deadLetterQueue), eventsQueue(names)],
            bindings: [AMQPBinding(queue: names.deadLetterQueue, exchange: names.deadLetterExchange)])
    }

    /// `<ns>.events`: durable, unreadable messages dead-lettered.
    public static func eventsQueue(_ names: AMQPNames) -> AMQPQueue {
        var q = AMQPQueue(names.eventsQueue)
        q.deadLetterExchange = names.deadLetterExchange
        return q
    }

    /// `<ns>.parts.<queue>`: durable, priorities 0…10, unreadable parts dead-lettered.
    public static func partsQueue(_ names: AMQPNames, _ queue: String) -> AMQPQueue {
        var q = AMQPQueue(names.partsQueue(queue))
        q.maxPriority = AMQPNames.maxPriority
        q.deadLetterExchange = names.deadLetterExchange
        return q
    }

    /// Everything a slave consuming `queues` declares: the base topology and those parts queues.
    public static func slave(_ names: AMQPNames, queues: [String] = ["default"]) -> AMQPTopology {
        var t = base(names)
        for q in queues {
            let p = parts(names, q)
            t.queues += p.queues
            t.bindings += p.bindings
        }
        return t
    }

    /// The parts queue of `queue` and its binding (routing key = the queue name).
    public static func parts(_ names: AMQPNames, _ queue: String) -> AMQPTopology {
        AMQPTopology(queues: [partsQueue(names, queue)],
                     bindings: [AMQPBinding(queue: names.partsQueue(queue), exchange: names.partsExchange, routingKey: queue)])
    }
}

/// Publishes parts and control messages on the master's publisher connection.
final class MasterPublisher: Sendable {
    let connection: AMQPConnection
    let names: AMQPNames
    let logger: Logger
    private let declaredQueues = Mutex<Set<String>>([])

    init(connection: AMQPConnection, names: AMQPNames, logger: Logger) {
        self.connection = connection
        self.names = names
        self.logger = logger
    }

    /// Declares the parts queue of `queue` once per process.
    func ensurePartsQueue(_ queue: String) async throws {
        if declaredQueues.withLock({ $0.contains(queue) }) { return }
        try await connection.declare(MasterTopology.parts(names, queue))
        _ = declaredQueues.withLock { $0.insert(queue) }
    }

    /// Publishes `parts` of one job (pipelined) and returns which were confirmed.
    func publish(parts: [PartMessage], queue: String, priority: Int) async -> [Bool] {
        let encoder = TalusJSON.encoder()
        var confirmations: [PublishConfirmation?] = []
        confirmations.reserveCapacity(parts.count)
        for part in parts {
            do {
                let body = try encoder.encode(part)
                let properties = AMQPProperties(
                    contentType: "application/json", deliveryMode: .persistent,
                    priority: AMQPNames.amqpPriority(jobPriority: priority),
                    messageId: "\(part.job.hex):\(part.idx):\(part.attempt)", type: "part")
                confirmations.append(try await connection.publish(
                    AMQPMessage(body: Array(body), properties: properties), exchange: names.partsExchange, routingKey: queue))
            } catch {
                logger.warning("cannot publish a part", metadata: [
                    "job": "\(part.job.hex)", "idx": "\(part.idx)", "error": "\(error)",
                ])
                confirmations.append(nil)
            }
        }
        var ok: [Bool] = []
        ok.reserveCapacity(parts.count)
        for (part, confirmation) in zip(parts, confirmations) {
            guard let confirmation else { ok.append(false); continue }
            switch await confirmation.result() {
            case .success: ok.append(true)
            case .failure(let error):
                logger.warning("part not confirmed by the broker", metadata: [
                    "job": "\(part.job.hex)", "idx": "\(part.idx)", "error": "\(error)",
                ])
                ok.append(false)
            }
        }
        let confirmed = ok.count(where: { $0 })
        MasterMetrics.partsPublished.increment(by: confirmed)
        if confirmed < ok.count { MasterMetrics.partsPublishFailed.increment(by: ok.count - confirmed) }
        return ok
    }

    /// Broadcasts a control message to every slave and waits for the broker's confirm.
    func broadcast(_ message: ControlMessage) async throws {
        let body = try TalusJSON.encoder().encode(message)
        let properties = AMQPProperties(contentType: "application/json", deliveryMode: .persistent, type: message.type.rawValue)
        try await connection.publish(AMQPMessage(body: Array(body), properties: properties),
                                     exchange: names.controlExchange, routingKey: "").wait()
        logger.info("control message broadcast", metadata: [
            "type": "\(message.type.rawValue)", "job": "\(message.job?.hex ?? "-")", "slave": "\(message.slave ?? "-")",
        ])
    }
}
