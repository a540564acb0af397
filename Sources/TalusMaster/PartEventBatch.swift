// One batch of part events (or of lost runs), applied in memory to the runs, parts and jobs it
// touches and then written: effects first (files, results, crashes: idempotent), then parts and
// job accounting (in the order that keeps the dispatcher's view safe), then runs (the dedupe
// state commits last).

import BSON
import Foundation
import Logging
import Mongo
import TalusModel

struct PartEventBatch {
    /// What the batch needs of a job, and the accounting it adds.
    struct Job {
        let id: ObjectId
        let status: String
        let limit: Int
        let counted: Int
        let countedPresent: Bool
        let tool: String
        let tags: BSONValue
        var delta = 0
        var done = 0
        var failed = 0
        var errors: [JobError] = []

        /// Progress counts into the job only while it runs; afterwards it is frozen. `status` is
        /// the status the master accepted (`observed`), so an illegal write changes nothing.
        var counting: Bool { status == JobState.running.rawValue }
        var active: Bool { status == JobState.running.rawValue || status == JobState.run.rawValue }
    }

    struct ResultDraft {
        let id: ObjectId
        let job: ObjectId
        let idx: Int
        let run: String
        let kind: String
        let data: BSONDocument
        let files: [String]
        let at: Date
    }

    struct CrashDraft {
        let job: ObjectId
        let bucket: String
        let key: String
        let sample: CrashSample
        let file: String?
    }

    var events: [EventMessage] = []
    var jobs: [ObjectId: Job] = [:]
    var runs: [String: RunDocument] = [:]
    private(set) var originalRuns: [String: RunDocument] = [:]
    private(set) var changedRuns: [String] = []
    var parts: [String: PartDocument] = [:]
    private(set) var originalParts: [String: PartDocument] = [:]
    private(set) var changedParts: [String] = []
    var results: [ResultDraft] = []
    var crashes: [CrashDraft] = []
    var chunks: [WriteModel] = []
    var files: [WriteModel] = []
    var sealed: [ObjectId: StoredFileRef] = [:]
    var resolved: [ObjectId: StoredFileRef] = [:]
    /// Jobs to reconcile after the batch (a part started or ended, the limit was reached).
    var hints: Set<ObjectId> = []
    /// Jobs whose parts still start although they do not run: broadcast cancel again.
    var rebroadcast: Set<ObjectId> = []
    var duplicates = 0
    let now = bsonNow()

    // MARK: Loading

    /// Loads the jobs, runs and parts the events refer to (plus the runs their parts point at).
    static func load(_ events: [EventMessage], store: MasterStore) async throws -> PartEventBatch {
        var batch = PartEventBatch()
        batch.events = events
        let sources = events.compactMap(\.source)
        try await batch.loadJobs(Set(sources.map(\.job)), store: store)
        try await batch.loadRuns(Set(sources.map(\.run)), store: store)
        try await batch.loadParts(Set(sources.map { PartDocument.id(job: $0.job, idx: $0.idx) }), store: store)
        try await batch.loadRuns(Set(batch.parts.values.compactMap(\.run)).subtracting(batch.runs.keys), store: store)
        return batch
    }

    /// Loads what losing `runs` touches.
    static func load(runs: [RunDocument], store: MasterStore) async throws -> PartEventBatch {
        var batch = PartEventBatch()
        for run in runs { batch.runs[run.id] = run; batch.originalRuns[run.id] = run }
        try await batch.loadJobs(Set(runs.map(\.job)), store: store)
        try await batch.loadParts(Set(runs.map { PartDocument.id(job: $0.job, idx: $0.idx) }), store: store)
        return batch
    }

