// ChangeStream: a libmongoc change stream on its own thread, delivered into an async sequence
// through a bounded buffer.

import BSON
import CMongoC
import Foundation
import Logging

/// What a stream watches.
enum ChangeStreamTarget: Sendable {
    case client
    case database(String)
    case collection(String, String)

    var description: String {
        switch self {
        case .client: "*"
        case .database(let db): db
        case .collection(let db, let coll): "\(db).\(coll)"
        }
    }
}

/// One element of ``ChangeStream/notifications``.
public enum ChangeStreamNotification<T: Decodable & Sendable>: Sendable {
    /// A change.
    case event(ChangeEvent<T>)
    /// The server answered a getMore with no events (after `maxAwaitTimeMS`): the stream is
    /// caught up, and ``ChangeStream/resumeToken`` is the position to persist.
    case idle

    /// The event, if this is one.
    public var event: ChangeEvent<T>? {
        if case .event(let e) = self { return e }
        return nil
    }
}

/// A change stream: an async sequence of ``ChangeEvent``s.
///
/// The libmongoc stream runs on a thread of its own that calls `mongoc_change_stream_next` and
/// reads ahead at most ``ChangeStreamOptions/bufferSize`` events (then waits for the consumer).
/// Iterate it from one task at a time.
///
/// **Resume tokens.** ``resumeToken`` is the position *after the last element handed to the
/// consumer*, read with `mongoc_change_stream_get_resume_token` after that element — the
/// event's `_id`, or the server's post-batch token, which on MongoDB also advances on empty
/// batches. To persist after each handled batch, iterate ``notifications``: it also yields
/// ``ChangeStreamNotification/idle`` when a getMore returns no events.
///
/// **Stopping.** Cancelling the consuming task, calling ``close()``, or dropping the last
/// reference stops the stream: the iterator returns nil at once and the thread destroys the
/// libmongoc stream within about one `maxAwaitTimeMS`. A server error ends the stream and is
/// thrown by the iterator (libmongoc has already retried a resumable error once). An event whose
/// full document does not decode as `T` throws ``MongoError/Domain/codec`` without ending the
/// stream.
public final class ChangeStream<T: Decodable & Sendable>: AsyncSequence, Sendable {
    public typealias Element = ChangeEvent<T>

    let core: ChangeStreamCore

    init(core: ChangeStreamCore) { self.core = core }

    deinit { core.requestStop() }

    /// The position after the last element the consumer received (nil before the first, unless
    /// the server reported an initial position).
    public var resumeToken: ResumeToken? { core.resumeToken }

    /// True once the stream thread has ended and destroyed the libmongoc stream.
    public var isClosed: Bool { core.isFinished }

    /// Stops the stream and waits until its thread has destroyed the libmongoc stream (within
    /// about `maxAwaitTimeMS`). Idempotent.
    public func close() async { await core.stop() }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: self) }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: ChangeStream<T>

        public mutating func next() async throws -> ChangeEvent<T>? {
            while let item = await stream.core.take() {
                if let event = try stream.decode(item) { return event }
            }
            return nil
        }
    }

    /// Events and idle batches (see ``ChangeStreamNotification``), for consumers that persist
    /// ``resumeToken`` after each batch. Same stream: iterate one view at a time.
    public var notifications: Notifications { Notifications(stream: self) }

    public struct Notifications: AsyncSequence, Sendable {
        public typealias Element = ChangeStreamNotification<T>
        let stream: ChangeStream<T>

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: stream) }

        public struct AsyncIterator: AsyncIteratorProtocol {
            let stream: ChangeStream<T>

            public mutating func next() async throws -> ChangeStreamNotification<T>? {
                guard let item = await stream.core.take() else { return nil }
                return try stream.decode(item).map { .event($0) } ?? .idle
            }
        }
    }

    /// The event of an item; nil for an idle batch; throws a failure.
    private func decode(_ item: ChangeStreamCore.Item) throws -> ChangeEvent<T>? {
        switch item {
        case .event(let document, _):
            do {
                return try BSONDecoder().decode(ChangeEvent<T>.self, from: document)
            } catch {
                throw MongoError.codec(error, "cannot decode a change event of \(core.target.description) as ChangeEvent<\(T.self)>")
            }
        case .idle: return nil
        case .failure(let error): throw error
        }
    }

    /// Opens a stream: checks out a connection, starts the thread, and returns once the server has
    /// accepted the `aggregate` (or throws its error).
    static func open(
        client: MongoClient, target: ChangeStreamTarget, pipeline: [BSONDocument], options: ChangeStreamOptions
    ) async throws -> ChangeStream<T> {
        let connection = try await client.checkOut()
        var logger = client.logger
        logger[metadataKey: "mongo.changestream"] = "\(target.description)"
        let core = ChangeStreamCore(target: target, capacity: Swift.max(1, options.bufferSize), logger: logger)
        guard client.register(core) else {
            connection.release()
            throw MongoClient.closedError
        }
        let pipelineDocument: BSONDocument = ["pipeline": .array(pipeline.map { .document($0) })]
        let optionsDocument = options.document
        try await withCheckedThrowingContinuation { (opened: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                core.run(connection: connection, pipeline: pipelineDocument, options: optionsDocument, opened: opened)
            }
            thread.name = "mongo-changestream"
            thread.start()
        }
        return ChangeStream(core: core)
    }
}

