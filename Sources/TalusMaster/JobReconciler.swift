// Jobs (DESIGN §3, §6): `run` → checks → `running` (or `failed` with the reason); parts
// dispatched in a bounded window; `finished` once progress reaches the limit; `failed` when too
// many parts failed; `cancel` → `cancelling` → control broadcast → `cancelled` once no part runs.
// Every status write is conditional on the status read, so a user request written meanwhile is
// never overwritten; it brings its own change event.

import BSON
import Foundation
import Logging
import Mongo
import Synchronization
import TalusModel

struct JobReconciler: DocumentReconciler {
    struct Limits: Sendable {
        var window: Int
        var partAttempts: Int
        var maxFailedParts: Int
        var maxErrors: Int
        /// How often a running job is looked at without a hint.
        var recheck: Duration = .seconds(5)
        /// How often a cancelling job re-broadcasts its cancel.
        var rebroadcast: Duration = .seconds(10)
        /// The shortest time between two dispatch rounds of one job.
        var dispatchInterval: Duration = .milliseconds(250)
    }

    let collection = TalusModel.Collection.jobs
    let maxConcurrent = 16
    let store: MasterStore
    let publisher: MasterPublisher
    let dispatcher: PartDispatcher
    let limits: Limits
    let ingest: @Sendable (IngestCommand) -> Void
    /// True while the ingester repairs a job's accounting.
    let accountingPending: @Sendable (ObjectId) -> Bool
    let logger: Logger
    /// When each job last had its cancel broadcast.
    let broadcasts = JobPacer()
    /// When each running job last had its parts counted and dispatched.
    let dispatches = JobPacer()
    let census = PartsCensus()
    /// Tool entry commands by "name@commit".
    let entries = EntryCache()

    init(store: MasterStore, publisher: MasterPublisher, slaves: SlaveTracker, limits: Limits,
         ingest: @escaping @Sendable (IngestCommand) -> Void, accountingPending: @escaping @Sendable (ObjectId) -> Bool,
         logger: Logger) {
        self.store = store
        self.publisher = publisher
        self.limits = limits
        self.ingest = ingest
        self.accountingPending = accountingPending
        self.logger = logger
        dispatcher = PartDispatcher(store: store, publisher: publisher, slaves: slaves, window: limits.window, logger: logger)
    }

    func pending() async throws -> [ObjectId] {
        try await store.jobs.find(
            ["status.name": ["$nin": .array(JobState.allCases.filter(\.isTerminal).map { .string($0.rawValue) })]],
            options: FindOptions(projection: ["_id": 1])
        ).compactMap { $0["_id"]?.objectIdValue }
    }

    func reconcile(_ id: ObjectId) async throws -> ReconcileOutcome {
        guard let raw = try await store.jobs.findOne(["_id": .objectId(id)]) else { return .done }
        let written = raw["status"]?["name"]?.stringValue
        switch StatusGuard.judge(JobState.self, written: written, observed: raw["observed"]?.stringValue) {
        case .refuse(let restore, let reason):
            try await refuse(id, written: written, restore: restore, reason: reason)
            return .done
        case .accept:
            break
        }
        let job: JobDocument
        do {
            job = try BSONDecoder().decode(JobDocument.self, from: raw)
        } catch {
            throw IngestError("job \(id.hex) cannot be read: \(error)")
        }
        try job.checkSchema()
        var log = logger
        log[metadataKey: "job"] = "\(id.hex)"
        switch job.status.name {
        case .run: return try await start(job, log: log)
        case .running: return try await running(job, log: log)
        case .cancel: return try await cancel(job, log: log)
        case .cancelling: return try await cancelling(job, log: log)
        case .finished, .cancelled, .failed:
            // An event batch that read the job just before it ended may have put a part back to
            // `queued` (its slave gave it back); nothing runs it now. The ingester hints the job
            // after such a batch.
            if try await cancelQueuedParts(id) > 0 { ingest(.recompute(id, progress: false)) }
            if job.observed != job.status.name {
                try await store.jobs.updateOne(["_id": .objectId(id), "status.name": .string(job.status.name.rawValue)],
                                               ["$set": ["observed": .string(job.status.name.rawValue)]])
            }
            return .done
        }
    }

