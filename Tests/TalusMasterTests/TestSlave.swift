// A scripted slave for the master's tests: it speaks the slave side of DESIGN §6 over the real
// broker — consumes parts with manual acks and a prefetch equal to its capacity, reports
// part-started, progress, results, crashes with files, part-ended (acking the part only after
// its end is confirmed by the broker), heartbeats, and obeys cancel-job and drain-slave control
// messages. Knobs: send every event twice, fail parts, go silent, die without acking.

import AMQP
import BSON
import Foundation
import Logging
import Synchronization
import TalusCore
import TalusMaster
import TalusModel
import TalusTestSupport

final class TestSlave: Sendable {
    struct Crash: Sendable {
        /// The raw signature of the crash a part reports (addresses may differ between parts).
        var signature: @Sendable (Int) -> String
        /// A sample file sent in chunks before the crash (nil: none).
        var file: [UInt8]?
        /// How many crashes each part reports.
        var perPart = 1
    }

    struct Behavior: Sendable {
        /// Publish every event twice (a slave retrying its publishes).
        var duplicateEvents = false
        /// How long a part "runs" between part-started and its end.
        var work: Duration = .milliseconds(20)
        /// Progress units per part (one event); 0 sends none.
        var progress = 1
        /// Results per part.
        var results = 1
        /// A reason to fail the part, or nil to succeed.
        var failure: @Sendable (PartMessage) -> String? = { _ in nil }
        var crash: Crash?
        var heartbeat: Duration = .milliseconds(300)
    }

    struct Stats: Sendable {
        var received = 0
        var acked = 0
        var skipped = 0
        var started: [String] = []
        var control: [ControlMessage] = []
        var running: [String: SlaveDocument.RunningPart] = [:]
        var cancelled: Set<ObjectId> = []
        var draining = false
        var silent = false
        var dead = false
        var eventsSent = 0
    }

    let uuid = UUID().uuidString
    let url: String
    let names: AMQPNames
    let hostname: String
    let capacity: Int
    let behavior: Behavior
    private let state = Mutex(Stats())
    private let connections = Mutex<[AMQPConnection]>([])
    private let loops = Mutex<[Task<Void, Never>]>([])

    init(url: String, names: AMQPNames, hostname: String, capacity: Int, behavior: Behavior) {
        self.url = url
        self.names = names
        self.hostname = hostname
        self.capacity = capacity
        self.behavior = behavior
    }

    var stats: Stats { state.withLock { $0 } }

    private var publisher: AMQPConnection? { connections.withLock { $0.first } }

