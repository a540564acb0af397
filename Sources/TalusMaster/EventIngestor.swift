// Slave events → MongoDB (DESIGN §6): `<ns>.events` consumed with manual acks, in batches,
// grouped per run. Duplicates are dropped per run (`RunDocument.accept(seq:)`), every other
// write is idempotent (ids derived from (run, seq), crash counts guarded by the applied event
// keys), and deliveries are acked only after the writes. Unreadable messages and events of
// unknown jobs are rejected to the dead-letter queue.
//
// The ingester is the only writer of runs, of parts' run-driven states and of a job's
// accounting (`counted`, `progress`, `parts.done`, `parts.failed`, `errors`): the slave sweep and
// the job reconciler hand it commands instead of writing those themselves. Job accounting is
// incremental per batch and written before the runs (see `PartEventBatch.write`); it is
// recomputed from runs and parts when a master becomes leader, before anything reconciles, and
// after a failed batch (the job reconciler waits for that), which repairs a crash or failure
// between a batch's job writes and its run writes.

import AMQP
import BSON
import Foundation
import Logging
import Mongo
import Synchronization
import TalusModel

/// Work for the ingester between event batches.
enum IngestCommand: Sendable {
    /// These slaves went silent: mark them offline, their running runs lost.
    case slavesOffline([String], reason: String)
    /// Recompute a job's part counters (and with `progress`, its progress) from parts and runs.
    case recompute(ObjectId, progress: Bool)
}

final class EventIngestor: Sendable {
    struct Limits: Sendable {
        var partAttempts: Int
        var maxErrors: Int
        var crashSamples: Int
        var batchSize: Int
        var linger: Duration
    }

    enum Item: Sendable {
        case delivery(AMQPDelivery)
        case command(IngestCommand)
        case failed(any Error)
    }

    let store: MasterStore
    let connection: AMQPConnection
    let names: AMQPNames
    let publisher: MasterPublisher
    let slaves: SlaveTracker
    let limits: Limits
    let hint: @Sendable (WorkKey) -> Void
    let logger: Logger
    private let inbox = Inbox<Item>()
    /// Jobs whose accounting must be recomputed (a batch touching them failed).
    private let dirtyJobs = Mutex<Set<ObjectId>>([])
    /// When a cancel was last re-broadcast for a job whose parts still start.
    private let rebroadcasts = JobPacer()

    init(store: MasterStore, connection: AMQPConnection, names: AMQPNames, publisher: MasterPublisher,
         slaves: SlaveTracker, limits: Limits, hint: @escaping @Sendable (WorkKey) -> Void, logger: Logger) {
        self.store = store
        self.connection = connection
        self.names = names
        self.publisher = publisher
        self.slaves = slaves
        self.limits = limits
        self.hint = hint
        self.logger = logger
    }

    /// Queues a command for the ingestion loop.
    func post(_ command: IngestCommand) { inbox.push(.command(command)) }

