// The master's view of the database: collection handles, the indexes the master's queries
// need (declared here, by the code that needs them), and deterministic ids that make replayed
// writes overwrite instead of duplicate.

import BSON
import Foundation
import Mongo
import TalusCore
import TalusModel

/// Collection handles of one database.
struct MasterStore: Sendable {
    let database: MongoDatabase

    init(database: MongoDatabase) { self.database = database }

    func raw(_ collection: TalusModel.Collection) -> MongoCollection<BSONDocument> {
        database.collection(collection.rawValue)
    }

    var jobs: MongoCollection<BSONDocument> { raw(.jobs) }
    var parts: MongoCollection<PartDocument> { database.collection(TalusModel.Collection.parts.rawValue, as: PartDocument.self) }
    var runs: MongoCollection<RunDocument> { database.collection(TalusModel.Collection.runs.rawValue, as: RunDocument.self) }
    var results: MongoCollection<BSONDocument> { raw(.results) }
    var crashes: MongoCollection<BSONDocument> { raw(.crashes) }
    var slaves: MongoCollection<BSONDocument> { raw(.slaves) }
    var state: MongoCollection<BSONDocument> { raw(.state) }
    var files: MongoCollection<BSONDocument> { raw(.filesFiles) }
    var chunks: MongoCollection<BSONDocument> { raw(.filesChunks) }

    /// Slaves are forgotten after a day without heartbeats.
    static let slaveTTL = 86_400

    /// Creates the indexes of the master's queries (idempotent).
    func ensureIndexes() async throws {
        try await jobs.createIndexes([IndexModel(keys: ["status.name": 1])])
        try await raw(.parts).createIndexes([IndexModel(keys: ["job": 1, "status.name": 1])])
        try await raw(.runs).createIndexes([
            IndexModel(keys: ["job": 1, "state": 1]), IndexModel(keys: ["slave": 1, "state": 1]),
        ])
        try await results.createIndexes([IndexModel(keys: ["job": 1, "_id": 1])])
        try await crashes.createIndexes([IndexModel(keys: ["job": 1, "bucket": 1], options: IndexOptions(unique: true))])
        try await slaves.createIndexes([
            IndexModel(keys: ["uuid": 1], options: IndexOptions(unique: true)),
            IndexModel(keys: ["last_heartbeat": 1], options: IndexOptions(expireAfterSeconds: Self.slaveTTL)),
            IndexModel(keys: ["status.name": 1]),
        ])
        try await chunks.createIndexes([IndexModel(keys: ["files_id": 1, "n": 1], options: IndexOptions(unique: true))])
        try await files.createIndexes([IndexModel(keys: ["filename": 1, "uploadDate": 1])])
    }

    /// An ObjectId that is a function of `key` (the first 12 bytes of its SHA-256), so that a
    /// replayed event writes the same document again instead of a second one.
    static func derivedID(_ key: String) -> ObjectId {
        ObjectId(bytes: Array(sha256(Array(key.utf8)).prefix(12)))!
    }

    /// The id of the file `name` of run `run` in the `files` bucket.
    static func fileID(run: String, name: String) -> ObjectId { derivedID("file\u{0}\(run)\u{0}\(name)") }
}

extension BSONEncoder {
    /// Encodes `value` as a BSON value, for `$set`/`$push` operands.
    static func value(_ value: some Encodable) throws -> BSONValue { try BSONEncoder().encodeValue(value) }
}

extension BSONDocument {
    /// `self` without the given keys (for `$set` of a whole model minus its identity).
    func removing(_ keys: Set<String>) -> BSONDocument {
        BSONDocument(filter { !keys.contains($0.key) }.map { ($0.key, $0.value) })
    }
}

/// Truncates `text` to `limit` characters with an ellipsis, for reasons stored on documents.
func bounded(_ text: String, _ limit: Int = 500) -> String {
    text.count <= limit ? text : String(text.prefix(limit - 1)) + "…"
}