    func giveUp(_ id: ObjectId, reason: String) async {
        do {
            try? await publisher.broadcast(ControlMessage(.cancelJob, job: id))
            try await cancelQueuedParts(id)
            let now = bsonNow()
            try await store.jobs.updateOne(
                ["_id": .objectId(id), "status.name": ["$nin": .array(JobState.allCases.filter(\.isTerminal).map { .string($0.rawValue) })]],
                ["$set": ["status": try BSONEncoder.value(Status(JobState.failed, reason: bounded(reason), since: now)),
                          "observed": .string(JobState.failed.rawValue), "updated": .datetime(now)],
                 "$push": ["errors": ["$each": [try BSONEncoder.value(JobError(reason: bounded(reason), at: now))],
                                      "$slice": .int64(Int64(-limits.maxErrors))]]])
            ingest(.recompute(id, progress: false))
            logger.error("job failed: the master gave up on it", metadata: ["job": "\(id.hex)", "reason": "\(reason)"])
        } catch {
            logger.error("cannot mark job failed", metadata: ["job": "\(id.hex)", "error": "\(error)"])
        }
    }

    // MARK: States

    private func start(_ job: JobDocument, log: Logger) async throws -> ReconcileOutcome {
        switch try await checkRunnable(job) {
        case .failure(let problem):
            if try await move(job, to: .failed, reason: problem.description) {
                log.warning("job cannot run", metadata: ["reason": "\(problem)"])
            }
        case .success:
            if try await move(job, to: .running, reason: nil) {
                log.info("job running", metadata: ["limit": "\(job.limit)", "priority": "\(job.priority)", "queue": "\(job.queue)"])
            }
        }
        return .done
    }

    private func running(_ read: JobDocument, log: Logger) async throws -> ReconcileOutcome {
        if accountingPending(read.id) { return .requeue(after: .milliseconds(500)) }
        if read.isComplete {
            try await end(read, as: .finished, reason: nil, log: log)
            return .done
        }
        // Counting a job's parts costs the database most when the job has many outstanding:
        // hints that come faster than that (an event batch hints every job it touched) are
        // served together, at least `dispatchInterval` apart and at most a quarter of the time
        // spent on rounds. The window keeps slaves supplied meanwhile.
        if let wait = dispatches.wait(read.id) { return .requeue(after: wait) }
        let began = ContinuousClock.now
        defer { dispatches.pause(read.id, for: max(limits.dispatchInterval, (ContinuousClock.now - began) * 3)) }
        // Parts first, then the job's accounting: the ingester writes a batch's accounting
        // before the parts that leave the outstanding set, so a part counted as finished here
        // always has its progress in the job read next (no part is published twice over).
        let live = try await dispatcher.live(read.id)
        guard let fresh = try await store.jobs.findOne(
            ["_id": .objectId(read.id)], options: FindOptions(projection: ["status": 1, "progress": 1, "parts": 1])),
            fresh["status"]?["name"]?.stringValue == JobState.running.rawValue else { return .done }
        var job = read
        job.progress = fresh["progress"]?.intValue ?? job.progress
        job.parts.done = fresh["parts"]?["done"]?.intValue ?? job.parts.done
        job.parts.failed = fresh["parts"]?["failed"]?.intValue ?? job.parts.failed
        if job.isComplete {
            try await end(job, as: .finished, reason: nil, log: log)
            return .done
        }
        let failed = job.parts.failed
        let everyPartFailed = failed > 0 && job.parts.done == 0 && live.outstanding == 0
        if failed > limits.maxFailedParts || everyPartFailed {
            let reasons = Array(Set(job.errors.suffix(20).map(\.reason))).sorted().prefix(5)
            let why = (everyPartFailed ? "every part failed" : "\(failed) parts failed (more than \(limits.maxFailedParts))")
                + " after \(limits.partAttempts) attempt\(limits.partAttempts == 1 ? "" : "s") each; reasons: "
                + reasons.joined(separator: "; ")
            try await end(job, as: .failed, reason: bounded(why), log: log)
            return .done
        }
        let image: PartImage
        switch try await imageChain(job.image) {
        case .success(let chain): image = chain
        case .failure(let problem):
            try await end(job, as: .failed, reason: problem.description, log: log)
            return .done
        }
        guard let entry = try await toolEntry(job) else {
            try await end(job, as: .failed, reason: "tool \"\(job.tool)\" is no longer recorded at commit \(job.toolCommit.prefix(12))", log: log)
            return .done
        }
        let published = try await dispatcher.dispatch(job, image: image, entry: entry, live: live)
        // Retried parts stay in the queued count (retry → queued); new ones join it.
        let queued = live.queued + live.retry.count + published.new
        census.update(job.id, PartCounts(queued: queued, running: live.running, done: job.parts.done, failed: job.parts.failed))
        if job.parts.queued != queued || job.parts.running != live.running {
            try await store.jobs.updateOne(
                ["_id": .objectId(job.id)],
                ["$set": ["parts.queued": .int64(Int64(queued)), "parts.running": .int64(Int64(live.running))]])
        }
        return .requeue(after: limits.recheck)
    }