    private mutating func loadJobs(_ ids: Set<ObjectId>, store: MasterStore) async throws {
        guard !ids.isEmpty else { return }
        let docs = try await store.jobs.find(
            ["_id": ["$in": .array(ids.map { .objectId($0) })]],
            options: FindOptions(projection: ["status": 1, "observed": 1, "limit": 1, "counted": 1, "tool": 1, "tags": 1]))
        for doc in docs {
            guard let id = doc["_id"]?.objectIdValue else { continue }
            jobs[id] = Job(
                id: id, status: doc["observed"]?.stringValue ?? doc["status"]?["name"]?.stringValue ?? "",
                limit: doc["limit"]?.intValue ?? -1,
                counted: doc["counted"]?.intValue ?? 0, countedPresent: doc["counted"]?.intValue != nil,
                tool: doc["tool"]?.stringValue ?? "", tags: doc["tags"] ?? [])
        }
    }

    private mutating func loadRuns(_ ids: Set<String>, store: MasterStore) async throws {
        guard !ids.isEmpty else { return }
        for run in try await store.runs.find(["_id": ["$in": .array(ids.map { .string($0) })]]) {
            runs[run.id] = run
            originalRuns[run.id] = run
        }
    }

    private mutating func loadParts(_ ids: Set<String>, store: MasterStore) async throws {
        guard !ids.isEmpty else { return }
        for part in try await store.parts.find(["_id": ["$in": .array(ids.map { .string($0) })]]) {
            parts[part.id] = part
            originalParts[part.id] = part
        }
    }

    // MARK: Applying events

    /// Applies the events run by run, each run's events in sequence order.
    mutating func apply(limits: EventIngestor.Limits) {
        var order: [String] = []
        var byRun: [String: [EventMessage]] = [:]
        for e in events {
            guard let source = e.source, jobs[source.job] != nil else { continue }
            if byRun[source.run] == nil { order.append(source.run) }
            byRun[source.run, default: []].append(e)
        }
        for run in order {
            for e in byRun[run]!.sorted(by: { $0.source!.seq < $1.source!.seq }) { applyEvent(e, limits: limits) }
        }
    }

    private mutating func applyEvent(_ e: EventMessage, limits: EventIngestor.Limits) {
        let source = e.source!
        var run = runs[source.run] ?? RunDocument(
            id: source.run, job: source.job, idx: source.idx, attempt: source.attempt, slave: e.slave, started: e.at)
        guard run.accept(seq: source.seq) else {
            duplicates += 1
            return
        }
        switch e.body {
        case .partStarted:
            started(run, e)
        case .report(.progress(let amount)):
            if run.state == .running && amount > 0 {
                run.progress += amount
                credit(run.job, amount)
            }
        case .report(.result(let kind, let data, let names)):
            results.append(ResultDraft(
                id: MasterStore.derivedID("result\u{0}\(run.id)\u{0}\(source.seq)"), job: run.job, idx: run.idx,
                run: run.id, kind: kind, data: data, files: names, at: e.at))
        case .report(.crash(let signature, let data, let file)):
            crashes.append(CrashDraft(
                job: run.job, bucket: CrashSignature.bucket(signature), key: "\(run.id):\(source.seq)",
                sample: CrashSample(job: run.job, idx: run.idx, run: run.id, at: e.at, data: data), file: file))
        case .report(.log(let level, let message)):
            run.log(RunLog(at: e.at, level: bounded(level, 20), message: bounded(message, 2000)))
        case .report(.file(let chunk)):
            store(chunk, of: &run, at: e.at)
        case .partEnded(let outcome, let reason, let exitCode, let serialTail):
            ended(&run, outcome: outcome, reason: reason, exitCode: exitCode, serialTail: serialTail, e: e, limits: limits)
        case .heartbeat, .slaveOnline, .slaveOffline:
            break
        }
        setRun(run)
    }

    private mutating func setRun(_ run: RunDocument) {
        if !changedRuns.contains(run.id) { changedRuns.append(run.id) }
        runs[run.id] = run
    }

    private mutating func setPart(_ part: PartDocument) {
        if !changedParts.contains(part.id) { changedParts.append(part.id) }
        var p = part
        p.updated = now
        parts[part.id] = p
    }

    /// Adds progress to a job while it counts.
    private mutating func credit(_ job: ObjectId, _ amount: Int) {
        guard amount != 0, jobs[job]?.counting == true else { return }
        jobs[job]!.delta += amount
    }

