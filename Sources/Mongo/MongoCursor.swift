// MongoCursor: query results as an async sequence, fetched a batch at a time on the client's
// threads, holding one pooled connection until exhausted or dropped.

import BSON
import CMongoC

/// The libmongoc side of a cursor: a connection, a collection and a `mongoc_cursor_t`. Used by
/// one consumer at a time (an async iterator calls ``fetch()`` only after the previous call
/// returned), each call on a pool thread; `@unchecked Sendable` on that contract.
final class CursorCore: @unchecked Sendable {
    private let connection: MongoClient.Connection
    private var collection: OpaquePointer?
    private var cursor: OpaquePointer?
    private let chunk: Int

    init(connection: MongoClient.Connection, collection: OpaquePointer, cursor: OpaquePointer, chunk: Int) {
        self.connection = connection
        self.collection = collection
        self.cursor = cursor
        self.chunk = chunk
    }

    /// Up to `chunk` documents (at most one server round trip per batch boundary); an empty array
    /// when the cursor is exhausted. Runs on a pool thread. Frees the cursor at the end or on error.
    func fetch() throws -> [BSONDocument] {
        guard let cursor else { return [] }
        do {
            let docs = try Self.drain(cursor, limit: chunk)
            if docs.count < chunk { destroy() }
            return docs
        } catch {
            destroy()
            throw error
        }
    }

    /// Reads documents until the cursor ends (or `limit`), then checks its error.
    static func drain(_ cursor: OpaquePointer, limit: Int = .max) throws -> [BSONDocument] {
        var docs: [BSONDocument] = []
        var current: OpaquePointer?
        while docs.count < limit, mongoc_cursor_next(cursor, &current), let current {
            docs.append(try BSONDocument(copying: current))
        }
        if docs.count < limit {
            var error = bson_error_t()
            var reply: OpaquePointer?
            if mongoc_cursor_error_document(cursor, &error, &reply) { throw MongoError(error, replyPointer: reply) }
        }
        return docs
    }

    /// Frees the libmongoc objects and returns the connection (idempotent; on a pool thread).
    func destroy() {
        if let cursor { mongoc_cursor_destroy(cursor) }
        if let collection { mongoc_collection_destroy(collection) }
        cursor = nil
        collection = nil
        connection.release()
    }

    deinit {
        guard cursor != nil || collection != nil else { return }
        // Dropped before the end: killCursors goes over the network, so on a pool thread (or
        // right here if the pool is already shut down).
        let resources = Resources(cursor: cursor, collection: collection, connection: connection)
        connection.client.threadPool.submit { _ in resources.destroy() }
    }

    /// What deinit hands to a pool thread. `@unchecked Sendable`: the cursor is gone, so the
    /// pool job is the only user of these pointers.
    private struct Resources: @unchecked Sendable {
        let cursor: OpaquePointer?
        let collection: OpaquePointer?
        let connection: MongoClient.Connection

        func destroy() {
            if let cursor { mongoc_cursor_destroy(cursor) }
            if let collection { mongoc_collection_destroy(collection) }
            connection.release()
        }
    }
}

/// Query results as an async sequence of `T`. Iterate it once, from one task.
///
/// ```swift
/// for try await job in try await jobs.findCursor(["status.name": "running"]) { ... }
/// ```
public struct MongoCursor<T: Decodable & Sendable>: AsyncSequence {
    public typealias Element = T

    private let core: CursorCore
    private let first: [BSONDocument]
    private let namespace: String

    /// Checks out a connection, opens the cursor with `open` and reads the first batch (so that
    /// errors such as a bad filter are thrown by the call that made the cursor).
    init(
        client: MongoClient, batchSize: Int?, namespace: String,
        open: @escaping @Sendable (OpaquePointer) throws -> (OpaquePointer, OpaquePointer)
    ) async throws {
        let connection = try await client.checkOut()
        let chunk = Swift.max(1, batchSize ?? 101)
        let result: Result<(CursorCore, [BSONDocument]), any Error>
        do {
            result = .success(try await client.threadPool.runIfActive {
                let (collection, cursor): (OpaquePointer, OpaquePointer)
                do {
                    (collection, cursor) = try open(connection.pointer)
                } catch {
                    connection.release()
                    throw error
                }
                let core = CursorCore(connection: connection, collection: collection, cursor: cursor, chunk: chunk)
                return UncheckedBox((core, try core.fetch()))
            }.value)
        } catch {
            connection.release()
            result = .failure(client.mapPoolError(error))
        }
        (core, first) = try result.get()
        self.namespace = namespace
    }

    public func makeAsyncIterator() -> Iterator { Iterator(core: core, buffer: first, namespace: namespace) }

    /// Collects every remaining document.
    public func toArray() async throws -> [T] {
        var out: [T] = []
        for try await value in self { out.append(value) }
        return out
    }

    public struct Iterator: AsyncIteratorProtocol {
        let core: CursorCore
        var buffer: [BSONDocument]
        var index = 0
        let namespace: String
        var done = false

        init(core: CursorCore, buffer: [BSONDocument], namespace: String) {
            self.core = core
            self.buffer = buffer
            self.namespace = namespace
        }

        public mutating func next() async throws -> T? {
            if index == buffer.count {
                guard !done else { return nil }
                let core = self.core
                let client = core.connectionClient
                do {
                    buffer = try await client.threadPool.runIfActive { UncheckedBox(try core.fetch()) }.value
                } catch {
                    throw client.mapPoolError(error)
                }
                index = 0
                if buffer.isEmpty {
                    done = true
                    return nil
                }
            }
            defer { index += 1 }
            return try MongoCollection<BSONDocument>.decode(buffer[index], as: T.self, namespace: namespace)
        }
    }
}

extension CursorCore {
    var connectionClient: MongoClient { connection.client }
}

/// Carries a value that is not Sendable out of a pool job whose caller is its only user.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
