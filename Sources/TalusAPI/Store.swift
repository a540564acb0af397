// The API's view of the `talus` database: typed collections and the indexes the API's queries
// need (DESIGN §3: indexes are declared by the code that needs them).

import BSON
import Foundation
import Logging
import Mongo
import TalusModel

/// Typed handles on every collection the API reads or writes.
public struct APIStore: Sendable {
    public let database: MongoDatabase
    let os: MongoCollection<OSDocument>
    let images: MongoCollection<ImageDocument>
    let uploads: MongoCollection<UploadDocument>
    let code: MongoCollection<CodeDocument>
    let tasks: MongoCollection<TaskDocument>
    let jobs: MongoCollection<JobDocument>
    let results: MongoCollection<ResultDocument>
    let crashes: MongoCollection<CrashDocument>
    let slaves: MongoCollection<SlaveDocument>
    let users: MongoCollection<UserDocument>
    let tokens: MongoCollection<TokenDocument>
    let filesets: MongoCollection<FileSetDocument>
    let files: MongoCollection<StoredFileDocument>
    let chunks: MongoCollection<FileChunkDocument>

    public init(database: MongoDatabase) {
        self.database = database
        func c<T: TalusDocument>(_ t: T.Type) -> MongoCollection<T> { database.collection(T.collection.rawValue, as: T.self) }
        os = c(OSDocument.self); images = c(ImageDocument.self); uploads = c(UploadDocument.self)
        code = c(CodeDocument.self); tasks = c(TaskDocument.self); jobs = c(JobDocument.self)
        results = c(ResultDocument.self); crashes = c(CrashDocument.self); slaves = c(SlaveDocument.self)
        users = c(UserDocument.self); tokens = c(TokenDocument.self); filesets = c(FileSetDocument.self)
        files = database.collection(StoredFileDocument.collection.rawValue, as: StoredFileDocument.self)
        chunks = database.collection(FileChunkDocument.collection.rawValue, as: FileChunkDocument.self)
    }

    /// The indexes the API relies on. Names are MongoDB's defaults (keys joined), so another
    /// daemon declaring the same keys with the same options is a no-op, not a conflict.
    public static let indexes: [(Collection, IndexModel)] = [
        (.users, IndexModel(keys: ["name": 1], options: .init(unique: true))),
        (.tokens, IndexModel(keys: ["hash": 1], options: .init(unique: true))),
        (.tokens, IndexModel(keys: ["user": 1, "_id": -1])),
        (.os, IndexModel(keys: ["name": 1], options: .init(unique: true))),
        (.images, IndexModel(keys: ["name": 1], options: .init(unique: true))),
        (.images, IndexModel(keys: ["base": 1])),
        (.uploads, IndexModel(keys: ["expires": 1], options: .init(expireAfterSeconds: 0))),
        (.code, IndexModel(keys: ["name": 1, "committed": -1])),
        (.tasks, IndexModel(keys: ["name": 1], options: .init(unique: true))),
        (.jobs, IndexModel(keys: ["task": 1, "_id": -1])),
        (.jobs, IndexModel(keys: ["status.name": 1, "_id": -1])),
        (.results, IndexModel(keys: ["job": 1, "_id": -1])),
        (.crashes, IndexModel(keys: ["job": 1, "_id": -1])),
        (.filesets, IndexModel(keys: ["name": 1], options: .init(unique: true))),
        (.filesets, IndexModel(keys: ["files.id": 1])),
        (.filesFiles, IndexModel(keys: ["filename": 1, "uploadDate": 1])),
        (.filesChunks, IndexModel(keys: ["files_id": 1, "n": 1], options: .init(unique: true))),
    ]

    /// Creates the indexes (idempotent).
    public func ensureIndexes() async throws {
        let grouped = Dictionary(grouping: Self.indexes, by: { $0.0 })
        for (collection, models) in grouped {
            try await database.collection(collection.rawValue).createIndexes(models.map(\.1))
        }
    }
}