    private mutating func moved(_ part: inout PartDocument, to state: PartState, at: Date) -> Bool {
        guard part.status.name != state, part.status.name.canMove(to: state) else { return false }
        part.status = Status(state, since: at)
        return true
    }

    private mutating func started(_ run: RunDocument, _ e: EventMessage) {
        guard let job = jobs[run.job] else { return }
        hints.insert(run.job)
        if !job.active { rebroadcast.insert(run.job) }
        let id = PartDocument.id(job: run.job, idx: run.idx)
        var part = parts[id] ?? PartDocument(job: run.job, idx: run.idx, attempt: run.attempt, status: Status(.queued, since: e.at), now: now)
        guard part.run != run.id, run.attempt >= part.attempt else { return }
        switch part.status.name {
        case .queued, .retry:
            break
        case .running:
            if let old = part.run { lose(old, reason: "superseded by run \(run.id) on slave \(e.slave)", at: e.at) }
        case .done, .failed, .cancelled:
            return
        }
        part.status = Status(.running, since: e.at)
        part.attempt = run.attempt
        part.run = run.id
        part.slave = e.slave
        setPart(part)
    }

    /// Marks a running run lost and takes its progress back.
    private mutating func lose(_ id: String, reason: String, at: Date) {
        guard var run = runs[id], run.state == .running else { return }
        run.state = .lost
        run.reason = bounded(reason)
        run.ended = at
        credit(run.job, -run.progress)
        setRun(run)
    }

    /// Loses runs of offline slaves: their parts wait for RabbitMQ's redelivery (queued), or are
    /// cancelled when their job no longer runs.
    mutating func loseRuns(_ ids: [String], reason: String) {
        for id in ids {
            guard let run = runs[id], run.state == .running else { continue }
            lose(id, reason: reason, at: now)
            hints.insert(run.job)
            let pid = PartDocument.id(job: run.job, idx: run.idx)
            guard var part = parts[pid], part.run == id, part.status.name == .running else { continue }
            let next: PartState = jobs[run.job]?.active == true ? .queued : .cancelled
            if moved(&part, to: next, at: now) {
                part.run = nil
                part.slave = nil
                setPart(part)
            }
        }
    }

    private mutating func ended(
        _ run: inout RunDocument, outcome: PartOutcome, reason: String?, exitCode: Int?, serialTail: String?,
        e: EventMessage, limits: EventIngestor.Limits
    ) {
        guard let job = jobs[run.job] else { return }
        hints.insert(run.job)
        let pid = PartDocument.id(job: run.job, idx: run.idx)
        var part = parts[pid]
        // A run lost because its slave went silent ends after all: its part waits for a
        // redelivery that will not come (the slave acks after reporting). Take the run back.
        if run.state == .lost, let p = part, p.status.name == .queued, p.run == nil, p.attempt == run.attempt {
            run.state = .running
            run.reason = nil
            credit(run.job, run.progress)
            part!.run = run.id
        }
        guard run.state == .running else { return }
        run.ended = e.at
        run.exitCode = exitCode
        if part == nil {
            var created = PartDocument(job: run.job, idx: run.idx, attempt: run.attempt, status: Status(.running, since: run.started), now: now)
            created.run = run.id
            created.slave = run.slave
            part = created
        }
        let canEnd = part!.attempt == run.attempt && (part!.run == run.id || part!.run == nil)
            && (part!.status.name == .queued || part!.status.name == .running)
        switch outcome {
        case .success:
            run.state = .finished
            if run.progress == 0 {
                run.progress = 1  // a run that reported no progress counts one unit
                credit(run.job, 1)
            }
            if canEnd, moved(&part!, to: .done, at: e.at) {
                jobs[run.job]!.done += 1
                setPart(part!)
            }
        case .failure:
            run.state = .failed
            let why = bounded(reason ?? "failed without a reason")
            run.reason = why
            run.serialTail = serialTail.map { String($0.suffix(4000)) }
            credit(run.job, -run.progress)
            let error = JobError(idx: run.idx, attempt: run.attempt, slave: e.slave,
                                 reason: exitCode.map { "\(why) (exit status \($0))" } ?? why, at: e.at)
            jobs[run.job]!.errors.append(error)
            if canEnd {
                let last = part!.attempt >= limits.partAttempts
                if moved(&part!, to: last ? .failed : .retry, at: e.at) {
                    part!.failures = Array((part!.failures + [error]).suffix(limits.partAttempts + 2))
                    if last {
                        part!.status.reason = bounded("failed \(part!.attempt) times; last: \(why)")
                        jobs[run.job]!.failed += 1
                    }
                    setPart(part!)
                }
            }
        case .cancelled:
            run.state = .cancelled
            run.reason = bounded(reason ?? "cancelled")
            credit(run.job, -run.progress)
            // While the job runs, a cancelled part was given back by its slave (shutdown): the
            // broker redelivers it. Otherwise the job's cancel stopped it.
            if canEnd, moved(&part!, to: job.active ? .queued : .cancelled, at: e.at) {
                part!.run = nil
                part!.slave = nil
                setPart(part!)
            }
        }
    }

