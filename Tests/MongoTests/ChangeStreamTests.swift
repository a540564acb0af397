// Change streams against the real SecantusDB replica set: events from another client in order,
// resuming from saved tokens and times, idle batches, backpressure, cancellation, errors.

import BSON
import Foundation
import Mongo
import Synchronization
import TalusTestSupport
import Testing

struct Item: Codable, Sendable, Equatable {
    var _id: ObjectId = ObjectId()
    var i: Int
    var state: String = "new"
    var log: [Int] = []
}

@Suite struct ChangeStreamTests {
    /// Allowance over maxAwaitTimeMS for thread wake-ups on a loaded 2-core machine.
    let slack = Duration.seconds(2)

    @Test func seesInsertUpdateReplaceAndDeleteFromAnotherClientInOrder() async throws {
        try await withDatabase("mongocs") { _, db in
            let items = db.collection("items", as: Item.self)
            let stream = try await items.watch(options: ChangeStreamOptions(fullDocument: .updateLookup, maxAwaitTimeMS: 300))
            var events = stream.makeAsyncIterator()

            let writer = try makeClient()
            let other = writer.database(db.name).collection("items", as: Item.self)
            let item = Item(i: 1, log: [1, 2, 3, 4])
            try await other.insertOne(item)
            try await other.updateOne(
                ["_id": .objectId(item._id)],
                ["$set": ["state": "running"], "$unset": ["missing": ""], "$push": ["log": ["$each": [5], "$slice": -2]]])
            var replacement = item
            replacement.state = "replaced"
            replacement.log = []
            try await other.replaceOne(["_id": .objectId(item._id)], replacement)
            try await other.deleteOne(["_id": .objectId(item._id)])
            await writer.close()

            let insert = try await nextEvent(&events)
            #expect(insert.operationType == .insert)
            #expect(insert.fullDocument == item)
            #expect(insert.documentKey == ["_id": .objectId(item._id)])
            #expect(insert.ns == Namespace(db: db.name, coll: "items"))
            #expect(insert.clusterTime != nil)

            let update = try await nextEvent(&events)
            #expect(update.operationType == .update)
            #expect(update.documentID == .objectId(item._id))
            #expect(update.updateDescription?.updatedFields["state"] == "running")
            // $push with $slice rewrites the array (as updatedFields.log or a truncation).
            let fields = update.updateDescription?.updatedFields
            #expect(fields?["log"] != nil || fields?["log.4"] != nil || update.updateDescription?.truncatedArrays?.isEmpty == false)
            // updateLookup: the current document, which by now may already be the replacement or gone.
            if let full = update.fullDocument { #expect(full._id == item._id) }

            let replace = try await nextEvent(&events)
            #expect(replace.operationType == .replace)
            #expect(replace.fullDocument == replacement)

            let delete = try await nextEvent(&events)
            #expect(delete.operationType == .delete)
            #expect(delete.documentKey == ["_id": .objectId(item._id)])
            #expect(delete.fullDocument == nil)
            #expect(stream.resumeToken == delete.id)
            await stream.close()
            #expect(stream.isClosed)
        }
    }

    @Test func updateLookupCarriesTheCurrentDocument() async throws {
        try await withDatabase("mongocs") { _, db in
            let items = db.collection("items", as: Item.self)
            let item = Item(i: 7)
            try await items.insertOne(item)
            let stream = try await items.watch(options: ChangeStreamOptions(fullDocument: .updateLookup, maxAwaitTimeMS: 300))
            var events = stream.makeAsyncIterator()
            let writer = try makeClient()
            try await writer.database(db.name).collection("items").updateOne(["_id": .objectId(item._id)], ["$set": ["state": "done"], "$inc": ["i": 1]])
            await writer.close()
            let update = try await nextEvent(&events)
            #expect(update.operationType == .update)
            // The order of updatedFields is the server's: compare by key.
            let updated = update.updateDescription?.updatedFields
            #expect(updated?.count == 2 && updated?["state"] == "done" && updated?["i"]?.intValue == 8)
            #expect(update.updateDescription?.removedFields == [])
            var expected = item
            expected.state = "done"
            expected.i = 8
            #expect(update.fullDocument == expected)
            await stream.close()
        }
    }

    /// Inserts items `range` with a second client.
    private func insert(_ range: ClosedRange<Int>, into db: MongoDatabase) async throws {
        let writer = try makeClient()
        let items = writer.database(db.name).collection("items", as: Item.self)
        for i in range { try await items.insertOne(Item(i: i)) }
        await writer.close()
    }

    /// Reads `count` events and returns their `i`.
    private func read(_ count: Int, from stream: ChangeStream<Item>) async throws -> [Int] {
        var events = stream.makeAsyncIterator()
        var out: [Int] = []
        for _ in 0..<count { out.append(try await nextEvent(&events).fullDocument?.i ?? -1) }
        return out
    }

    @Test(arguments: ["resumeAfter", "startAfter"])
    func restartFromSavedTokenDeliversExactlyTheRest(mode: String) async throws {
        try await withDatabase("mongoresume") { _, db in
            let (n, k) = (10, 4)
            let items = db.collection("items", as: Item.self)
            let first = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200, batchSize: 3))
            try await insert(1...n, into: db)
            #expect(try await read(k, from: first) == Array(1...k))
            let token = try #require(first.resumeToken)
            await first.close()

            // Persist and reload the token as a model field would be.
            struct State: Codable { var token: ResumeToken }
            let stored = try BSONEncoder().encode(State(token: token))
            let reloaded = try BSONDecoder().decode(State.self, from: stored).token
            #expect(reloaded == token)

            let options = mode == "resumeAfter"
                ? ChangeStreamOptions(maxAwaitTimeMS: 200, resumeAfter: reloaded)
                : ChangeStreamOptions(maxAwaitTimeMS: 200, startAfter: reloaded)
            let second = try await items.watch(options: options)
            #expect(try await read(n - k, from: second) == Array((k + 1)...n))
            // Nothing repeated after n: the next event is a new one.
            try await insert((n + 1)...(n + 1), into: db)
            #expect(try await read(1, from: second) == [n + 1])
            await second.close()
        }
    }

    @Test func startAtOperationTimeDeliversChangesFromThatTime() async throws {
        try await withDatabase("mongostartat") { client, db in
            let items = db.collection("items", as: Item.self)
            // A reference stream records the cluster time of every event.
            let reference = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            try await insert(1...3, into: db)
            let recorded = try await client.currentClusterTime()
            try await insert(4...6, into: db)

            var referenceEvents = reference.makeAsyncIterator()
            var times: [(Int, BSONTimestamp)] = []
            for _ in 1...6 {
                let e = try await nextEvent(&referenceEvents)
                times.append((e.fullDocument!.i, try #require(e.clusterTime)))
            }
            await reference.close()
            let expected = times.filter { $0.1 >= recorded }.map(\.0)
            #expect(expected.starts(with: [4, 5, 6]) || expected == [3, 4, 5, 6])
            #expect(Array(expected.suffix(3)) == [4, 5, 6])

            let stream = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200, startAtOperationTime: recorded))
            #expect(try await read(expected.count, from: stream) == expected)
            await stream.close()
        }
    }

    @Test func idleBatchesAreReportedWithAResumeToken() async throws {
        try await withDatabase("mongoidle") { _, db in
            let items = db.collection("items", as: Item.self)
            let stream = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 100))
            var notifications = stream.notifications.makeAsyncIterator()
            // Nothing happens: the first notification is an idle batch.
            let idle = try await notifications.next()
            #expect(idle?.event == nil)
            // MongoDB reports a post-batch token from the first batch; keep what the stream has.
            let idleToken = stream.resumeToken

            try await insert(1...1, into: db)
            var event: ChangeEvent<Item>?
            while event == nil {
                event = try await notifications.next()?.event
            }
            #expect(event?.fullDocument?.i == 1)
            #expect(stream.resumeToken != nil)
            #expect(stream.resumeToken != idleToken || idleToken == nil)
            // Idle again after the event; the token is still a valid position (resuming from it
            // delivers only later events).
            while try await notifications.next()?.event != nil {}
            // A write to another collection moves the server's post-batch token: the stream reads
            // it after the empty batches that follow (mongoc_change_stream_get_resume_token).
            let beforeOtherWrite = stream.resumeToken
            try await db.collection("other").insertOne(["y": 1])
            try await waitUntil("an empty batch advances the token", timeout: .seconds(10), interval: .milliseconds(1)) {
                let notification = try await notifications.next()
                #expect(notification != nil && notification?.event == nil)
                return stream.resumeToken != beforeOtherWrite
            }
            let afterIdle = try #require(stream.resumeToken)
            await stream.close()
            let resumed = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 100, resumeAfter: afterIdle))
            try await insert(2...2, into: db)
            #expect(try await read(1, from: resumed) == [2])
            await resumed.close()
        }
    }

    @Test func boundedBufferLosesNothing() async throws {
        try await withDatabase("mongobuffer") { _, db in
            let items = db.collection("items", as: Item.self)
            let stream = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200, batchSize: 5, bufferSize: 4))
            try await insert(1...60, into: db)
            // The thread had to wait for us many times; every event arrives, in order.
            #expect(try await read(60, from: stream) == Array(1...60))
            await stream.close()
        }
    }

    @Test func cancellingTheConsumerStopsAWaitingStreamPromptly() async throws {
        try await withDatabase("mongocancel") { _, db in
            let maxAwait = 500
            let stream = try await db.collection("items", as: Item.self).watch(options: ChangeStreamOptions(maxAwaitTimeMS: maxAwait))
            let received = Mutex(0)
            let consumer = Task {
                for try await _ in stream { received.withLock { $0 += 1 } }
                return received.withLock { $0 }
            }
            // The consumer takes one event and goes back to waiting for the next.
            try await insert(1...1, into: db)
            try await waitUntil("the consumer receives the first event") { received.withLock { $0 } == 1 }
            let clock = ContinuousClock()
            let start = clock.now
            consumer.cancel()
            #expect(try await consumer.value == 1)
            let consumerReturned = clock.now - start
            #expect(consumerReturned < .milliseconds(maxAwait) + slack, "returned after \(consumerReturned)")
            try await waitUntil("the stream thread destroys the libmongoc stream", timeout: .seconds(10), interval: .milliseconds(10)) {
                stream.isClosed
            }
            let closed = clock.now - start
            #expect(closed < .milliseconds(maxAwait) + slack, "closed after \(closed)")
        }
    }

    @Test func closeStopsTheStreamWithinMaxAwait() async throws {
        try await withDatabase("mongoclose") { _, db in
            let stream = try await db.collection("items").watch(options: ChangeStreamOptions(maxAwaitTimeMS: 400))
            let waited = await elapsed { await stream.close() }
            #expect(stream.isClosed)
            #expect(waited < .milliseconds(400) + slack, "close took \(waited)")
            var it = stream.makeAsyncIterator()
            #expect(try await it.next() == nil)
            // Closing a client stops the streams it still has.
            let second = try makeClient()
            let other = try await second.database(db.name).collection("items").watch(options: ChangeStreamOptions(maxAwaitTimeMS: 400))
            await second.close()
            #expect(other.isClosed)
            await #expect(throws: MongoError.self) { try await second.database(db.name).collection("items").countDocuments() }
        }
    }

    @Test func databaseAndClientStreamsSeeSeveralCollections() async throws {
        try await withDatabase("mongodbwatch") { client, db in
            let dbStream = try await db.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            let clientStream = try await client.watch(
                [["$match": ["ns.db": .string(db.name)]]], options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            try await db.collection("a").insertOne(["x": 1])
            try await db.collection("b").insertOne(["x": 2])
            for stream in [dbStream, clientStream] {
                var it = stream.makeAsyncIterator()
                let first = try await nextEvent(&it)
                let second = try await nextEvent(&it)
                #expect([first.ns?.coll, second.ns?.coll] == ["a", "b"])
                #expect(second.fullDocument?["x"] == 2)
                await stream.close()
            }
        }
    }

    @Test func droppingTheCollectionEndsItsStreamWithInvalidate() async throws {
        try await withDatabase("mongoinvalidate") { _, db in
            let items = db.collection("items")
            try await items.insertOne(["x": 1])
            let stream = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            try await items.drop()
            var it = stream.makeAsyncIterator()
            let drop = try await nextEvent(&it)
            #expect(drop.operationType == .drop)
            let invalidate = try await nextEvent(&it)
            #expect(invalidate.operationType == .invalidate)
            // startAfter an invalidate opens a new stream on the (re-created) collection.
            let reopened = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200, startAfter: invalidate.id))
            try await items.insertOne(["x": 2])
            var it2 = reopened.makeAsyncIterator()
            #expect(try await nextEvent(&it2).fullDocument?["x"] == 2)
            await reopened.close()
            await stream.close()
        }
    }

    @Test func renameAndDropDatabaseEvents() async throws {
        try await withDatabase("mongorename") { client, db in
            let a = db.collection("a")
            try await a.insertOne(["x": 1])
            let collectionStream = try await a.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            let databaseStream = try await db.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            try await client.runCommand(["renameCollection": .string("\(db.name).a"), "to": .string("\(db.name).b")])
            var it = collectionStream.makeAsyncIterator()
            let rename = try await nextEvent(&it)
            #expect(rename.operationType == .rename)
            #expect(rename.ns == Namespace(db: db.name, coll: "a"))
            #expect(rename.to == Namespace(db: db.name, coll: "b"))
            #expect(try await nextEvent(&it).operationType == .invalidate)
            await collectionStream.close()

            try await db.drop()
            var dbIt = databaseStream.makeAsyncIterator()
            var kinds: [OperationType] = []
            while kinds.last != .invalidate { kinds.append(try await nextEvent(&dbIt).operationType) }
            #expect(kinds.first == .rename)
            #expect(Array(kinds.suffix(2)) == [.dropDatabase, .invalidate])
            #expect(kinds.dropFirst().dropLast(2).allSatisfy { $0 == .drop })
            await databaseStream.close()
        }
    }

    @Test func aPipelineFiltersEvents() async throws {
        try await withDatabase("mongopipeline") { _, db in
            let items = db.collection("items", as: Item.self)
            let stream = try await items.watch(
                [["$match": ["operationType": "insert", "fullDocument.i": ["$gte": 3]]]], options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            try await insert(1...4, into: db)
            #expect(try await read(2, from: stream) == [3, 4])
            await stream.close()
        }
    }

    @Test func standaloneServerRefusesChangeStreamsClearly() async throws {
        let client = try makeClient(uri: TestEnvironment.mongoStandaloneURI())
        let db = client.database(uniqueName("mongostandalone"))
        try await db.collection("items").insertOne(["x": 1])
        let error = await #expect(throws: MongoError.self) { try await db.collection("items").watch() }
        #expect(error?.domain == .server)
        #expect(error?.code == 40573)
        #expect(error?.message.contains("replica set") == true)
        try await db.drop()
        await client.close()
    }
}