/// The shared state between a stream's thread (producer) and its consumer. `@unchecked Sendable`:
/// every mutable field is guarded by `condition`'s lock.
final class ChangeStreamCore: @unchecked Sendable {
    enum Item: Sendable {
        /// An event and the stream's resume token right after it.
        case event(BSONDocument, ResumeToken?)
        /// An empty batch and the resume token after it.
        case idle(ResumeToken?)
        case failure(MongoError)
    }

    let target: ChangeStreamTarget
    let logger: Logger
    private let capacity: Int
    private let condition = NSCondition()
    private var buffer: [Item] = []
    private var head = 0
    private var waiter: CheckedContinuation<Item?, Never>?
    private var stopRequested = false
    private var finished = false
    private var finishWaiters: [CheckedContinuation<Void, Never>] = []
    private var token: ResumeToken?

    init(target: ChangeStreamTarget, capacity: Int, logger: Logger) {
        self.target = target
        self.capacity = capacity
        self.logger = logger
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        condition.lock()
        defer { condition.unlock() }
        return try body()
    }

    var resumeToken: ResumeToken? { locked { token } }
    var isFinished: Bool { locked { finished } }
    private var isStopRequested: Bool { locked { stopRequested } }
    private var buffered: Int { buffer.count - head }

    /// Records the token of an item handed to the consumer (lock held).
    private func handOut(_ item: Item) -> Item {
        switch item {
        case .event(_, let t?), .idle(let t?): token = t
        default: break
        }
        return item
    }

    private func popFirst() -> Item {
        let item = buffer[head]
        head += 1
        if head >= 64 && head * 2 >= buffer.count {
            buffer.removeFirst(head)
            head = 0
        }
        return item
    }

    // MARK: Consumer side

