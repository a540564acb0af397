// MongoCollection: CRUD, indexes, aggregation and change streams on one collection, typed by a
// Codable model (or BSONDocument for raw use).

import BSON
import CMongoC

/// A collection whose documents are `T`.
///
/// Filters, updates, sorts and projections are ``BSONDocument``s in MongoDB's query language,
/// e.g. `collection.updateOne(["_id": .objectId(id)], ["$set": ["status.name": "running"]])`.
/// Every call throws ``MongoError``.
public struct MongoCollection<T: Codable & Sendable>: Sendable {
    /// The database the collection is in.
    public let database: MongoDatabase
    /// The collection name.
    public let name: String

    init(database: MongoDatabase, name: String) {
        self.database = database
        self.name = name
    }

    public var client: MongoClient { database.client }
    /// `database.collection`.
    public var namespace: String { "\(database.name).\(name)" }

    /// The same collection with another document type.
    public func withType<U: Codable & Sendable>(_ type: U.Type) -> MongoCollection<U> {
        MongoCollection<U>(database: database, name: name)
    }

    // MARK: Plumbing

    /// Runs `mongoc_collection_*` calls on the client's threads.
    @discardableResult
    func withCollection<R: Sendable>(_ body: @escaping @Sendable (OpaquePointer) throws -> R) async throws -> R {
        let db = database.name, name = self.name
        return try await client.withConnection { connection in
            let collection = mongoc_client_get_collection(connection, db, name)!
            defer { mongoc_collection_destroy(collection) }
            return try body(collection)
        }
    }

    /// One libmongoc call with documents in and a reply out.
    @discardableResult
    func call(
        _ documents: [BSONDocument],
        _ function: @escaping @Sendable (OpaquePointer, [OpaquePointer], OpaquePointer, UnsafeMutablePointer<bson_error_t>) -> Bool
    ) async throws -> BSONDocument {
        try await withCollection { collection in
            try withBSON(documents) { p in try withReply { reply, error in function(collection, p, reply, error) } }
        }
    }

    func encode(_ value: T) throws -> BSONDocument {
        if let document = value as? BSONDocument { return document }
        do {
            return try BSONEncoder().encode(value)
        } catch {
            throw MongoError.codec(error, "cannot encode \(T.self) for \(namespace)")
        }
    }

    func decode(_ document: BSONDocument) throws -> T {
        try Self.decode(document, as: T.self, namespace: namespace)
    }

    static func decode<U: Decodable>(_ document: BSONDocument, as type: U.Type, namespace: String) throws -> U {
        if let same = document as? U { return same }
        do {
            return try BSONDecoder().decode(U.self, from: document)
        } catch {
            throw MongoError.codec(error, "cannot decode \(U.self) from a document of \(namespace)")
        }
    }

    /// The document with an `_id` (a new ObjectId first when it has none), and that id.
    static func withID(_ document: BSONDocument) -> (BSONDocument, BSONValue) {
        if let id = document["_id"] { return (document, id) }
        var doc = document
        let id = BSONValue.objectId(ObjectId())
        doc.prepend(id, forKey: "_id")
        return (doc, id)
    }

    // MARK: Insert

    /// Inserts `value` and returns its `_id` (generated as an ObjectId when the encoded document
    /// has none).
    @discardableResult
    public func insertOne(_ value: T, options: InsertOptions = .init()) async throws -> BSONValue {
        let (doc, id) = Self.withID(try encode(value))
        try await call([doc, options.document(many: false)]) { c, p, r, e in
            mongoc_collection_insert_one(c, p[0], p[1], r, e)
        }
        return id
    }