    private mutating func store(_ chunk: FileChunk, of run: inout RunDocument, at: Date) {
        let size = FileChunk.chunkSize
        guard chunk.offset >= 0, chunk.offset % Int64(size) == 0, chunk.last || chunk.data.count == size,
              chunk.data.count <= size else {
            run.log(RunLog(at: at, level: "error", message: bounded(
                "file \(chunk.name): chunk at offset \(chunk.offset) with \(chunk.data.count) bytes dropped (chunks are \(size) bytes, the last may be shorter)")))
            return
        }
        let fileID = MasterStore.fileID(run: run.id, name: chunk.name)
        let n = Int(chunk.offset / Int64(size))
        let chunkID = MasterStore.derivedID("chunk\u{0}\(fileID.hex)\u{0}\(n)")
        chunks.append(.replaceOne(
            filter: ["_id": .objectId(chunkID)],
            replacement: ["_id": .objectId(chunkID), "files_id": .objectId(fileID), "n": .int64(Int64(n)),
                          "data": .binary(BSONBinary(data: chunk.data))],
            upsert: true))
        if chunk.last {
            let length = chunk.size ?? chunk.offset + Int64(chunk.data.count)
            // The layout of `StoredFileDocument` (the API serves these files): sha256 in metadata.
            var metadata: BSONDocument = ["job": .objectId(run.job), "idx": .int64(Int64(run.idx)), "run": .string(run.id)]
            if let sha = chunk.sha256 { metadata["sha256"] = .string(sha) }
            let doc: BSONDocument = [
                "_id": .objectId(fileID), "length": .int64(length), "chunkSize": .int64(Int64(size)),
                "uploadDate": .datetime(at), "filename": .string(chunk.name), "metadata": .document(metadata),
            ]
            files.append(.replaceOne(filter: ["_id": .objectId(fileID)], replacement: doc, upsert: true))
            sealed[fileID] = StoredFileRef(id: fileID, name: chunk.name, size: length, sha256: chunk.sha256 ?? "")
        }
    }

    // MARK: Files referenced by results and crashes

    /// Finds the stored files that results and crashes name (sent in earlier batches).
    mutating func resolveFiles(store: MasterStore) async throws {
        var wanted: Set<ObjectId> = []
        for r in results { for name in r.files { wanted.insert(MasterStore.fileID(run: r.run, name: name)) } }
        for c in crashes { if let name = c.file { wanted.insert(MasterStore.fileID(run: c.sample.run, name: name)) } }
        wanted.subtract(sealed.keys)
        resolved = sealed
        guard !wanted.isEmpty else { return }
        for doc in try await store.files.find(["_id": ["$in": .array(wanted.map { .objectId($0) })]]) {
            guard let id = doc["_id"]?.objectIdValue else { continue }
            resolved[id] = StoredFileRef(id: id, name: doc["filename"]?.stringValue ?? "", size: doc["length"]?.int64Value ?? 0,
                                         sha256: doc["metadata"]?["sha256"]?.stringValue ?? "")
        }
    }

