// Publishing a job's parts (DESIGN §6): a bounded window per job (the free slots the slaves
// report plus `jobs.window`), failed attempts republished first, new parts numbered from the
// job's `next_idx`, published with confirms before their part documents are written (a crash in
// between leaves at most two chunks of parts without documents, as recording is pipelined with
// the next publish; the ingester creates those when they start, and their numbers are never
// handed out again).

import BSON
import Foundation
import Logging
import Mongo
import TalusModel

struct PartDispatcher: Sendable {
    /// Parts published per round trip of confirms and inserts.
    static let chunk = 500

    let store: MasterStore
    let publisher: MasterPublisher
    let slaves: SlaveTracker
    let window: Int
    let logger: Logger

    /// Live counts of a job's parts that are not final.
    struct Live {
        var queued: Int
        var running: Int
        var retry: [PartDocument]
        var outstanding: Int { queued + running + retry.count }
    }

    func live(_ job: ObjectId) async throws -> Live {
        // One pass over the job's outstanding parts for both counts.
        async let counts = store.raw(.parts).aggregate([
            ["$match": ["job": .objectId(job), "status.name": ["$in": ["queued", "running"]]]],
            ["$group": ["_id": "$status.name", "n": ["$sum": 1]]],
        ])
        async let retry = store.parts.find(["job": .objectId(job), "status.name": "retry"])
        var byState: [String: Int] = [:]
        for group in try await counts { if let state = group["_id"]?.stringValue { byState[state] = group["n"]?.intValue ?? 0 } }
        return Live(queued: byState["queued", default: 0], running: byState["running", default: 0], retry: try await retry)
    }

    /// Publishes what the window allows: failed attempts again, then new parts. Returns how
    /// many of each were published.
    ///
    /// Each publish-and-record step runs to its end even when the task is cancelled (a graceful
    /// stop never leaves published parts unrecorded); only a crash can, for one chunk.
    func dispatch(_ job: JobDocument, image: PartImage, entry: String?, live: Live) async throws -> (retried: Int, new: Int) {
        try await publisher.ensurePartsQueue(job.queue)
        var retried = 0
        var published = 0
        // Failed attempts first: they are owed.
        if !live.retry.isEmpty {
            retried = try await Task { try await republish(job, image: image, entry: entry, parts: live.retry) }.value
        }
        let room = max(0, slaves.freeSlots + window - live.queued - live.retry.count)
        let needed = job.limit < 0 ? Int.max : max(0, job.limit - job.progress - live.outstanding)
        var remaining = min(room, needed)
        var next = job.nextIdx ?? 1
        // Pipelined: a chunk's documents are written while the next chunk is published (the
        // broker and the database work at once). Each step is its own task, so it runs to its
        // end even when this one is cancelled.
        var recording: Task<Int, any Error>?
        while remaining > 0 {
            try Task.checkCancellation()
            let n = min(remaining, Self.chunk)
            let from = next
            let confirmed = try await Task { try await publishNew(job, image: image, entry: entry, from: from, count: n) }.value
            if let previous = recording {
                recording = nil
                published += try await previous.value
            }
            recording = Task { try await record(job, confirmed) }
            next += n
            remaining -= n
            if confirmed.count < n {
                logger.warning("some parts were not confirmed by the broker: their numbers are skipped", metadata: [
                    "job": "\(job.id.hex)", "unconfirmed": "\(n - confirmed.count)",
                ])
                break
            }
        }
        if let last = recording {
            recording = nil
            published += try await last.value
        }
        if published + retried > 0 {
            logger.debug("parts published", metadata: ["job": "\(job.id.hex)", "new": "\(published)", "retried": "\(retried)"])
        }
        return (retried, published)
    }

    /// Publishes the next attempt of parts that failed, then records them queued.
    private func republish(_ job: JobDocument, image: PartImage, entry: String?, parts: [PartDocument]) async throws -> Int {
        let messages = parts.map { message(job, image: image, entry: entry, idx: $0.idx, attempt: $0.attempt + 1) }
        let ok = await publisher.publish(parts: messages, queue: job.queue, priority: job.priority)
        var models: [WriteModel] = []
        for (part, confirmed) in zip(parts, ok) where confirmed {
            models.append(.updateOne(
                filter: ["_id": .string(part.id), "status.name": "retry", "attempt": .int64(Int64(part.attempt))],
                update: ["$set": [
                    "status": try BSONEncoder.value(Status(PartState.queued, reason: "attempt \(part.attempt + 1)")),
                    "attempt": .int64(Int64(part.attempt + 1)), "run": .null, "slave": .null, "updated": .datetime(bsonNow()),
                ]]))
        }
        if !models.isEmpty { try await store.raw(.parts).bulkWrite(models, ordered: false) }
        return models.count
    }

    /// Claims part numbers `from..<from+count` and publishes those parts. Returns the ones the
    /// broker confirmed (``record(_:_:)`` writes their documents).
    private func publishNew(_ job: JobDocument, image: PartImage, entry: String?, from: Int, count: Int) async throws -> [PartMessage] {
        // Hand out the numbers first: a number is never used twice, even after a crash.
        let claimed = try await store.jobs.updateOne(
            ["_id": .objectId(job.id), "next_idx": job.nextIdx == nil && from == 1 ? ["$exists": false] : .int64(Int64(from))],
            ["$set": ["next_idx": .int64(Int64(from + count))]])
        guard claimed.matchedCount == 1 else {
            throw IngestError("next_idx of job \(job.id.hex) changed under the dispatcher")
        }
        let messages = (from..<(from + count)).map { message(job, image: image, entry: entry, idx: $0, attempt: 1) }
        let ok = await publisher.publish(parts: messages, queue: job.queue, priority: job.priority)
        return zip(messages, ok).filter(\.1).map(\.0)
    }

    /// Writes the part documents of published parts (queued). Returns how many.
    private func record(_ job: JobDocument, _ published: [PartMessage]) async throws -> Int {
        let now = bsonNow()
        let docs: [WriteModel] = try published.map { m in
            .insertOne(try BSONEncoder().encode(PartDocument(job: job.id, idx: m.idx, attempt: 1, status: Status(.queued, since: now), now: now)))
        }
        if !docs.isEmpty { try await store.raw(.parts).bulkWrite(docs, ordered: false).throwUnlessOnlyDuplicates() }
        return docs.count
    }

    func message(_ job: JobDocument, image: PartImage, entry: String?, idx: Int, attempt: Int) -> PartMessage {
        PartMessage(job: job.id, idx: idx, attempt: attempt, image: image, tool: PartTool(name: job.tool, commit: job.toolCommit, entry: entry),
                    params: job.params, vm: job.vm, network: job.network, deadline: nil, debug: job.debug)
    }
}