    /// Inserts `values` in one batch and returns their `_id`s in order. With `ordered` (the
    /// default) the first failure stops the batch; the error's reply lists the `writeErrors`.
    @discardableResult
    public func insertMany(_ values: [T], options: InsertOptions = .init()) async throws -> [BSONValue] {
        guard !values.isEmpty else { return [] }
        let prepared = try values.map { Self.withID(try encode($0)) }
        let docs = prepared.map(\.0)
        let opts = options.document(many: true)
        try await withCollection { c in
            try withBSON(docs + [opts]) { p in
                var pointers: [OpaquePointer?] = Array(p.dropLast())
                return try withReply { r, e in
                    mongoc_collection_insert_many(c, &pointers, pointers.count, p[p.count - 1], r, e)
                }
            }
        }
        return prepared.map(\.1)
    }

    // MARK: Find

    /// All documents matching `filter`, sorted, skipped, limited and projected per `options`.
    /// (A projection must leave the fields `T` requires; use ``withType(_:)`` for partial views.)
    public func find(_ filter: BSONDocument = [:], options: FindOptions = .init()) async throws -> [T] {
        let docs = try await withCollection { c in
            try withBSON([filter, options.document]) { p in
                let cursor = mongoc_collection_find_with_opts(c, p[0], p[1], nil)!
                defer { mongoc_cursor_destroy(cursor) }
                return try CursorCore.drain(cursor)
            }
        }
        let namespace = self.namespace
        return try docs.map { try Self.decode($0, as: T.self, namespace: namespace) }
    }

    /// The first document matching `filter` (per `options.sort`), or nil.
    public func findOne(_ filter: BSONDocument = [:], options: FindOptions = .init()) async throws -> T? {
        var options = options
        options.limit = 1
        return try await find(filter, options: options).first
    }

    /// Documents matching `filter` as an async sequence, fetched batch by batch. The cursor holds
    /// one pooled connection until it is exhausted or dropped. Errors of the first batch (a bad
    /// filter) are thrown here.
    public func findCursor(_ filter: BSONDocument = [:], options: FindOptions = .init()) async throws -> MongoCursor<T> {
        let (db, name) = (database.name, self.name)
        let opts = options.document
        return try await MongoCursor(client: client, batchSize: options.batchSize, namespace: namespace) { connection in
            let collection = mongoc_client_get_collection(connection, db, name)!
            let cursor = try withBSON([filter, opts]) { p in mongoc_collection_find_with_opts(collection, p[0], p[1], nil)! }
            return (collection, cursor)
        }
    }

    /// How many documents match `filter`.
    public func countDocuments(_ filter: BSONDocument = [:], options: CountOptions = .init()) async throws -> Int {
        try await withCollection { c in
            try withBSON([filter, options.document]) { p in
                var count: Int64 = 0
                try withReply { r, e in
                    count = mongoc_collection_count_documents(c, p[0], p[1], nil, r, e)
                    return count >= 0
                }
                return Int(count)
            }
        }
    }

    // MARK: Update, replace, delete

    /// Applies `update` (`$set`, `$inc`, `$push` with `$each`/`$slice`, `$addToSet`...) to the
    /// first document matching `filter`.
    @discardableResult
    public func updateOne(_ filter: BSONDocument, _ update: BSONDocument, options: UpdateOptions = .init()) async throws -> UpdateResult {
        UpdateResult(reply: try await call([filter, update, options.document]) { c, p, r, e in
            mongoc_collection_update_one(c, p[0], p[1], p[2], r, e)
        })
    }

    /// Applies `update` to every document matching `filter`.
    @discardableResult
    public func updateMany(_ filter: BSONDocument, _ update: BSONDocument, options: UpdateOptions = .init()) async throws -> UpdateResult {
        UpdateResult(reply: try await call([filter, update, options.document]) { c, p, r, e in
            mongoc_collection_update_many(c, p[0], p[1], p[2], r, e)
        })
    }

    /// Replaces the first document matching `filter` with `replacement` (its `_id` is kept).
    @discardableResult
    public func replaceOne(_ filter: BSONDocument, _ replacement: T, options: UpdateOptions = .init()) async throws -> UpdateResult {
        let doc = try encode(replacement)
        return UpdateResult(reply: try await call([filter, doc, options.document]) { c, p, r, e in
            mongoc_collection_replace_one(c, p[0], p[1], p[2], r, e)
        })
    }

