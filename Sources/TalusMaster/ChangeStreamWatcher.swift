// The change stream on the Talus database (DESIGN §4): events are hints, (collection, _id) →
// work queue. The master's own frequent writes (progress, part counters) are filtered out on the
// server: only inserts, replaces, deletes and updates that touch `status` pass.
//
// Position: the resume token is persisted in `state` (`master.stream`) after each handled batch
// (at most every second or 200 events while busy, and whenever the stream is caught up). On
// start the watcher resumes from it; without one (or when the server refuses it) it opens a new
// stream. Either way it then lists every non-terminal document of each reconciler and enqueues
// it: a hint persisted but not yet reconciled when the previous master stopped is not lost, and
// a change made while no master ran is acted on.

import BSON
import Foundation
import Logging
import Mongo
import TalusModel

final class ChangeStreamWatcher: Sendable {
    let store: MasterStore
    let reconcilers: [any DocumentReconciler]
    let queue: WorkQueue
    let health: MasterHealth
    let logger: Logger
    /// How long the server holds an empty getMore (bounds how fast a stop is noticed).
    let maxAwait: Int

    init(store: MasterStore, reconcilers: [any DocumentReconciler], queue: WorkQueue, health: MasterHealth,
         logger: Logger, maxAwaitMS: Int = 500) {
        self.store = store
        self.reconcilers = reconcilers
        self.queue = queue
        self.health = health
        self.logger = logger
        maxAwait = maxAwaitMS
    }

    /// The server-side filter: the reconcilers' collections; inserts, replaces, deletes, and
    /// updates whose changed fields include `status` or a field below it.
    static func pipeline(collections: [TalusModel.Collection]) -> [BSONDocument] {
        let touchesStatus: BSONDocument = [
            "$gt": [
                ["$size": ["$filter": [
                    "input": ["$objectToArray": "$updateDescription.updatedFields"],
                    "cond": ["$regexMatch": ["input": "$$this.k", "regex": "^status(\\.|$)"]],
                ]]],
                0,
            ],
        ]
        return [
            ["$match": ["$or": [
                [
                    "ns.coll": ["$in": .array(collections.map { .string($0.rawValue) })],
                    "$or": [
                        ["operationType": ["$in": ["insert", "replace", "delete"]]],
                        ["operationType": "update", "$expr": .document(touchesStatus)],
                    ],
                ],
                ["operationType": "invalidate"],
            ]]],
            ["$project": ["fullDocument": 0, "updateDescription": 0]],
        ]
    }

    private struct Invalidated: Error {}

    /// Watches until cancelled, reopening the stream with backoff after failures.
    func run() async throws {
        var token: ResumeToken? = try await loadToken()
        var resynced = false
        var failures = 0
        let collections = reconcilers.map(\.collection)
        while true {
            try Task.checkCancellation()
            do {
                let stream = try await open(collections: collections, token: &token, resync: !resynced)
                resynced = true
                failures = 0
                health.set("changestream", nil)
                try await consume(stream, token: &token)
                await stream.close()
            } catch is CancellationError {
                throw CancellationError()
            } catch is Invalidated {
                logger.warning("change stream invalidated (database dropped or renamed): starting over from the cluster time")
                token = nil
                try? await saveToken(nil)
                MasterMetrics.changeStreamRestarts.increment()
            } catch {
                if Task.isCancelled { throw CancellationError() }
                failures += 1
                MasterMetrics.changeStreamRestarts.increment()
                health.set("changestream", "change stream failed: \(error)")
                let delay = min(Duration.seconds(10), .milliseconds(250) * (1 << min(failures, 6)))
                logger.warning("change stream failed: reopening", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try await Task.sleep(for: delay)
            }
        }
    }

    /// Opens the stream from `token`, or from the cluster time when there is none or the server
    /// refuses it; with `resync`, enqueues every non-terminal document.
    private func open(collections: [TalusModel.Collection], token: inout ResumeToken?, resync: Bool) async throws -> ChangeStream<BSONDocument> {
        let pipeline = Self.pipeline(collections: collections)
        if let resumeFrom = token {
            do {
                let stream = try await store.database.watch(
                    pipeline, options: ChangeStreamOptions(maxAwaitTimeMS: maxAwait, resumeAfter: resumeFrom))
                if resync { try await enqueuePending() }
                logger.info("change stream resumed from the stored position")
                return stream
            } catch let error as MongoError where !error.isNetworkError {
                logger.warning("the server refused the stored change-stream position: starting over from the cluster time",
                               metadata: ["error": "\(error)"])
                token = nil
            }
        }
        // Open first, then list: a change after the stream opened is in the stream, one before
        // is found by the listing (one seen by both is just reconciled twice). This is the same
        // guarantee as recording the cluster time and watching from it with
        // startAtOperationTime, without that option: SecantusDB 0.7 answers the getMores of such
        // a stream at once instead of after maxAwaitTimeMS, so the stream polls in a tight loop
        // and stalls every other client of the server for seconds.
        let stream = try await store.database.watch(pipeline, options: ChangeStreamOptions(maxAwaitTimeMS: maxAwait))
        do {
            try await enqueuePending()
        } catch {
            await stream.close()
            throw error
        }
        logger.info("change stream started after a full resync (no stored position)")
        return stream
    }

    /// Enqueues every document a reconciler lists as possibly needing work.
    private func enqueuePending() async throws {
        for reconciler in reconcilers {
            let ids = try await reconciler.pending()
            for id in ids { queue.enqueue(reconciler.collection, id) }
            if !ids.isEmpty {
                logger.info("resync: documents to reconcile", metadata: [
                    "collection": "\(reconciler.collection.rawValue)", "count": "\(ids.count)",
                ])
            }
        }
    }

    private func consume(_ stream: ChangeStream<BSONDocument>, token: inout ResumeToken?) async throws {
        let clock = ContinuousClock()
        var unsaved = 0
        var lastSave = clock.now
        for try await notification in stream.notifications {
            switch notification {
            case .event(let event):
                if event.operationType == .invalidate { throw Invalidated() }
                MasterMetrics.changeStreamEvents.increment()
                if let wall = event.wallTime { MasterMetrics.changeStreamLag.record(max(0, Date().timeIntervalSince(wall))) }
                if let name = event.ns?.coll, let collection = TalusModel.Collection(rawValue: name),
                   let id = event.documentID?.objectIdValue {
                    queue.enqueue(collection, id)
                }
                unsaved += 1
                if unsaved >= 200 || clock.now - lastSave >= .seconds(1) {
                    token = stream.resumeToken ?? token
                    try await saveToken(token)
                    unsaved = 0
                    lastSave = clock.now
                }
            case .idle:
                MasterMetrics.changeStreamLag.record(0)
                if unsaved > 0 || stream.resumeToken != token {
                    token = stream.resumeToken ?? token
                    try await saveToken(token)
                    unsaved = 0
                    lastSave = clock.now
                }
            }
        }
        try Task.checkCancellation()
        throw IngestError("the change stream ended")
    }

    private func loadToken() async throws -> ResumeToken? {
        let doc = try await store.state.findOne(["_id": .string(StreamStateDocument.id)])
        return doc?["token"]?.documentValue.map(ResumeToken.init)
    }

    private func saveToken(_ token: ResumeToken?) async throws {
        let doc = try BSONEncoder().encode(StreamStateDocument(token: token?.document))
        try await store.state.replaceOne(["_id": .string(StreamStateDocument.id)], doc, options: UpdateOptions(upsert: true))
    }
}
