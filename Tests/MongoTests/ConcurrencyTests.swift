// Many tasks on few threads and connections: no deadlock, nothing lost.

import BSON
import Foundation
import Mongo
import Synchronization
import TalusTestSupport
import Testing

@Suite struct ConcurrencyTests {
    @Test(.timeLimit(.minutes(2))) func twoHundredConcurrentInsertsWhileAStreamWatches() async throws {
        // Two threads and four connections for 200 writers and a change stream.
        let small = MongoClient.Configuration(threadPoolSize: 2, maxPoolSize: 4)
        try await withDatabase("mongoconc", configuration: small) { client, db in
            let items = db.collection("items", as: Item.self)
            let stream = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            let seen = Mutex(Set<Int>())
            let watcher = Task {
                for try await event in stream {
                    let count = seen.withLock { s in
                        s.insert(event.fullDocument!.i)
                        return s.count
                    }
                    if count == 200 { return }
                }
            }
            let writer = try makeClient(configuration: small)
            let writerItems = writer.database(db.name).collection("items", as: Item.self)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<200 {
                    group.addTask {
                        // Half through the watched client, half through another one.
                        try await (i % 2 == 0 ? items : writerItems).insertOne(Item(i: i))
                    }
                }
                try await group.waitForAll()
            }
            await writer.close()
            try await waitUntil("the stream sees 200 inserts", timeout: .seconds(60)) { seen.withLock { $0.count } == 200 }
            try await watcher.value
            #expect(seen.withLock { $0 } == Set(0..<200))
            #expect(try await client.database(db.name).collection("items").countDocuments() == 200)
            await stream.close()
        }
    }

    @Test(.timeLimit(.minutes(2))) func moreOpenCursorsThanThreadsMakeProgress() async throws {
        // Five cursors each hold a connection; two threads serve them and 40 other operations.
        let config = MongoClient.Configuration(threadPoolSize: 2, maxPoolSize: 6)
        try await withDatabase("mongocursors", configuration: config) { _, db in
            let docs = db.collection("docs")
            try await docs.insertMany((0..<100).map { ["i": .int32(Int32($0))] })
            var iterators: [MongoCursor<BSONDocument>.Iterator] = []
            for _ in 0..<5 {
                iterators.append(try await docs.findCursor([:], options: FindOptions(sort: ["i": 1], batchSize: 3)).makeAsyncIterator())
            }
            async let counts: [Int] = withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<40 { group.addTask { try await docs.countDocuments() } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            var totals = [Int](repeating: 0, count: 5)
            var active = true
            while active {
                active = false
                for k in 0..<5 {
                    if let doc = try await iterators[k].next() {
                        #expect(doc["i"]?.intValue == totals[k])
                        totals[k] += 1
                        active = true
                    }
                }
            }
            #expect(totals == [100, 100, 100, 100, 100])
            #expect(try await counts == [Int](repeating: 100, count: 40))
        }
    }

    @Test(.timeLimit(.minutes(1))) func waitingForAConnectionIsCancellable() async throws {
        let one = MongoClient.Configuration(threadPoolSize: 1, maxPoolSize: 1)
        try await withDatabase("mongopermit", configuration: one) { client, db in
            let docs = db.collection("docs")
            try await docs.insertMany((0..<10).map { ["i": .int32(Int32($0))] })
            do {
                // The only connection is held by this cursor.
                let cursor = try await docs.findCursor([:], options: FindOptions(batchSize: 2))
                var it = cursor.makeAsyncIterator()
                _ = try await it.next()
                let blocked = Task { try await docs.countDocuments() }
                blocked.cancel()
                await #expect(throws: CancellationError.self) { try await blocked.value }
                // Finishing the cursor returns the connection.
                while try await it.next() != nil {}
            }
            #expect(try await docs.countDocuments() == 10)
            _ = client
        }
    }
}
