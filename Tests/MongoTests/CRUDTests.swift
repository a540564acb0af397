// CRUD, queries, updates, find-and-modify, counting, aggregation and commands against the real
// SecantusDB replica set.

import BSON
import Foundation
import Mongo
import TalusTestSupport
import Testing

@Suite struct CRUDTests {
    @Test func insertAndFindTypedModels() async throws {
        try await withDatabase { _, db in
            let jobs = db.collection("jobs", as: Job.self)
            let job = Job(name: "fuzz", priority: 5, tags: ["a"], params: ["iterations": 10, "dict": ["x", "y"]], note: "n")
            let id = try await jobs.insertOne(job)
            #expect(id == .objectId(job._id))
            let found = try await jobs.findOne(["_id": id])
            #expect(found == job)
            // The raw document has BSON types, not strings.
            let raw = try await db.collection("jobs").findOne(["_id": id])
            #expect(raw?["_id"] == .objectId(job._id))
            #expect(raw?["created"] == .datetime(job.created))
            #expect(raw?["priority"] == .int64(5))
            #expect(raw?.hasKey("status") == true)
        }
    }

    @Test func insertGeneratesMissingIdsAndReturnsThemInOrder() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            let one = try await docs.insertOne(["k": 0])
            #expect(one.objectIdValue != nil)
            let ids = try await docs.insertMany((1...5).map { ["k": .int64(Int64($0))] })
            #expect(ids.count == 5)
            for (i, id) in ids.enumerated() {
                let doc = try await docs.findOne(["_id": id])
                #expect(doc?["k"] == .int64(Int64(i + 1)))
            }
            #expect(try await docs.insertMany([]) == [])
            let explicit = try await docs.insertOne(["_id": "mine", "k": 9])
            #expect(explicit == "mine")
        }
    }

    @Test func findSortsLimitsSkipsAndProjects() async throws {
        try await withDatabase { _, db in
            let jobs = db.collection("jobs", as: Job.self)
            try await jobs.insertMany((0..<20).map { Job(name: "j\($0)", priority: $0 % 5) })
            let top = try await jobs.find(
                ["priority": ["$gte": 2]], options: FindOptions(sort: ["priority": -1, "name": 1], limit: 3, skip: 1))
            // priority 4 holds j14, j19, j4, j9 in name order; skip one, take three.
            #expect(top.map(\.name) == ["j19", "j4", "j9"])
            let names = try await db.collection("jobs").find(
                [:], options: FindOptions(sort: ["name": 1], limit: 2, projection: ["name": 1, "_id": 0]))
            #expect(names == [["name": "j0"], ["name": "j1"]])
            #expect(try await jobs.find(["priority": 99]).isEmpty)
            #expect(try await jobs.findOne(["priority": 99]) == nil)
        }
    }

    @Test func cursorsStreamEveryDocumentAcrossBatches() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            try await docs.insertMany((0..<250).map { ["i": .int32(Int32($0))] })
            let cursor = try await docs.findCursor([:], options: FindOptions(sort: ["i": 1], batchSize: 7))
            var seen: [Int] = []
            for try await doc in cursor { seen.append(doc["i"]!.intValue!) }
            #expect(seen == Array(0..<250))
            // An abandoned cursor returns its connection; the collection stays usable.
            for _ in 0..<3 {
                let partial = try await docs.findCursor([:], options: FindOptions(batchSize: 5))
                var it = partial.makeAsyncIterator()
                _ = try await it.next()
            }
            #expect(try await docs.countDocuments() == 250)
            let agg = try await docs.aggregateCursor([["$match": ["i": ["$lt": 10]]], ["$sort": ["i": -1]]], options: AggregateOptions(batchSize: 3))
            #expect(try await agg.toArray().map { $0["i"]!.intValue! } == Array((0..<10).reversed()))
        }
    }

    @Test func updatesWithOperatorsReportMatchedAndModified() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            let id = try await docs.insertOne(["n": 1, "log": [], "set": ["a"]])
            var r = try await docs.updateOne(["_id": id], ["$set": ["status.name": "running"], "$inc": ["n": 2]])
            #expect(r.matchedCount == 1 && r.modifiedCount == 1 && r.upsertedId == nil)
            for i in 0..<5 {
                try await docs.updateOne(["_id": id], ["$push": ["log": ["$each": [.int64(Int64(i))], "$slice": -3]]])
            }
            r = try await docs.updateOne(["_id": id], ["$addToSet": ["set": "a"]])
            #expect(r.matchedCount == 1 && r.modifiedCount == 0)
            try await docs.updateOne(["_id": id], ["$addToSet": ["set": ["$each": ["b", "a", "c"]]]])
            let doc = try #require(try await docs.findOne(["_id": id]))
            #expect(doc["n"]?.intValue == 3)
            #expect(doc["status"]?["name"] == "running")
            #expect(doc["log"]?.arrayValue?.compactMap(\.intValue) == [2, 3, 4])
            #expect(doc["set"] == ["a", "b", "c"])

            try await docs.insertMany([["g": 1], ["g": 1], ["g": 2]])
            r = try await docs.updateMany(["g": 1], ["$set": ["seen": true]])
            #expect(r.matchedCount == 2 && r.modifiedCount == 2)
            #expect(try await docs.countDocuments(["seen": true]) == 2)
        }
    }

    @Test func upsertAndReplace() async throws {
        try await withDatabase { _, db in
            let jobs = db.collection("jobs", as: Job.self)
            let r = try await jobs.updateOne(
                ["name": "new"], ["$set": ["priority": 7], "$setOnInsert": ["tags": ["fresh"]]], options: UpdateOptions(upsert: true))
            #expect(r.matchedCount == 0 && r.upsertedCount == 1)
            let upsertedId = try #require(r.upsertedId)
            let raw = try await db.collection("jobs").findOne(["_id": upsertedId])
            #expect(raw?["priority"] == .int64(7) && raw?["name"] == "new")

            var job = Job(name: "replace-me", priority: 1)
            try await jobs.insertOne(job)
            job.priority = 42
            job.note = "replaced"
            let rr = try await jobs.replaceOne(["_id": .objectId(job._id)], job)
            #expect(rr.matchedCount == 1 && rr.modifiedCount == 1)
            #expect(try await jobs.findOne(["_id": .objectId(job._id)]) == job)
        }
    }

    @Test func findOneAndUpdateReturnsBeforeOrAfter() async throws {
        try await withDatabase { _, db in
            let jobs = db.collection("jobs", as: Job.self)
            try await jobs.insertMany([Job(name: "a", priority: 1), Job(name: "b", priority: 9), Job(name: "c", priority: 5)])
            // Highest priority first, returned as it was.
            let before = try await jobs.findOneAndUpdate(
                ["status.name": "run"], ["$set": ["status.name": "running"]],
                options: FindOneAndModifyOptions(sort: ["priority": -1]))
            #expect(before?.name == "b" && before?.status.name == "run")
            let after = try await jobs.findOneAndUpdate(
                ["status.name": "run"], ["$set": ["status.name": "running"], "$inc": ["priority": 100]],
                options: FindOneAndModifyOptions(returnDocument: .after, sort: ["priority": -1]))
            #expect(after?.name == "c" && after?.priority == 105 && after?.status.name == "running")
            // A projection shapes the returned document.
            let projected = try await db.collection("jobs").findOneAndUpdate(
                ["name": "a"], ["$set": ["note": "x"]], options: FindOneAndModifyOptions(returnDocument: .after, projection: ["note": 1, "_id": 0]))
            #expect(projected == ["note": "x"])
            #expect(try await jobs.findOneAndUpdate(["name": "zzz"], ["$set": ["note": "y"]]) == nil)
            let upserted = try await db.collection("jobs").findOneAndUpdate(
                ["name": "zzz"], ["$set": ["note": "y"]], options: FindOneAndModifyOptions(returnDocument: .after, upsert: true))
            #expect(upserted?["name"] == "zzz" && upserted?["note"] == "y")
            let deleted = try await jobs.findOneAndDelete(["name": "a"])
            #expect(deleted?.note == "x")
            #expect(try await jobs.countDocuments(["name": "a"]) == 0)
            var replacement = try #require(try await jobs.findOne(["name": "b"]))
            replacement.tags = ["replaced"]
            let replaced = try await jobs.findOneAndReplace(["name": "b"], replacement, options: FindOneAndModifyOptions(returnDocument: .after))
            #expect(replaced == replacement)
        }
    }

    @Test func countAggregateAndDelete() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            try await docs.insertMany((0..<30).map { ["g": .string($0 % 3 == 0 ? "x" : "y"), "v": .int32(Int32($0))] })
            #expect(try await docs.countDocuments() == 30)
            #expect(try await docs.countDocuments(["g": "x"]) == 10)
            #expect(try await docs.countDocuments([:], options: CountOptions(limit: 7)) == 7)
            #expect(try await docs.countDocuments([:], options: CountOptions(skip: 25)) == 5)

            struct Group: Codable, Sendable, Equatable { var _id: String; var n: Int; var total: Int }
            let groups = try await docs.aggregate(
                [["$group": ["_id": "$g", "n": ["$sum": 1], "total": ["$sum": "$v"]]], ["$sort": ["_id": 1]]], as: Group.self)
            #expect(groups == [Group(_id: "x", n: 10, total: 135), Group(_id: "y", n: 20, total: 300)])

            #expect(try await docs.deleteOne(["g": "x"]) == 1)
            #expect(try await docs.deleteMany(["g": "y"]) == 20)
            #expect(try await docs.deleteMany(["g": "nothing"]) == 0)
            #expect(try await docs.countDocuments() == 9)
        }
    }

    @Test func uniqueIndexViolationsMapToDuplicateKey() async throws {
        try await withDatabase { _, db in
            let images = db.collection("images")
            let name = try await images.createIndex(["name": 1], options: IndexOptions(unique: true))
            #expect(name == "name_1")
            try await images.insertOne(["name": "debian"])
            let insertError = await #expect(throws: MongoError.self) { try await images.insertOne(["name": "debian"]) }
            #expect(insertError?.isDuplicateKey == true)
            #expect(insertError?.domain == .server && insertError?.code == 11000)
            #expect(insertError?.isRetryable == false && insertError?.isNetworkError == false)

            let manyError = await #expect(throws: MongoError.self) {
                try await images.insertMany([["name": "a"], ["name": "debian"], ["name": "b"]])
            }
            #expect(manyError?.isDuplicateKey == true)
            #expect(try await images.countDocuments(["name": "a"]) == 1)
            #expect(try await images.countDocuments(["name": "b"]) == 0)  // ordered: stopped at the error

            try await images.insertOne(["name": "other"])
            let updateError = await #expect(throws: MongoError.self) {
                try await images.updateOne(["name": "other"], ["$set": ["name": "debian"]])
            }
            #expect(updateError?.isDuplicateKey == true)
        }
    }

    @Test func indexOptionsAreCreatedAsSpecified() async throws {
        try await withDatabase { _, db in
            let slaves = db.collection("slaves")
            let names = try await slaves.createIndexes([
                IndexModel(keys: ["last_heartbeat": 1], options: IndexOptions(expireAfterSeconds: 30)),
                IndexModel(keys: ["uuid": 1, "hostname": -1], options: IndexOptions(name: "uuid_host", unique: true)),
                IndexModel(keys: ["status.name": 1], options: IndexOptions(partialFilterExpression: ["status.name": ["$eq": "online"]])),
            ])
            #expect(names == ["last_heartbeat_1", "uuid_host", "status.name_1"])
            let specs = try await slaves.listIndexes()
            let byName = Dictionary(uniqueKeysWithValues: specs.compactMap { spec in spec["name"]?.stringValue.map { ($0, spec) } })
            #expect(Set(byName.keys) == ["_id_", "last_heartbeat_1", "uuid_host", "status.name_1"])
            #expect(byName["last_heartbeat_1"]?["expireAfterSeconds"]?.intValue == 30)
            #expect(byName["uuid_host"]?["unique"]?.boolValue == true)
            #expect(byName["uuid_host"]?["key"] == ["uuid": .int32(1), "hostname": .int32(-1)]
                || byName["uuid_host"]?["key"] == ["uuid": 1, "hostname": -1])
            #expect(byName["status.name_1"]?["partialFilterExpression"] == ["status.name": ["$eq": "online"]])
            try await slaves.dropIndex("uuid_host")
            #expect(try await slaves.listIndexes().count == 3)
        }
    }

    /// The TTL monitor removes expired documents within about 60 s (it runs once a minute), so
    /// this test waits up to 150 s; it runs in parallel with the others.
    @Test(.timeLimit(.minutes(4))) func ttlIndexRemovesExpiredDocuments() async throws {
        try await withDatabase("mongottl") { _, db in
            let docs = db.collection("uploads")
            try await docs.createIndex(["expires": 1], options: IndexOptions(expireAfterSeconds: 0))
            try await docs.insertMany([
                ["name": "old", "expires": .datetime(Date(timeIntervalSinceNow: -3600))],
                ["name": "new", "expires": .datetime(Date(timeIntervalSinceNow: 3600))],
            ])
            try await waitUntil("the TTL monitor removes the expired document", timeout: .seconds(150), interval: .seconds(1)) {
                try await docs.countDocuments(["name": "old"]) == 0
            }
            #expect(try await docs.countDocuments(["name": "new"]) == 1)
        }
    }

    @Test func commandsAndOperationTime() async throws {
        try await withDatabase { client, db in
            let reply = try await db.runCommand(["ping": 1])
            #expect(reply["ok"]?.doubleValue == 1)
            let t1 = try await client.currentClusterTime()
            try await db.collection("docs").insertOne(["x": 1])
            let t2 = try await client.currentClusterTime()
            #expect(t2 > t1)
            let insertReply = try await db.runCommand(["insert": "docs", "documents": [["x": 2]]])
            #expect(insertReply["n"]?.intValue == 1)
            #expect(insertReply["operationTime"]?.timestampValue.map { $0 >= t2 } == true)
            #expect(try await db.listCollectionNames() == ["docs"])
            #expect(try await client.listDatabaseNames().contains(db.name))
            try await db.collection("docs").drop()
            try await db.collection("docs").drop()  // dropping a missing collection is fine
            #expect(try await db.listCollectionNames() == [])
        }
    }

    @Test func serverAndCodecErrorsAreMapped() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            try await docs.insertOne(["name": 5])
            let bad = await #expect(throws: MongoError.self) { try await docs.updateOne([:], ["$nonsense": ["a": 1]]) }
            #expect(bad?.domain == .server && bad?.isRetryable == false)
            let command = await #expect(throws: MongoError.self) { try await db.runCommand(["noSuchCommand": 1]) }
            #expect(command?.domain == .server && command?.reply != nil)
            // A stored document that does not fit the model: a codec error, not a crash.
            let typed = db.collection("docs", as: Job.self)
            let codec = await #expect(throws: MongoError.self) { try await typed.find() }
            #expect(codec?.domain == .codec)
            let uriError = #expect(throws: MongoError.self) { try MongoClient(uri: "not a uri") }
            #expect(uriError?.domain == .command || uriError?.domain == .client || uriError != nil)
        }
    }

    @Test func everyBSONTypeRoundTripsThroughTheServer() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("types")
            let doc: BSONDocument = [
                "_id": .objectId(ObjectId()), "double": 1.5, "string": "s✓", "doc": ["a": [1, 2]], "array": [nil, true],
                "binary": .binary(BSONBinary(subtype: .userDefined, bytes: [1, 2, 3])),
                "uuid": .binary(BSONBinary(subtype: .uuid, bytes: Array(0..<16))), "bool": false,
                "date": .datetime(Date(timeIntervalSince1970: -12.345)), "null": nil,
                "regex": .regex(BSONRegex(pattern: "^x", options: "i")), "js": .javascript("1"), "int32": .int32(-7),
                "ts": .timestamp(BSONTimestamp(t: 5, i: 6)), "int64": .int64(1 << 40),
                "decimal": .decimal128(BSONDecimal128(high: 0x3040_0000_0000_0000, low: 12345)), "min": .minKey,
                "max": .maxKey,
            ]
            try await docs.insertOne(doc)
            let back = try await docs.findOne(["_id": doc["_id"]!])
            #expect(back == doc)
        }
    }
}