    /// Deletes the first document matching `filter`; returns how many were deleted (0 or 1).
    @discardableResult
    public func deleteOne(_ filter: BSONDocument, options: DeleteOptions = .init()) async throws -> Int {
        try await call([filter, options.document]) { c, p, r, e in
            mongoc_collection_delete_one(c, p[0], p[1], r, e)
        }["deletedCount"]?.intValue ?? 0
    }

    /// Deletes every document matching `filter`; returns how many were deleted.
    @discardableResult
    public func deleteMany(_ filter: BSONDocument, options: DeleteOptions = .init()) async throws -> Int {
        try await call([filter, options.document]) { c, p, r, e in
            mongoc_collection_delete_many(c, p[0], p[1], r, e)
        }["deletedCount"]?.intValue ?? 0
    }

    // MARK: Find and modify

    /// Atomically applies `update` to the first document matching `filter` (per `options.sort`)
    /// and returns it as it was before, or after with `returnDocument: .after`; nil when nothing
    /// matched and nothing was upserted.
    public func findOneAndUpdate(
        _ filter: BSONDocument, _ update: BSONDocument, options: FindOneAndModifyOptions = .init()
    ) async throws -> T? {
        try await findAndModify(filter, update: update, remove: false, options: options)
    }

    /// Atomically replaces the first document matching `filter`; returns it before or after.
    public func findOneAndReplace(
        _ filter: BSONDocument, _ replacement: T, options: FindOneAndModifyOptions = .init()
    ) async throws -> T? {
        try await findAndModify(filter, update: try encode(replacement), remove: false, options: options)
    }

    /// Atomically deletes the first document matching `filter` and returns it.
    public func findOneAndDelete(_ filter: BSONDocument, options: FindOneAndModifyOptions = .init()) async throws -> T? {
        try await findAndModify(filter, update: nil, remove: true, options: options)
    }

    private func findAndModify(
        _ filter: BSONDocument, update: BSONDocument?, remove: Bool, options: FindOneAndModifyOptions
    ) async throws -> T? {
        var flags = MONGOC_FIND_AND_MODIFY_NONE.rawValue
        if remove { flags |= MONGOC_FIND_AND_MODIFY_REMOVE.rawValue }
        if options.upsert && !remove { flags |= MONGOC_FIND_AND_MODIFY_UPSERT.rawValue }
        if options.returnDocument == .after && !remove { flags |= MONGOC_FIND_AND_MODIFY_RETURN_NEW.rawValue }
        let docs = [filter, update ?? [:], options.sort ?? [:], options.projection ?? [:], options.extra]
        let (hasUpdate, hasSort, hasProjection) = (update != nil, options.sort != nil, options.projection != nil)
        let finalFlags = flags
        let reply = try await call(docs) { c, p, r, e in
            let opts = mongoc_find_and_modify_opts_new()!
            defer { mongoc_find_and_modify_opts_destroy(opts) }
            if hasUpdate { mongoc_find_and_modify_opts_set_update(opts, p[1]) }
            if hasSort { mongoc_find_and_modify_opts_set_sort(opts, p[2]) }
            if hasProjection { mongoc_find_and_modify_opts_set_fields(opts, p[3]) }
            mongoc_find_and_modify_opts_set_flags(opts, mongoc_find_and_modify_flags_t(rawValue: finalFlags))
            mongoc_find_and_modify_opts_append(opts, p[4])
            return mongoc_collection_find_and_modify_with_opts(c, p[0], opts, r, e)
        }
        guard let value = reply["value"]?.documentValue else { return nil }
        return try decode(value)
    }

    // MARK: Aggregation

