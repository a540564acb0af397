// MongoClient: a libmongoc client pool, a thread pool for the blocking calls, and the handles.

import BSON
import CMongoC
import Foundation
import Logging
import NIOPosix
import Synchronization

/// libmongoc's process-wide set-up: `mongoc_init` once, and its log lines into swift-log.
private let mongocInitialized: Void = {
    mongoc_init()
    mongoc_log_set_handler({ level, domain, message, _ in
        let text = message.map { String(cString: $0) } ?? ""
        let domainText = domain.map { String(cString: $0) } ?? ""
        // Libraries log at debug and trace only (SSWG); libmongoc's warnings and errors are debug.
        let swiftLevel: Logger.Level = level.rawValue <= MONGOC_LOG_LEVEL_WARNING.rawValue ? .debug : .trace
        if level.rawValue == MONGOC_LOG_LEVEL_TRACE.rawValue { return }
        libmongocLogger.log(level: swiftLevel, "\(text)", metadata: ["mongoc.domain": "\(domainText)"])
    }, nil)
}()

private let libmongocLogger = Logger(label: "talus.mongo.libmongoc")

/// A pointer libmongoc documents as thread-safe (`mongoc_client_pool_t`).
struct PoolPointer: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// A connection to a MongoDB deployment (a replica set in production; SecantusDB in tests).
///
/// Safe to share between tasks. Every libmongoc call runs on a thread pool the client owns
/// (``Configuration/threadPoolSize`` threads), never on the Swift cooperative pool; each change
/// stream gets its own thread. Connections come from a `mongoc_client_pool_t` of
/// ``Configuration/maxPoolSize``; an operation waits for a free connection *before* it takes a
/// thread, so cursors and change streams that hold connections can never starve the threads.
///
/// Call ``close()`` when done: it stops the change streams and the threads. The libmongoc pool
/// itself is destroyed when the last handle, cursor and stream are gone.
public final class MongoClient: Sendable {
    /// Client settings that are not in the URI.
    public struct Configuration: Sendable {
        /// Threads that run blocking libmongoc calls (change streams have their own). Default 8.
        public var threadPoolSize: Int = 8
        /// Connections in libmongoc's pool; nil: the URI's `maxPoolSize`, else 100.
        public var maxPoolSize: Int?
        /// Write concern when the URI sets none. Default: majority.
        public var writeConcern: WriteConcern? = .majority
        /// Read concern when the URI sets none. Default: nil (the server's, "local").
        public var readConcern: ReadConcern?
        /// The `appname` the server logs for this client's connections.
        public var appName: String = "talus"

        public init(
            threadPoolSize: Int = 8, maxPoolSize: Int? = nil, writeConcern: WriteConcern? = .majority,
            readConcern: ReadConcern? = nil, appName: String = "talus"
        ) {
            self.threadPoolSize = threadPoolSize
            self.maxPoolSize = maxPoolSize
            self.writeConcern = writeConcern
            self.readConcern = readConcern
            self.appName = appName
        }
    }

    private struct State {
        var closed = false
        var streams: [ObjectIdentifier: ChangeStreamCore] = [:]
    }

    let pool: PoolPointer
    let threadPool: NIOThreadPool
    let permits: AsyncSemaphore
    private let state = Mutex(State())
    /// Where this client logs (debug and trace only).
    public let logger: Logger
    /// The URI the client was created with, for messages (credentials removed).
    public let uriDescription: String