    private func cancel(_ job: JobDocument, log: Logger) async throws -> ReconcileOutcome {
        try await publisher.broadcast(ControlMessage(.cancelJob, job: job.id))
        broadcasts.pause(job.id, for: limits.rebroadcast)
        try await cancelQueuedParts(job.id)
        if try await move(job, to: .cancelling, reason: job.status.reason) {
            log.info("job cancelling")
        }
        return .done
    }

    private func cancelling(_ job: JobDocument, log: Logger) async throws -> ReconcileOutcome {
        try await cancelQueuedParts(job.id)
        let running = try await store.raw(.parts).countDocuments(["job": .objectId(job.id), "status.name": "running"])
        census.update(job.id, running == 0 ? nil : PartCounts(running: running, done: job.parts.done, failed: job.parts.failed))
        if running == 0 {
            if try await move(job, to: .cancelled, reason: job.status.reason) {
                ingest(.recompute(job.id, progress: false))
                log.info("job cancelled")
            }
            return .done
        }
        if broadcasts.wait(job.id) == nil {
            try await publisher.broadcast(ControlMessage(.cancelJob, job: job.id))
            broadcasts.pause(job.id, for: limits.rebroadcast)
        }
        return .requeue(after: .seconds(1))
    }

    /// Stops a running job for good: cancel broadcast (leftover parts stop), queued parts
    /// dropped, then the terminal status.
    private func end(_ job: JobDocument, as state: JobState, reason: String?, log: Logger) async throws {
        try await publisher.broadcast(ControlMessage(.cancelJob, job: job.id))
        try await cancelQueuedParts(job.id)
        census.update(job.id, nil)
        if try await move(job, to: state, reason: reason) {
            ingest(.recompute(job.id, progress: false))
            if state == .failed {
                log.warning("job failed", metadata: ["reason": "\(reason ?? "")"])
            } else {
                log.info("job \(state.rawValue)", metadata: ["progress": "\(job.progress)", "limit": "\(job.limit)"])
            }
        }
    }

    /// Queued and retrying parts of a job that stops: slaves skip them, the master marks them.
    @discardableResult
    private func cancelQueuedParts(_ job: ObjectId) async throws -> Int {
        let now = bsonNow()
        return try await store.raw(.parts).updateMany(
            ["job": .objectId(job), "status.name": ["$in": ["queued", "retry"]]],
            ["$set": ["status": try BSONEncoder.value(Status(PartState.cancelled, reason: "the job stopped", since: now)),
                      "updated": .datetime(now)]]).modifiedCount
    }

    /// Moves the job from the status it was read in to `state` (and records it as observed).
    /// False when the status changed meanwhile (a new hint follows).
    private func move(_ job: JobDocument, to state: JobState, reason: String?) async throws -> Bool {
        try job.status.name.checkTransition(to: state, id: job.id)
        let now = bsonNow()
        let result = try await store.jobs.updateOne(
            ["_id": .objectId(job.id), "status.name": .string(job.status.name.rawValue)],
            ["$set": ["status": try BSONEncoder.value(Status(state, reason: reason.map { bounded($0) }, since: now)),
                      "observed": .string(state.rawValue), "updated": .datetime(now)]])
        return result.matchedCount == 1
    }