    /// The next item, or nil once the stream was stopped or has ended with nothing left.
    /// Cancelling the calling task stops the stream.
    func take() async -> Item? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Item?, Never>) in
                condition.lock()
                if stopRequested {
                    condition.unlock()
                    continuation.resume(returning: nil)
                } else if buffered > 0 {
                    let item = handOut(popFirst())
                    condition.signal()
                    condition.unlock()
                    continuation.resume(returning: item)
                } else if finished {
                    condition.unlock()
                    continuation.resume(returning: nil)
                } else if waiter != nil {
                    condition.unlock()
                    continuation.resume(returning: .failure(Self.concurrentUse))
                } else {
                    waiter = continuation
                    condition.unlock()
                }
            }
        } onCancel: {
            requestStop()
        }
    }

    static let concurrentUse = MongoError(
        domain: .client, code: 0, message: "a change stream was iterated from two tasks at once")

    /// Asks the thread to stop; a waiting consumer gets nil at once.
    func requestStop() {
        let pending: CheckedContinuation<Item?, Never>? = locked {
            stopRequested = true
            condition.broadcast()
            defer { waiter = nil }
            return waiter
        }
        pending?.resume(returning: nil)
    }

    /// Stops the stream and waits until the thread has finished.
    func stop() async {
        requestStop()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            condition.lock()
            if finished {
                condition.unlock()
                continuation.resume()
            } else {
                finishWaiters.append(continuation)
                condition.unlock()
            }
        }
    }

    // MARK: Producer side (the stream thread)

    /// Hands `item` to a waiting consumer or buffers it, waiting while the buffer is full.
    /// Returns false when the stream should stop.
    private func push(_ item: Item) -> Bool {
        condition.lock()
        if case .idle = item, buffered > 0, case .idle = buffer[buffer.count - 1] {
            buffer[buffer.count - 1] = item  // one idle marker is enough
            condition.unlock()
            return true
        }
        while buffered >= capacity && !stopRequested { condition.wait() }
        if stopRequested {
            condition.unlock()
            return false
        }
        if let consumer = waiter {
            waiter = nil
            let handed = handOut(item)
            condition.unlock()
            consumer.resume(returning: handed)
        } else {
            buffer.append(item)
            condition.unlock()
        }
        return true
    }

    private func finish() {
        let (consumer, waiters): (CheckedContinuation<Item?, Never>?, [CheckedContinuation<Void, Never>]) = locked {
            finished = true
            defer {
                waiter = nil
                finishWaiters = []
            }
            return (waiter, finishWaiters)
        }
        consumer?.resume(returning: nil)
        waiters.forEach { $0.resume() }
    }

    private static func resumeToken(_ stream: OpaquePointer) -> ResumeToken? {
        guard let t = mongoc_change_stream_get_resume_token(stream) else { return nil }
        return (try? BSONDocument(copying: t)).map(ResumeToken.init)
    }

    private static func streamError(_ stream: OpaquePointer) -> MongoError? {
        var error = bson_error_t()
        var reply: OpaquePointer?
        guard mongoc_change_stream_error_document(stream, &error, &reply) else { return nil }
        return MongoError(error, replyPointer: reply)
    }

    /// The thread: opens the libmongoc stream, reports the outcome through `opened`, then reads
    /// events until stopped or failed, and cleans up.
    func run(
        connection: MongoClient.Connection, pipeline: BSONDocument, options: BSONDocument,
        opened: CheckedContinuation<Void, any Error>
    ) {
        let client = connection.pointer
        var collection: OpaquePointer?
        var database: OpaquePointer?
        var stream: OpaquePointer?
        defer {
            if let stream { mongoc_change_stream_destroy(stream) }
            if let collection { mongoc_collection_destroy(collection) }
            if let database { mongoc_database_destroy(database) }
            connection.release()
            connection.client.unregister(self)
            logger.debug("change stream closed")
            finish()
        }
        do {
            stream = try withBSON([pipeline, options]) { p in
                switch target {
                case .client:
                    return mongoc_client_watch(client, p[0], p[1])
                case .database(let db):
                    database = mongoc_client_get_database(client, db)
                    return mongoc_database_watch(database, p[0], p[1])
                case .collection(let db, let coll):
                    collection = mongoc_client_get_collection(client, db, coll)
                    return mongoc_collection_watch(collection, p[0], p[1])
                }
            }
        } catch {
            opened.resume(throwing: error)
            return
        }
        guard let stream else {
            opened.resume(throwing: MongoError(domain: .client, code: 0, message: "libmongoc returned no change stream"))
            return
        }
        if let error = Self.streamError(stream) {
            logger.debug("change stream refused", metadata: ["mongo.error": "\(error)"])
            opened.resume(throwing: error)
            return
        }
        locked { token = Self.resumeToken(stream) }
        logger.debug("change stream opened")
        opened.resume()

        while !isStopRequested {
            var document: OpaquePointer?
            let item: Item
            if mongoc_change_stream_next(stream, &document), let document {
                do {
                    item = .event(try BSONDocument(copying: document), Self.resumeToken(stream))
                } catch {
                    item = .failure(error as? MongoError ?? MongoError.codec(error, "change event"))
                }
            } else if let error = Self.streamError(stream) {
                logger.debug("change stream failed", metadata: ["mongo.error": "\(error)"])
                _ = push(.failure(error))
                return
            } else {
                item = .idle(Self.resumeToken(stream))
            }
            guard push(item) else { return }
            if case .failure = item { return }
        }
    }
}