    private func fileRef(run: String, name: String) -> StoredFileRef? {
        resolved[MasterStore.fileID(run: run, name: name)]
    }

    // MARK: Writing

    /// Writes the batch. Returns the jobs whose accounting could not be written (a concurrent
    /// writer): the caller recomputes them.
    @discardableResult
    func write(store: MasterStore, limits: EventIngestor.Limits, logger: Logger) async throws -> Set<ObjectId> {
        // Effects, idempotent: replays overwrite or hit unique keys.
        if !chunks.isEmpty { try await store.chunks.bulkWrite(chunks, ordered: false).throwUnlessOnlyDuplicates() }
        if !files.isEmpty { try await store.files.bulkWrite(files, ordered: false).throwUnlessOnlyDuplicates() }
        if !results.isEmpty {
            var docs: [WriteModel] = []
            for r in results {
                guard let job = jobs[r.job] else { continue }
                let refs = r.files.compactMap { fileRef(run: r.run, name: $0) }
                var doc = try BSONEncoder().encode(ResultDocument(
                    id: r.id, job: r.job, idx: r.idx, run: r.run, tool: job.tool, type: r.kind, data: r.data, files: refs, now: now))
                doc["tags"] = job.tags
                docs.append(.insertOne(doc))
            }
            try await store.results.bulkWrite(docs, ordered: false).throwUnlessOnlyDuplicates()
        }
        if !crashes.isEmpty {
            var models: [WriteModel] = []
            for c in crashes {
                guard let job = jobs[c.job] else { continue }
                var sample = c.sample
                sample.file = c.file.flatMap { fileRef(run: sample.run, name: $0) }
                let update: BSONDocument = [
                    "$inc": ["count": 1],
                    "$max": ["last_seen": .datetime(sample.at)],
                    "$set": ["updated": .datetime(now)],
                    "$setOnInsert": [
                        "_id": .objectId(ObjectId()), "schema": .int64(Int64(CrashDocument.currentSchema)), "tool": .string(job.tool),
                        "first_seen": .datetime(sample.at), "created": .datetime(now), "tags": job.tags,
                    ],
                    "$push": [
                        "samples": ["$each": [try BSONEncoder.value(sample)], "$slice": .int64(Int64(limits.crashSamples))],
                        "applied": ["$each": [.string(c.key)], "$slice": -64],
                    ],
                ]
                // `applied` holds the newest event keys counted: a replayed crash matches no
                // document, its upsert hits the unique (job, bucket) index, and nothing counts twice.
                models.append(.updateOne(
                    filter: ["job": .objectId(c.job), "bucket": .string(c.bucket), "applied": ["$ne": .string(c.key)]],
                    update: update, upsert: true))
            }
            try await store.crashes.bulkWrite(models, ordered: false).throwUnlessOnlyDuplicates()
        }

        // Order: parts that stay outstanding, then job accounting, then parts that leave the
        // outstanding set, then runs (the dedupe state, last). So a part never looks finished
        // while its progress is missing from its job: the dispatcher (which counts parts first,
        // then reads the job) would publish parts that are not needed. A failure after the job
        // write is repaired by recomputing the job (the ingester marks it; the reconciler waits).
        let outstanding: Set<PartState> = [.queued, .running, .retry]
        try await writeParts(changedParts.filter { parts[$0].map { outstanding.contains($0.status.name) } ?? false }, store: store)
        let conflicts = try await writeJobs(store: store, limits: limits, logger: logger)
        try await writeParts(changedParts.filter { parts[$0].map { !outstanding.contains($0.status.name) } ?? false }, store: store)
        try await writeRuns(store: store)
        return conflicts
    }

