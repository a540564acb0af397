// Bulk writes: many inserts, updates, replaces and deletes in one round trip per batch
// (`mongoc_bulk_operation_t`), with per-operation write errors reported instead of thrown.

import BSON
import CMongoC

/// One operation of a ``MongoCollection/bulkWrite(_:ordered:writeConcern:)``.
///
/// Updates may be update documents (`$set`, `$inc`...) or aggregation pipelines (a document
/// whose keys are `"0"`, `"1"`, ... holding the stages).
public enum WriteModel: Sendable {
    case insertOne(BSONDocument)
    case updateOne(filter: BSONDocument, update: BSONDocument, upsert: Bool = false)
    case updateMany(filter: BSONDocument, update: BSONDocument, upsert: Bool = false)
    case replaceOne(filter: BSONDocument, replacement: BSONDocument, upsert: Bool = false)
    case deleteOne(filter: BSONDocument)
    case deleteMany(filter: BSONDocument)
}

/// A write error of one operation of a bulk write (a duplicate key, a validation failure...).
public struct BulkWriteError: Sendable, Hashable, CustomStringConvertible {
    /// The position of the failed operation in the models given.
    public let index: Int
    /// The server's error code (11000: duplicate key).
    public let code: Int
    public let message: String

    /// A unique index refused the operation.
    public var isDuplicateKey: Bool { code == 11000 || code == 11001 || code == 12582 }

    public var description: String { "operation \(index): error \(code): \(message)" }
}

/// What a bulk write did.
public struct BulkWriteResult: Sendable {
    public let insertedCount: Int
    /// Documents matched by updates and replaces.
    public let matchedCount: Int
    public let modifiedCount: Int
    public let deletedCount: Int
    public let upsertedCount: Int
    /// The `_id` of each upserted document, by operation index.
    public let upsertedIds: [Int: BSONValue]
    /// Operations the server refused. With `ordered` the batch stopped at the first one.
    public let writeErrors: [BulkWriteError]

    init(reply: BSONDocument) {
        insertedCount = reply["nInserted"]?.intValue ?? 0
        matchedCount = reply["nMatched"]?.intValue ?? 0
        modifiedCount = reply["nModified"]?.intValue ?? 0
        deletedCount = reply["nRemoved"]?.intValue ?? 0
        upsertedCount = reply["nUpserted"]?.intValue ?? 0
        var ids: [Int: BSONValue] = [:]
        for entry in reply["upserted"]?.arrayValue ?? [] {
            if let index = entry["index"]?.intValue, let id = entry["_id"] { ids[index] = id }
        }
        upsertedIds = ids
        writeErrors = (reply["writeErrors"]?.arrayValue ?? []).map { e in
            BulkWriteError(
                index: e["index"]?.intValue ?? -1, code: e["code"]?.intValue ?? 0,
                message: e["errmsg"]?.stringValue ?? "write error")
        }
    }

    /// Throws the first write error that is not a duplicate key (duplicates are what idempotent
    /// inserts expect when they are replayed).
    public func throwUnlessOnlyDuplicates() throws {
        if let e = writeErrors.first(where: { !$0.isDuplicateKey }) {
            throw MongoError(domain: .server, code: e.code, message: "bulk write \(e)")
        }
    }
}

extension MongoCollection {
    /// Runs `models` as one bulk write (split by libmongoc into as few commands as the server
    /// allows).
    ///
    /// Write errors of single operations (duplicate keys, validation) are returned in
    /// ``BulkWriteResult/writeErrors``; with `ordered` (the default) the server stops at the
    /// first one, otherwise it tries every operation. Errors of the whole batch (network, write
    /// concern, a malformed operation) throw ``MongoError``.
    @discardableResult
    public func bulkWrite(
        _ models: [WriteModel], ordered: Bool = true, writeConcern: WriteConcern? = nil
    ) async throws -> BulkWriteResult {
        guard !models.isEmpty else { return BulkWriteResult(reply: [:]) }
        // Flatten the models into documents: [opts, then per model its documents].
        var documents: [BSONDocument] = [optionsDocument(["ordered": .bool(ordered), "writeConcern": writeConcern.bson])]
        var shapes: [(kind: UInt8, first: Int)] = []
        for model in models {
            let first = documents.count
            switch model {
            case .insertOne(let doc):
                documents.append(Self.withID(doc).0)
                shapes.append((0, first))
            case .updateOne(let filter, let update, let upsert):
                documents += [filter, update, ["upsert": .bool(upsert)]]
                shapes.append((1, first))
            case .updateMany(let filter, let update, let upsert):
                documents += [filter, update, ["upsert": .bool(upsert)]]
                shapes.append((2, first))
            case .replaceOne(let filter, let replacement, let upsert):
                documents += [filter, replacement, ["upsert": .bool(upsert)]]
                shapes.append((3, first))
            case .deleteOne(let filter):
                documents.append(filter)
                shapes.append((4, first))
            case .deleteMany(let filter):
                documents.append(filter)
                shapes.append((5, first))
            }
        }
        let finalShapes = shapes, finalDocuments = documents
        let namespace = self.namespace
        let outcome: Result<BSONDocument, MongoError> = try await withCollection { c in
            try withBSON(finalDocuments) { p in
                let bulk = mongoc_collection_create_bulk_operation_with_opts(c, p[0])!
                defer { mongoc_bulk_operation_destroy(bulk) }
                var error = bson_error_t()
                for (i, shape) in finalShapes.enumerated() {
                    let d = shape.first
                    let ok: Bool = switch shape.kind {
                    case 0: mongoc_bulk_operation_insert_with_opts(bulk, p[d], nil, &error)
                    case 1: mongoc_bulk_operation_update_one_with_opts(bulk, p[d], p[d + 1], p[d + 2], &error)
                    case 2: mongoc_bulk_operation_update_many_with_opts(bulk, p[d], p[d + 1], p[d + 2], &error)
                    case 3: mongoc_bulk_operation_replace_one_with_opts(bulk, p[d], p[d + 1], p[d + 2], &error)
                    case 4: mongoc_bulk_operation_remove_one_with_opts(bulk, p[d], nil, &error)
                    default: mongoc_bulk_operation_remove_many_with_opts(bulk, p[d], nil, &error)
                    }
                    if !ok {
                        let e = MongoError(error, reply: nil)
                        throw MongoError(domain: e.domain, code: e.code, message: "bulk write on \(namespace), operation \(i): \(e.message)")
                    }
                }
                do {
                    return .success(try withReply { reply, error in mongoc_bulk_operation_execute(bulk, reply, error) != 0 })
                } catch let error as MongoError {
                    return .failure(error)
                }
            }
        }
        switch outcome {
        case .success(let reply):
            return BulkWriteResult(reply: reply)
        case .failure(let error):
            // Write errors of single operations come back as a failed execute with the reply
            // listing them; anything else (write concern, network) is an error of the batch.
            if let reply = error.reply, !(reply["writeErrors"]?.arrayValue ?? []).isEmpty,
               (reply["writeConcernErrors"]?.arrayValue ?? []).isEmpty {
                return BulkWriteResult(reply: reply)
            }
            throw error
        }
    }
}