    func start() async throws {
        let logger = Logger(label: "test.slave")
        let publisher = try await AMQPConnection.connect(try AMQPConfiguration(url: url, connectionName: "test-slave-pub"), logger: logger)
        let consumer = try await AMQPConnection.connect(
            try AMQPConfiguration(url: url, connectionName: "test-slave-sub"),
            topology: MasterTopology.slave(names), logger: logger)
        connections.withLock { $0 = [publisher, consumer] }
        let control = try await consumer.declareQueue(AMQPQueue("", durable: false, exclusive: true, autoDelete: true))
        try await consumer.bind(AMQPBinding(queue: control.name, exchange: names.controlExchange))
        let controlConsumer = try await consumer.consume(queue: control.name, prefetch: 10)
        let parts = try await consumer.consume(queue: names.partsQueue("default"), prefetch: UInt16(capacity))
        try await send(source: nil, body: .slaveOnline(info()))

        let controlLoop = Task {
            do {
                for try await delivery in controlConsumer {
                    if let message = try? TalusJSON.decoder().decode(ControlMessage.self, from: Data(delivery.body)) {
                        state.withLock { s in
                            s.control.append(message)
                            if message.type == .cancelJob, let job = message.job { s.cancelled.insert(job) }
                            if message.type == .drainSlave, message.slave == uuid { s.draining = true }
                        }
                    }
                    try? delivery.ack()
                }
            } catch {}
        }
        let partsLoop = Task {
            await withDiscardingTaskGroup { group in
                do {
                    for try await delivery in parts {
                        group.addTask { await self.handle(delivery) }
                    }
                } catch {}
            }
        }
        let heartbeatLoop = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: behavior.heartbeat)
                if state.withLock({ $0.silent || $0.dead }) { continue }
                try? await send(source: nil, body: .heartbeat(info()))
            }
        }
        loops.withLock { $0 = [controlLoop, partsLoop, heartbeatLoop] }
    }

    func info() -> SlaveInfo {
        let (running, draining) = state.withLock { (Array($0.running.values), $0.draining) }
        return SlaveInfo(uuid: uuid, hostname: hostname, address: "127.0.0.1", version: "test",
                         capacity: .init(vms: capacity, memoryMB: 4096), running: running, draining: draining)
    }

    /// Publishes one event (twice with `duplicateEvents`) and waits for the broker's confirm.
    func send(source: EventSource?, body: EventBody) async throws {
        guard let publisher, !state.withLock({ $0.silent || $0.dead }) else { return }
        let message = EventMessage(slave: uuid, source: source, body: body)
        let bytes = Array(try TalusJSON.encoder().encode(message))
        let copies = behavior.duplicateEvents ? 2 : 1
        for _ in 0..<copies {
            try await publisher.publish(AMQPMessage(body: bytes, properties: AMQPProperties(contentType: "application/json")),
                                        exchange: "", routingKey: names.eventsQueue).wait()
        }
        state.withLock { $0.eventsSent += copies }
    }

    private func handle(_ delivery: AMQPDelivery) async {
        guard let part = try? TalusJSON.decoder().decode(PartMessage.self, from: Data(delivery.body)) else {
            try? delivery.reject(requeue: false)
            return
        }
        let skip = state.withLock { s -> Bool in
            s.received += 1
            return s.cancelled.contains(part.job)
        }
        if skip {
            // A part of a cancelled job: dropped without running it.
            try? delivery.ack()
            state.withLock { $0.skipped += 1; $0.acked += 1 }
            return
        }
        let run = UUID().uuidString
        var seq = 0
        func emit(_ body: EventBody) async throws {
            seq += 1
            try await send(source: EventSource(job: part.job, idx: part.idx, attempt: part.attempt, run: run, seq: seq), body: body)
        }
        state.withLock { s in
            s.started.append("\(part.job.hex):\(part.idx):\(part.attempt)")
            s.running[run] = .init(job: part.job, idx: part.idx, attempt: part.attempt, run: run, since: bsonNow())
        }
        defer { _ = state.withLock { $0.running.removeValue(forKey: run) } }
        do {
            try await emit(.partStarted)
            // "Run": until the work is done or the job is cancelled; a silent slave hangs.
            let clock = ContinuousClock()
            let until = clock.now.advanced(by: behavior.work)
            var cancelled = false
            while clock.now < until || state.withLock({ $0.silent }) {
                if state.withLock({ $0.dead }) { return }
                if state.withLock({ $0.cancelled.contains(part.job) }) { cancelled = true; break }
                try await Task.sleep(for: .milliseconds(10))
            }
            if state.withLock({ $0.dead }) { return }
            if cancelled {
                try await emit(.partEnded(outcome: .cancelled, reason: "the job was cancelled", exitCode: nil, serialTail: nil))
            } else {
                if behavior.progress > 0 { try await emit(.report(.progress(amount: behavior.progress))) }
                for i in 0..<behavior.results {
                    try await emit(.report(.result(kind: "stats", data: ["idx": .int64(Int64(part.idx)), "n": .int64(Int64(i))], files: [])))
                }
                if let crash = behavior.crash {
                    for c in 0..<crash.perPart {
                        var fileName: String?
                        if let bytes = crash.file {
                            fileName = "crash-\(part.idx)-\(c)"
                            var offset = 0
                            repeat {
                                let end = min(bytes.count, offset + FileChunk.chunkSize)
                                let last = end == bytes.count
                                try await emit(.report(.file(FileChunk(
                                    name: fileName!, offset: Int64(offset), data: Data(bytes[offset..<end]), last: last,
                                    size: last ? Int64(bytes.count) : nil, sha256: last ? hexString(sha256(bytes)) : nil))))
                                offset = end
                            } while offset < bytes.count
                        }
                        try await emit(.report(.crash(signature: crash.signature(part.idx), data: ["idx": .int64(Int64(part.idx))], file: fileName)))
                    }
                }
                try await emit(.report(.log(level: "info", message: "part \(part.idx) done")))
                if let reason = behavior.failure(part) {
                    try await emit(.partEnded(outcome: .failure, reason: reason, exitCode: 3, serialTail: "tool: \(reason)"))
                } else {
                    try await emit(.partEnded(outcome: .success, reason: nil, exitCode: 0, serialTail: nil))
                }
            }
            // A slave that went silent meanwhile holds the message until it dies.
            while state.withLock({ $0.silent && !$0.dead }) { try await Task.sleep(for: .milliseconds(20)) }
            if state.withLock({ $0.dead }) { return }
            // Acked only after the end was reported (and confirmed by the broker).
            try delivery.ack()
            state.withLock { $0.acked += 1 }
        } catch {
            // Connection trouble or death: not acked, RabbitMQ redelivers.
        }
    }

    /// Stops sending anything (heartbeats, events) and hangs its parts, holding their messages.
    func goSilent() { state.withLock { $0.silent = true } }

    /// Dies without acking: its connections close and the broker redelivers its parts.
    func die() async {
        state.withLock { $0.dead = true }
        await shutdown()
    }

    /// Stops (tests' cleanup).
    func stop() async {
        state.withLock { $0.dead = true }
        await shutdown()
    }

    private func shutdown() async {
        for loop in loops.withLock({ $0 }) { loop.cancel() }
        for connection in connections.withLock({ $0 }) { await connection.close() }
        for loop in loops.withLock({ $0 }) { await loop.value }
    }
}