    /// Runs an aggregation pipeline and returns every result decoded as `U`.
    public func aggregate<U: Decodable & Sendable>(
        _ pipeline: [BSONDocument], options: AggregateOptions = .init(), as type: U.Type = BSONDocument.self
    ) async throws -> [U] {
        let pipelineDoc: BSONDocument = ["pipeline": .array(pipeline.map { .document($0) })]
        let docs = try await withCollection { c in
            try withBSON([pipelineDoc, options.document]) { p in
                let cursor = mongoc_collection_aggregate(c, MONGOC_QUERY_NONE, p[0], p[1], nil)!
                defer { mongoc_cursor_destroy(cursor) }
                return try CursorCore.drain(cursor)
            }
        }
        let namespace = self.namespace
        return try docs.map { try Self.decode($0, as: U.self, namespace: namespace) }
    }

    /// Runs an aggregation pipeline; results arrive batch by batch as an async sequence.
    public func aggregateCursor<U: Decodable & Sendable>(
        _ pipeline: [BSONDocument], options: AggregateOptions = .init(), as type: U.Type = BSONDocument.self
    ) async throws -> MongoCursor<U> {
        let (db, name) = (database.name, self.name)
        let pipelineDoc: BSONDocument = ["pipeline": .array(pipeline.map { .document($0) })]
        let opts = options.document
        return try await MongoCursor(client: client, batchSize: options.batchSize, namespace: namespace) { connection in
            let collection = mongoc_client_get_collection(connection, db, name)!
            let cursor = try withBSON([pipelineDoc, opts]) { p in
                mongoc_collection_aggregate(collection, MONGOC_QUERY_NONE, p[0], p[1], nil)!
            }
            return (collection, cursor)
        }
    }

    // MARK: Indexes

    /// Creates `indexes` (one `createIndexes` command) and returns their names. Creating an index
    /// that exists with the same options does nothing.
    @discardableResult
    public func createIndexes(_ indexes: [IndexModel]) async throws -> [String] {
        let command: BSONDocument = [
            "createIndexes": .string(name), "indexes": .array(indexes.map { .document($0.document) }),
        ]
        try await call([command]) { c, p, r, e in mongoc_collection_write_command_with_opts(c, p[0], nil, r, e) }
        return indexes.map(\.name)
    }

    /// Creates one index on `keys` and returns its name.
    @discardableResult
    public func createIndex(_ keys: BSONDocument, options: IndexOptions = .init()) async throws -> String {
        try await createIndexes([IndexModel(keys: keys, options: options)])[0]
    }

    /// The index specifications (`key`, `name`, `unique`, `expireAfterSeconds`...).
    public func listIndexes() async throws -> [BSONDocument] {
        try await withCollection { c in
            let cursor = mongoc_collection_find_indexes_with_opts(c, nil)!
            defer { mongoc_cursor_destroy(cursor) }
            return try CursorCore.drain(cursor)
        }
    }

    /// Drops the index called `name`.
    public func dropIndex(_ name: String) async throws {
        let command: BSONDocument = ["dropIndexes": .string(self.name), "index": .string(name)]
        try await call([command]) { c, p, r, e in mongoc_collection_write_command_with_opts(c, p[0], nil, r, e) }
    }

    // MARK: Drop

    /// Drops the collection; dropping a collection that does not exist is not an error.
    public func drop() async throws {
        do {
            try await call([]) { c, _, _, e in mongoc_collection_drop_with_opts(c, nil, e) }
        } catch let error as MongoError where error.code == 26 || error.message.contains("ns not found") {
            return
        }
    }

    // MARK: Change streams

    /// Opens a change stream on this collection: an async sequence of ``ChangeEvent``s decoded
    /// with `T` as the full document. Throws here when the server refuses the stream (a
    /// standalone server, a bad pipeline). See ``ChangeStream``.
    public func watch(_ pipeline: [BSONDocument] = [], options: ChangeStreamOptions = .init()) async throws -> ChangeStream<T> {
        try await ChangeStream<T>.open(
            client: client, target: .collection(database.name, name), pipeline: pipeline, options: options)
    }
}