    /// Parts, conditional on the state they were read in (the job reconciler writes parts too).
    private func writeParts(_ ids: [String], store: MasterStore) async throws {
        guard !ids.isEmpty else { return }
        var models: [WriteModel] = []
        for id in ids {
            guard let part = parts[id] else { continue }
            let set = try BSONEncoder().encode(part).removing(["_id", "created"])
            if let original = originalParts[id] {
                models.append(.updateOne(
                    filter: ["_id": .string(id), "status.name": .string(original.status.name.rawValue),
                             "attempt": .int64(Int64(original.attempt))],
                    update: ["$set": .document(set)]))
            } else {
                models.append(.updateOne(
                    filter: ["_id": .string(id)],
                    update: ["$set": .document(set), "$setOnInsert": ["created": .datetime(part.created)]], upsert: true))
            }
        }
        try await store.raw(.parts).bulkWrite(models, ordered: false).throwUnlessOnlyDuplicates()
    }

    /// Runs: the dedupe state; conditional on what was read, so a concurrent writer shows.
    private func writeRuns(store: MasterStore) async throws {
        var models: [WriteModel] = []
        var replaces = 0
        for id in changedRuns {
            guard let run = runs[id] else { continue }
            let doc = try BSONEncoder().encode(run)
            if let original = originalRuns[id] {
                guard original != run else { continue }
                replaces += 1
                models.append(.replaceOne(
                    filter: ["_id": .string(id), "seq": .int64(Int64(original.seq)), "state": .string(original.state.rawValue)],
                    replacement: doc))
            } else {
                models.append(.insertOne(doc))
            }
        }
        guard !models.isEmpty else { return }
        let result = try await store.raw(.runs).bulkWrite(models, ordered: false)
        if !result.writeErrors.isEmpty || result.matchedCount != replaces {
            throw IngestError("runs changed under the ingester (another master?): \(result.writeErrors.first.map { "\($0)" } ?? "\(replaces - result.matchedCount) lost updates")")
        }
    }

    /// Job accounting; returns the jobs whose accounting changed under the batch.
    private func writeJobs(store: MasterStore, limits: EventIngestor.Limits, logger: Logger) async throws -> Set<ObjectId> {
        var conflicts: Set<ObjectId> = []
        for job in jobs.values where job.delta != 0 || job.done != 0 || job.failed != 0 || !job.errors.isEmpty {
            var filter: BSONDocument = ["_id": .objectId(job.id)]
            var update: BSONDocument = [:]
            var set: BSONDocument = ["updated": .datetime(now)]
            if job.delta != 0 {
                filter["counted"] = job.countedPresent ? .int64(Int64(job.counted)) : ["$exists": false]
                let counted = job.counted + job.delta
                set["counted"] = .int64(Int64(counted))
                set["progress"] = .int64(Int64(max(0, job.limit < 0 ? counted : min(job.limit, counted))))
            }
            update["$set"] = .document(set)
            if job.done != 0 || job.failed != 0 {
                update["$inc"] = ["parts.done": .int64(Int64(job.done)), "parts.failed": .int64(Int64(job.failed))]
            }
            if !job.errors.isEmpty {
                update["$push"] = ["errors": [
                    "$each": .array(try job.errors.map { try BSONEncoder.value($0) }),
                    "$slice": .int64(Int64(-limits.maxErrors)),
                ]]
            }
            // One by one: a conflict must name its job.
            let result = try await store.jobs.updateOne(filter, update)
            if result.matchedCount == 0 { conflicts.insert(job.id) }
        }
        if !conflicts.isEmpty {
            logger.warning("job accounting changed concurrently: recomputing", metadata: [
                "jobs": "\(conflicts.map(\.hex).joined(separator: ","))",
            ])
        }
        return conflicts
    }

    /// Jobs no longer dispatching (cancelling or ended) whose parts changed state in this batch:
    /// the job reconciler no longer keeps their `parts.queued`/`parts.running` counters, so the
    /// ingester recomputes them after the batch.
    var settledJobs: Set<ObjectId> {
        Set(changedParts.compactMap { parts[$0]?.job }.filter { jobs[$0].map { !$0.active } ?? false })
    }

    /// Jobs that reached their limit in this batch (the reconciler finishes them).
    var completed: [ObjectId] {
        jobs.values.filter { $0.delta > 0 && $0.limit >= 0 && $0.counted + $0.delta >= $0.limit }.map(\.id)
    }
}