    /// Connects lazily: the first operation selects a server.
    ///
    /// - Parameters:
    ///   - uri: A MongoDB connection string, e.g. `mongodb://host:27017/?replicaSet=rs0`. URI
    ///     options (`serverSelectionTimeoutMS`, `maxPoolSize`, `w`, `readConcernLevel`...) apply.
    ///   - configuration: Threads, pool size and default concerns.
    ///   - logger: Receives debug and trace messages.
    /// - Throws: ``MongoError`` for an invalid URI.
    public init(uri: String, configuration: Configuration = .init(), logger: Logger = Logger(label: "talus.mongo")) throws {
        _ = mongocInitialized
        var error = bson_error_t()
        guard let mongocURI = mongoc_uri_new_with_error(uri, &error) else { throw MongoError(error, reply: nil) }
        defer { mongoc_uri_destroy(mongocURI) }

        if let size = configuration.maxPoolSize {
            mongoc_uri_set_option_as_int32(mongocURI, MONGOC_URI_MAXPOOLSIZE, Int32(clamping: size))
        }
        let poolSize = Int(mongoc_uri_get_option_as_int32(mongocURI, MONGOC_URI_MAXPOOLSIZE, 100))
        if let wc = configuration.writeConcern, mongoc_write_concern_is_default(mongoc_uri_get_write_concern(mongocURI)) {
            let mwc = mongoc_write_concern_new()
            defer { mongoc_write_concern_destroy(mwc) }
            switch wc.w {
            case .majority?: mongoc_write_concern_set_wmajority(mwc, Int32(clamping: wc.timeoutMS ?? 0))
            case .nodes(let n)?: mongoc_write_concern_set_w(mwc, Int32(clamping: n))
            case .tag(let t)?: mongoc_write_concern_set_wtag(mwc, t)
            case nil: break
            }
            if let j = wc.journal { mongoc_write_concern_set_journal(mwc, j) }
            if let t = wc.timeoutMS { mongoc_write_concern_set_wtimeout_int64(mwc, Int64(t)) }
            mongoc_uri_set_write_concern(mongocURI, mwc)
        }
        if let rc = configuration.readConcern, mongoc_read_concern_is_default(mongoc_uri_get_read_concern(mongocURI)) {
            let mrc = mongoc_read_concern_new()
            defer { mongoc_read_concern_destroy(mrc) }
            mongoc_read_concern_set_level(mrc, rc.level)
            mongoc_uri_set_read_concern(mongocURI, mrc)
        }
        guard let pool = mongoc_client_pool_new_with_error(mongocURI, &error) else { throw MongoError(error, reply: nil) }
        mongoc_client_pool_set_error_api(pool, Int32(MONGOC_ERROR_API_VERSION_2))
        mongoc_client_pool_set_appname(pool, configuration.appName)

        self.pool = PoolPointer(pointer: pool)
        self.permits = AsyncSemaphore(permits: max(1, poolSize))
        self.threadPool = NIOThreadPool(numberOfThreads: max(1, configuration.threadPoolSize))
        self.threadPool.start()
        self.uriDescription = Self.redacted(uri)
        var logger = logger
        logger[metadataKey: "mongo.uri"] = "\(uriDescription)"
        self.logger = logger
        logger.debug("mongo client created", metadata: [
            "mongo.threads": "\(configuration.threadPoolSize)", "mongo.maxPoolSize": "\(poolSize)",
        ])
    }

    deinit {
        let wasClosed = state.withLock { $0.closed }
        if !wasClosed { threadPool.shutdownGracefully { _ in } }
        // Destroying the pool ends sessions over the network: not on the caller's thread.
        let pool = self.pool
        Thread.detachNewThread { mongoc_client_pool_destroy(pool.pointer) }
    }

    private static func redacted(_ uri: String) -> String {
        guard let at = uri.firstIndex(of: "@"), let scheme = uri.range(of: "://") else { return uri }
        return String(uri[..<scheme.upperBound]) + "***@" + String(uri[uri.index(after: at)...])
    }

    /// The version of the libmongoc this process runs with ("1.23.1").
    public static var libmongocVersion: String { String(cString: mongoc_get_version()) }

    /// A handle on database `name` (nothing is sent to the server).
    public func database(_ name: String) -> MongoDatabase { MongoDatabase(client: self, name: name) }

    /// Stops every change stream of this client (waiting until their threads have destroyed the
    /// libmongoc streams) and the thread pool. Operations afterwards throw. Idempotent.
    public func close() async {
        let (streams, first) = state.withLock { s in
            defer { s.closed = true }
            return (Array(s.streams.values), !s.closed)
        }
        for stream in streams { await stream.stop() }
        if first {
            try? await threadPool.shutdownGracefully()
            logger.debug("mongo client closed")
        }
    }

    var isClosed: Bool { state.withLock { $0.closed } }

    static let closedError = MongoError(domain: .client, code: 0, message: "the MongoClient is closed")

