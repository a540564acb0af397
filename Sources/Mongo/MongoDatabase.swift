// MongoDatabase: a database handle (a name and a client; nothing is sent until used).

import BSON
import CMongoC

/// A database of a ``MongoClient``.
public struct MongoDatabase: Sendable {
    /// The client the handle belongs to.
    public let client: MongoClient
    /// The database name.
    public let name: String

    init(client: MongoClient, name: String) {
        self.client = client
        self.name = name
    }

    /// A collection whose documents are `T` (encoded and decoded with ``BSONEncoder`` /
    /// ``BSONDecoder``).
    public func collection<T: Codable & Sendable>(_ name: String, as type: T.Type) -> MongoCollection<T> {
        MongoCollection(database: self, name: name)
    }

    /// A collection of raw documents.
    public func collection(_ name: String) -> MongoCollection<BSONDocument> {
        MongoCollection(database: self, name: name)
    }

    /// Runs `mongoc_database_*` calls on the client's threads.
    @discardableResult
    func withDatabase<R: Sendable>(_ body: @escaping @Sendable (OpaquePointer) throws -> R) async throws -> R {
        let name = self.name
        return try await client.withConnection { connection in
            let db = mongoc_client_get_database(connection, name)!
            defer { mongoc_database_destroy(db) }
            return try body(db)
        }
    }

    /// Runs a command on this database and returns the reply (which, on a replica set, carries
    /// `operationTime`).
    /// - Throws: ``MongoError`` with the reply attached when the server answers `ok: 0`.
    @discardableResult
    public func runCommand(_ command: BSONDocument) async throws -> BSONDocument {
        try await withDatabase { db in
            try withBSON([command]) { p in
                try withReply { reply, error in mongoc_database_command_with_opts(db, p[0], nil, nil, reply, error) }
            }
        }
    }

    /// Drops the database (with the client's write concern).
    public func drop() async throws {
        try await withDatabase { db in
            try withReply { _, error in mongoc_database_drop_with_opts(db, nil, error) }
        }
    }

    /// The names of the collections in this database.
    public func listCollectionNames() async throws -> [String] {
        try await withDatabase { db in
            var names: [String] = []
            try withReply { _, error in
                guard let list = mongoc_database_get_collection_names_with_opts(db, nil, error) else { return false }
                defer { bson_strfreev(list) }
                var i = 0
                while let name = list[i] {
                    names.append(String(cString: name))
                    i += 1
                }
                return true
            }
            return names
        }
    }

    /// Watches every collection of this database. See ``MongoCollection/watch(_:options:)``.
    public func watch<U: Decodable & Sendable>(
        _ pipeline: [BSONDocument] = [], options: ChangeStreamOptions = .init(), as type: U.Type = BSONDocument.self
    ) async throws -> ChangeStream<U> {
        try await ChangeStream<U>.open(client: client, target: .database(name), pipeline: pipeline, options: options)
    }
}