    /// Refuses an illegal status write: the previous status comes back with the reason, and an
    /// error entry records the attempt.
    private func refuse(_ id: ObjectId, written: String?, restore: JobState?, reason: String) async throws {
        let now = bsonNow()
        let state = restore ?? .failed
        let text = "refused status \(written.map { "\"\($0)\"" } ?? "(none)"): \(reason)"
        let filter: BSONDocument = written.map { ["_id": .objectId(id), "status.name": .string($0)] }
            ?? ["_id": .objectId(id), "status.name": ["$exists": false]]
        let result = try await store.jobs.updateOne(filter, [
            "$set": ["status": try BSONEncoder.value(Status(state, reason: bounded(text), since: now)),
                     "observed": .string(state.rawValue), "updated": .datetime(now)],
            "$push": ["errors": ["$each": [try BSONEncoder.value(JobError(reason: bounded(text), at: now))],
                                 "$slice": .int64(Int64(-limits.maxErrors))]],
        ])
        if result.matchedCount == 1 {
            MasterMetrics.illegalStatus.increment()
            logger.warning("illegal job status refused", metadata: [
                "job": "\(id.hex)", "written": "\(written ?? "-")", "kept": "\(state.rawValue)", "reason": "\(reason)",
            ])
            if restore == nil { try? await publisher.broadcast(ControlMessage(.cancelJob, job: id)) }
        }
    }

    // MARK: Checks

    struct Problem: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// The task, the tool at the job's commit and the image (ready, with a sha256) must exist.
    func checkRunnable(_ job: JobDocument) async throws -> Result<PartImage, Problem> {
        guard try await store.raw(.tasks).countDocuments(["_id": .objectId(job.task)]) == 1 else {
            return .failure(Problem("task \(job.task.hex) does not exist"))
        }
        guard try await toolEntry(job) != nil else {
            return .failure(Problem("tool \"\(job.tool)\" is not recorded at commit \(job.toolCommit.prefix(12)) (push it to the code repository)"))
        }
        return try await imageChain(job.image)
    }

    /// The tool's entry command at the job's commit (`.some(nil)`: recorded without one), or nil
    /// when the tool is not recorded at that commit. Cached: a (tool, commit) never changes.
    func toolEntry(_ job: JobDocument) async throws -> String?? {
        let key = job.tool + "@" + job.toolCommit
        if let cached = entries.get(key) { return .some(cached) }
        guard let code = try await store.raw(.code).findOne(
            ["name": .string(job.tool), "commit": .string(job.toolCommit), "kind": "tool"],
            options: FindOptions(projection: ["manifest.entry": 1])) else { return nil }
        let entry = code["manifest"]?["entry"]?.stringValue
        entries.set(key, entry)
        return .some(entry)
    }

    /// The image and its bases (down to the root), each `ready` with a sha256.
    func imageChain(_ id: ObjectId) async throws -> Result<PartImage, Problem> {
        var chain: [ImageChainEntry] = []
        var next: ObjectId? = id
        var seen: Set<ObjectId> = []
        while let current = next {
            guard seen.insert(current).inserted, chain.count < 64 else {
                return .failure(Problem("image \(id.hex) has a cyclic or too deep base chain"))
            }
            guard let image = try await store.raw(.images).findOne(["_id": .objectId(current)]) else {
                return .failure(Problem(current == id ? "image \(id.hex) does not exist" : "base image \(current.hex) of image \(id.hex) does not exist"))
            }
            let name = image["name"]?.stringValue ?? current.hex
            let status = image["status"]?["name"]?.stringValue ?? "?"
            guard status == ImageState.ready.rawValue else {
                return .failure(Problem("image \(name) is \(status), not ready"))
            }
            guard let sha = image["file"]?["sha256"]?.stringValue, !sha.isEmpty else {
                return .failure(Problem("image \(name) is ready but has no sha256 (re-import or re-configure it)"))
            }
            let base = image["base"]?.objectIdValue
            chain.append(ImageChainEntry(id: current, sha256: sha, size: image["file"]?["size"]?.int64Value ?? 0, backing: base))
            next = base
        }
        return .success(PartImage(id: id, sha256: chain[0].sha256, chain: chain))
    }
}

/// Parts of the active jobs by state, as the job reconciler last counted them, for the
/// `talus_master_parts{state}` gauges.
final class PartsCensus: Sendable {
    private let counts = Mutex<[ObjectId: PartCounts]>([:])

    func update(_ job: ObjectId, _ parts: PartCounts?) {
        let total = counts.withLock { all -> PartCounts in
            all[job] = parts
            return all.values.reduce(into: PartCounts()) { sum, c in
                sum.queued += c.queued; sum.running += c.running; sum.done += c.done; sum.failed += c.failed
            }
        }
        MasterMetrics.parts("queued").record(total.queued)
        MasterMetrics.parts("running").record(total.running)
        MasterMetrics.parts("done").record(total.done)
        MasterMetrics.parts("failed").record(total.failed)
    }
}

/// Tool entry commands by "name@commit" (immutable once recorded), bounded.
final class EntryCache: Sendable {
    private let cache = Mutex<[String: String?]>([:])

    func get(_ key: String) -> String?? { cache.withLock { $0[key] } }

    func set(_ key: String, _ entry: String?) {
        cache.withLock { all in
            if all.count > 1000 { all.removeAll() }
            all[key] = .some(entry)
        }
    }
}

/// When something is next due for each job, to do it at most every so often.
final class JobPacer: Sendable {
    private let due = Mutex<[ObjectId: ContinuousClock.Instant]>([:])

    /// How long until `job` is due; nil when it is due now.
    func wait(_ job: ObjectId) -> Duration? {
        let now = ContinuousClock.now
        return due.withLock { all in all[job].flatMap { $0 > now ? $0 - now : nil } }
    }

    /// Makes `job` due again after `pause` (entries long past due are dropped meanwhile).
    func pause(_ job: ObjectId, for pause: Duration) {
        let now = ContinuousClock.now
        due.withLock { all in
            all = all.filter { now - $0.value < .seconds(600) }
            all[job] = now + pause
        }
    }

    /// True, and paused for `pause`, when `job` is due; false otherwise.
    func take(_ job: ObjectId, pause: Duration) -> Bool {
        guard wait(job) == nil else { return false }
        self.pause(job, for: pause)
        return true
    }
}