    /// Consumes events until the task is cancelled (unacked deliveries go back to the queue) or
    /// the consumer fails (thrown). Call ``recomputeActiveJobs()`` first.
    func run() async throws {
        let prefetch = UInt16(clamping: max(limits.batchSize * 2, 64))
        let consumer = try await connection.consume(queue: names.eventsQueue, prefetch: prefetch)
        logger.info("ingesting slave events", metadata: ["queue": "\(names.eventsQueue)"])
        let inbox = self.inbox
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    for try await delivery in consumer { inbox.push(.delivery(delivery)) }
                    if !Task.isCancelled { inbox.push(.failed(IngestError("the events consumer ended"))) }
                } catch {
                    if !Task.isCancelled { inbox.push(.failed(error)) }
                }
            }
            defer { group.cancelAll() }
            while let batch = await inbox.next(max: limits.batchSize, linger: limits.linger) {
                // A batch that started writes all of them (and acks) even when the master stops.
                try await Task { try await self.process(batch) }.value
            }
        }
    }

    // MARK: Batches

    func process(_ batch: [Item]) async throws {
        let clock = ContinuousClock()
        let start = clock.now
        var deliveries: [AMQPDelivery] = []
        var commands: [IngestCommand] = []
        for item in batch {
            switch item {
            case .delivery(let d): deliveries.append(d)
            case .command(let c): commands.append(c)
            case .failed(let error): throw error
            }
        }
        for command in commands { await handle(command) }
        await recomputeDirtyJobs()
        guard !deliveries.isEmpty else { return }

        // Decode; unreadable messages go to the dead-letter queue at once.
        var slaveEvents: [EventMessage] = []
        var partEvents: [(EventMessage, AMQPDelivery)] = []
        var keep: [AMQPDelivery] = []
        let decoder = TalusJSON.decoder()
        for delivery in deliveries {
            do {
                let message = try decoder.decode(EventMessage.self, from: Data(delivery.body))
                MasterMetrics.events(message.body.type).increment()
                if message.source == nil {
                    slaveEvents.append(message)
                } else {
                    partEvents.append((message, delivery))
                }
                keep.append(delivery)
            } catch let error as MessageVersionError {
                deadLetter(delivery, reason: "version", detail: "\(error)")
            } catch {
                deadLetter(delivery, reason: "malformed", detail: "\(error)")
            }
        }

        var touched: Set<ObjectId> = []
        do {
            let offline = try await slaves.apply(slaveEvents)
            if !offline.isEmpty {
                try await slavesOffline(offline, reason: "the slave reported that it stopped", markSlaves: false)
            }
            if !partEvents.isEmpty {
                var work = try await PartEventBatch.load(partEvents.map(\.0), store: store)
                for (message, delivery) in partEvents where work.jobs[message.source!.job] == nil {
                    deadLetter(delivery, reason: "unknown_job", detail: "no job \(message.source!.job.hex)")
                }
                touched = Set(work.jobs.keys)
                work.apply(limits: limits)
                try await work.resolveFiles(store: store)
                try await write(work)
                for job in work.completed { hint(WorkKey(.jobs, job)) }
                for job in work.rebroadcast { await rebroadcastCancel(job) }
                MasterMetrics.eventsDuplicate.increment(by: work.duplicates)
            }
        } catch where Task.isCancelled {
            // Stopping: the batch goes back to the queue; its replay is idempotent.
            dirtyJobs.withLock { $0.formUnion(touched) }
            for delivery in keep where !delivery.isSettled { try? delivery.nack(requeue: true) }
            throw CancellationError()
        } catch {
            MasterMetrics.eventBatchErrors.increment()
            logger.error("event batch failed: its events go back to the queue", metadata: [
                "events": "\(keep.count)", "error": "\(error)",
            ])
            dirtyJobs.withLock { $0.formUnion(touched) }
            for delivery in keep where !delivery.isSettled { try? delivery.nack(requeue: true) }
            await recomputeDirtyJobs()
            try await Task.sleep(for: .milliseconds(200))  // do not spin on a failing database
            return
        }
        for delivery in keep where !delivery.isSettled {
            do {
                try delivery.ack()
            } catch {
                // Stale (the channel died): the broker redelivers; the replay is dropped as duplicates.
                logger.debug("ack failed", metadata: ["error": "\(error)"])
            }
        }
        MasterMetrics.eventBatchSeconds.recordNanoseconds((clock.now - start).nanoseconds)
    }

    /// Writes a batch; then marks the jobs whose accounting changed under it for a recompute,
    /// refreshes the part counters of jobs that no longer dispatch (their reconciler stopped
    /// keeping them), and hints the jobs the batch touched.
    private func write(_ work: PartEventBatch) async throws {
        let conflicts = try await work.write(store: store, limits: limits, logger: logger)
        dirtyJobs.withLock { $0.formUnion(conflicts) }
        for job in work.settledJobs.subtracting(conflicts) { await handle(.recompute(job, progress: false)) }
        for job in work.hints { hint(WorkKey(.jobs, job)) }
    }

    /// True while a job's accounting may be wrong (a batch touching it failed halfway) until it
    /// is recomputed: the job reconciler does not decide anything about it meanwhile.
    func accountingPending(_ job: ObjectId) -> Bool { dirtyJobs.withLock { $0.contains(job) } }

    /// Recomputes the jobs marked dirty; those that fail stay marked.
    private func recomputeDirtyJobs() async {
        let dirty = dirtyJobs.withLock { $0 }
        for job in dirty {
            do {
                try await recompute(job, progress: true)
                _ = dirtyJobs.withLock { $0.remove(job) }
            } catch {
                logger.warning("job accounting recompute failed: retrying", metadata: ["job": "\(job.hex)", "error": "\(error)"])
            }
        }
    }

    private func deadLetter(_ delivery: AMQPDelivery, reason: String, detail: String) {
        MasterMetrics.deadLettered(reason).increment()
        logger.warning("event dead-lettered", metadata: [
            "reason": "\(reason)", "detail": "\(bounded(detail, 300))", "bytes": "\(delivery.body.count)",
            "body": "\(bounded(delivery.text, 200))",
        ])
        do {
            try delivery.reject(requeue: false)
        } catch {
            logger.debug("reject failed", metadata: ["error": "\(error)"])
        }
    }

    /// Re-broadcasts `cancel-job` (at most every 5 s per job) when parts of a job that is not
    /// running still start: a slave missed the first broadcast.
    private func rebroadcastCancel(_ job: ObjectId) async {
        guard rebroadcasts.take(job, pause: .seconds(5)) else { return }
        do {
            try await publisher.broadcast(ControlMessage(.cancelJob, job: job))
        } catch {
            logger.warning("cannot re-broadcast cancel", metadata: ["job": "\(job.hex)", "error": "\(error)"])
        }
    }

    // MARK: Commands

    private func handle(_ command: IngestCommand) async {
        do {
            switch command {
            case .slavesOffline(let uuids, let reason):
                try await slavesOffline(uuids, reason: reason, markSlaves: true)
            case .recompute(let job, let progress):
                try await recompute(job, progress: progress)
            }
        } catch where Task.isCancelled {
            return
        } catch {
            logger.warning("ingester command failed", metadata: ["command": "\(command)", "error": "\(error)"])
            if case .recompute(let job, _) = command { _ = dirtyJobs.withLock { $0.insert(job) } }
        }
    }

    /// Marks the slaves offline and their running runs lost: progress taken back, parts queued
    /// again (RabbitMQ redelivers their messages) or cancelled when the job no longer runs.
    func slavesOffline(_ uuids: [String], reason: String, markSlaves: Bool) async throws {
        if markSlaves { try await slaves.markOffline(uuids, reason: reason) }
        let runs = try await store.runs.find([
            "slave": ["$in": .array(uuids.map { .string($0) })], "state": "running",
        ])
        guard !runs.isEmpty else { return }
        var work = try await PartEventBatch.load(runs: runs, store: store)
        work.loseRuns(runs.map(\.id), reason: "slave went offline: \(reason)")
        try await write(work)
        logger.warning("runs of offline slaves lost", metadata: ["runs": "\(runs.count)", "slaves": "\(uuids.joined(separator: ","))"])
    }

    /// Recomputes a job's part counters, and with `progress` its `counted`/`progress`, from
    /// the parts and runs collections.
    func recompute(_ job: ObjectId, progress: Bool) async throws {
        guard let doc = try await store.jobs.findOne(["_id": .objectId(job)],
                                                     options: FindOptions(projection: ["limit": 1, "status": 1])) else { return }
        let groups = try await store.raw(.parts).aggregate([
            ["$match": ["job": .objectId(job)]],
            ["$group": ["_id": "$status.name", "n": ["$sum": 1]]],
        ])
        var byState: [String: Int] = [:]
        for g in groups { if let s = g["_id"]?.stringValue { byState[s] = g["n"]?.intValue ?? 0 } }
        var set: BSONDocument = [
            "parts.queued": .int64(Int64(byState["queued", default: 0] + byState["retry", default: 0])),
            "parts.running": .int64(Int64(byState["running", default: 0])),
            "parts.done": .int64(Int64(byState["done", default: 0])),
            "parts.failed": .int64(Int64(byState["failed", default: 0])),
            "updated": .datetime(bsonNow()),
        ]
        if progress {
            let sums = try await store.raw(.runs).aggregate([
                ["$match": ["job": .objectId(job), "state": ["$in": ["running", "finished"]]]],
                ["$group": ["_id": .null, "p": ["$sum": "$progress"]]],
            ])
            let counted = sums.first?["p"]?.intValue ?? 0
            let limit = doc["limit"]?.intValue ?? -1
            set["counted"] = .int64(Int64(counted))
            set["progress"] = .int64(Int64(limit < 0 ? counted : min(limit, counted)))
        }
        try await store.jobs.updateOne(["_id": .objectId(job)], ["$set": .document(set)])
        logger.debug("job accounting recomputed", metadata: ["job": "\(job.hex)", "progress": "\(set["progress"]?.description ?? "-")"])
    }

    /// At the start of a leadership: recompute every running job (progress and parts) and the
    /// part counters of jobs being cancelled.
    func recomputeActiveJobs() async throws {
        let active = try await store.jobs.find(
            ["status.name": ["$nin": .array(JobState.allCases.filter(\.isTerminal).map { .string($0.rawValue) })]],
            options: FindOptions(projection: ["status": 1, "observed": 1]))
        for doc in active {
            guard let id = doc["_id"]?.objectIdValue else { continue }
            let state = doc["observed"]?.stringValue ?? doc["status"]?["name"]?.stringValue
            try await recompute(id, progress: state == JobState.running.rawValue)
        }
        if !active.isEmpty { logger.info("job accounting recomputed", metadata: ["jobs": "\(active.count)"]) }
    }
}

struct IngestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
