// Bulk writes against the real SecantusDB replica set: mixed operations in one batch, write
// errors reported per operation (ordered and unordered), upserts, and pipeline updates.

import BSON
import Foundation
import Mongo
import TalusTestSupport
import Testing

@Suite struct BulkWriteTests {
    @Test func mixedOperationsInOneBatch() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            try await docs.insertMany([["_id": "a", "n": 1], ["_id": "b", "n": 2], ["_id": "c", "n": 3]])
            let result = try await docs.bulkWrite([
                .insertOne(["_id": "d", "n": 4]),
                .insertOne(["n": 5]),
                .updateOne(filter: ["_id": "a"], update: ["$inc": ["n": 10]]),
                .updateMany(filter: ["n": ["$gte": 2]], update: ["$set": ["big": true]]),
                .replaceOne(filter: ["_id": "c"], replacement: ["n": 30]),
                .updateOne(filter: ["_id": "z"], update: ["$set": ["n": 26]], upsert: true),
                .deleteOne(filter: ["_id": "b"]),
            ])
            #expect(result.insertedCount == 2)
            #expect(result.upsertedCount == 1)
            #expect(result.upsertedIds[5] == "z")
            #expect(result.deletedCount == 1)
            #expect(result.writeErrors.isEmpty)
            #expect(try await docs.findOne(["_id": "a"])?["n"] == .int64(11))
            #expect(try await docs.findOne(["_id": "c"]) == ["_id": "c", "n": 30])
            #expect(try await docs.findOne(["_id": "b"]) == nil)
            // a, d and the generated one; c lost the field when replaced, b was deleted, z came later.
            #expect(try await docs.countDocuments(["big": true]) == 3)
            #expect(try await docs.countDocuments() == 5)
            #expect(try await docs.bulkWrite([]).insertedCount == 0)
        }
    }

    @Test func duplicateKeysAreReportedPerOperation() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            try await docs.insertOne(["_id": 1])
            // Unordered: every other operation is applied; the duplicate is reported by index.
            let unordered = try await docs.bulkWrite(
                [.insertOne(["_id": 0]), .insertOne(["_id": 1]), .insertOne(["_id": 2])], ordered: false)
            #expect(unordered.insertedCount == 2)
            #expect(unordered.writeErrors.map(\.index) == [1])
            #expect(unordered.writeErrors.first?.isDuplicateKey == true)
            try unordered.throwUnlessOnlyDuplicates()
            // Ordered: the batch stops at the duplicate.
            let ordered = try await docs.bulkWrite([.insertOne(["_id": 3]), .insertOne(["_id": 3]), .insertOne(["_id": 4])])
            #expect(ordered.insertedCount == 1)
            #expect(ordered.writeErrors.map(\.index) == [1])
            #expect(try await docs.countDocuments() == 4)
        }
    }

    @Test func pipelineUpdatesCapAValue() async throws {
        try await withDatabase { _, db in
            let jobs = db.collection("jobs")
            try await jobs.insertOne(["_id": "j", "limit": 50, "counted": 48, "progress": 48])
            let pipeline: BSONDocument = [
                "0": ["$set": ["counted": ["$add": ["$counted", 5]]]],
                "1": ["$set": ["progress": ["$min": ["$limit", "$counted"]]]],
            ]
            let result = try await jobs.bulkWrite([.updateOne(filter: ["_id": "j"], update: pipeline)])
            #expect(result.modifiedCount == 1)
            let doc = try await jobs.findOne(["_id": "j"])
            #expect(doc?["counted"]?.intValue == 53)
            #expect(doc?["progress"]?.intValue == 50)
        }
    }

    @Test func aMalformedOperationThrowsBeforeAnythingIsSent() async throws {
        try await withDatabase { _, db in
            let docs = db.collection("docs")
            // An update document without operators is refused by libmongoc before sending.
            var refused = false
            do {
                try await docs.bulkWrite([.insertOne(["_id": 1]), .updateOne(filter: ["_id": 1], update: ["n": 2])])
            } catch is MongoError {
                refused = true
            }
            #expect(refused)
            let count = try await docs.countDocuments()
            #expect(count == 0)
        }
    }
}