    func register(_ stream: ChangeStreamCore) -> Bool {
        state.withLock { s in
            guard !s.closed else { return false }
            s.streams[ObjectIdentifier(stream)] = stream
            return true
        }
    }

    func unregister(_ stream: ChangeStreamCore) {
        _ = state.withLock { $0.streams.removeValue(forKey: ObjectIdentifier(stream)) }
    }

    // MARK: Running blocking calls

    /// Runs `body` on the client's thread pool with a pooled `mongoc_client_t`. The connection is
    /// reserved (a permit) before a thread is taken, so `mongoc_client_pool_pop` never blocks.
    func withConnection<R: Sendable>(_ body: @escaping @Sendable (OpaquePointer) throws -> R) async throws -> R {
        guard !isClosed else { throw Self.closedError }
        try await permits.acquire()
        defer { permits.release() }
        let pool = self.pool
        do {
            return try await threadPool.runIfActive {
                let client = mongoc_client_pool_pop(pool.pointer)!
                defer { mongoc_client_pool_push(pool.pointer, client) }
                return try body(client)
            }
        } catch {
            throw mapPoolError(error)
        }
    }

    /// A shut-down thread pool refuses work with `CancellationError`: that means "closed" unless
    /// the task really was cancelled.
    func mapPoolError(_ error: any Error) -> any Error {
        error is CancellationError && isClosed && !Task.isCancelled ? Self.closedError : error
    }

    /// Takes a pooled connection for longer than one call (a cursor). Released by
    /// ``Connection/release()``.
    func checkOut() async throws -> Connection {
        guard !isClosed else { throw Self.closedError }
        try await permits.acquire()
        let pool = self.pool
        do {
            let pointer = try await threadPool.runIfActive { PoolPointer(pointer: mongoc_client_pool_pop(pool.pointer)!) }
            return Connection(client: self, pointer: pointer.pointer)
        } catch {
            permits.release()
            throw mapPoolError(error)
        }
    }

    /// A checked-out `mongoc_client_t`. Only one thread uses it at a time: its owner (a cursor or
    /// a change stream) runs its calls one after another.
    final class Connection: @unchecked Sendable {
        let client: MongoClient
        let pointer: OpaquePointer
        private let released = Atomic(false)

        init(client: MongoClient, pointer: OpaquePointer) {
            self.client = client
            self.pointer = pointer
        }

        /// Returns the connection to the pool (once; later calls do nothing).
        func release() {
            guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
            mongoc_client_pool_push(client.pool.pointer, pointer)
            client.permits.release()
        }
    }

    // MARK: Commands

    /// Runs `command` on database `database` (default `admin`) and returns the server's reply.
    ///
    /// The reply of a replica-set member carries `operationTime` and `$clusterTime`.
    /// - Throws: ``MongoError`` (domain `server` for `ok: 0`, with the reply attached).
    @discardableResult
    public func runCommand(_ command: BSONDocument, on database: String = "admin") async throws -> BSONDocument {
        try await self.database(database).runCommand(command)
    }

    /// The deployment's current operation time: the `operationTime` of a no-op command on the
    /// primary. A change stream started at this time (``ChangeStreamOptions/startAtOperationTime``)
    /// sees every change made after this call returns.
    public func currentClusterTime() async throws -> BSONTimestamp {
        let reply = try await runCommand(["ping": 1])
        if let t = reply["operationTime"]?.timestampValue ?? reply["$clusterTime"]?["clusterTime"]?.timestampValue {
            return t
        }
        throw MongoError(
            domain: .command, code: 0, message: "the reply carries no operationTime (not a replica set?)", reply: reply)
    }

    /// The names of all databases.
    public func listDatabaseNames() async throws -> [String] {
        let reply = try await runCommand(["listDatabases": 1, "nameOnly": true])
        return (reply["databases"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
    }

    /// Watches every database of the deployment. See ``MongoCollection/watch(_:options:)``.
    public func watch<U: Decodable & Sendable>(
        _ pipeline: [BSONDocument] = [], options: ChangeStreamOptions = .init(), as type: U.Type = BSONDocument.self
    ) async throws -> ChangeStream<U> {
        try await ChangeStream<U>.open(client: self, target: .client, pipeline: pipeline, options: options)
    }
}
