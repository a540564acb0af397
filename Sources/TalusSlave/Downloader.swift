// Downloads from the Talus API (DESIGN §7, §9): streamed to a file and hashed (sha256) on the way,
// resumed with `Range` after an interruption, verified against the server's `X-Talus-SHA256`.
// The body is taken on the connection's event loop (no hop per chunk) into 1 MiB batches, which
// are hashed and written on NIO's thread pool, side by side and overlapped with receiving the
// next bytes; dirty pages are flushed in the background while the download goes on.

import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import TalusCore

/// A download failed.
public struct DownloadError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// Retrying cannot help (401, 403, 404, a checksum the part does not expect).
    public let permanent: Bool
    public init(_ description: String, permanent: Bool = false) { self.description = description; self.permanent = permanent }
}

/// Fetches files from the API with the slave's bearer token.
public struct APIDownloader: Sendable {
    public let client: HTTPClient
    public let baseURL: String
    let token: String?
    let logger: Logger
    /// Attempts per download (each resumes where the previous one stopped).
    public var maxAttempts = 6
    /// Bytes gathered before one write and one hash step on the thread pool. 4 MiB: on the
    /// development machine (2 cores) 1 GiB took 1.09–1.37 s with 4 MiB batches, 1.08–1.95 s with
    /// 1 MiB and 1.33–1.64 s with 256 KiB (`talus-bench slave sync --batch-kib`).
    public var batchBytes = 4 << 20
    /// Batches received but not yet both hashed and written; past this, reading waits (at most
    /// 16 MiB per download).
    public var maxBatchesInFlight = 4

    public init(client: HTTPClient, baseURL: String, token: String?, logger: Logger = Logger(label: "talus.slave.download")) {
        self.client = client
        var base = baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.baseURL = base
        self.token = token
        self.logger = logger
    }

    /// The URL of an image's file.
    public func imageURL(_ id: String) -> String { "\(baseURL)/api/v1/images/\(id)/file" }

    /// The URL of a tool bundle at a commit.
    public func bundleURL(name: String, commit: String) -> String {
        let n = name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? name
        let c = commit.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? commit
        return "\(baseURL)/api/v1/code/\(n)/bundle?commit=\(c)"
    }

    /// Downloads `url` into `partialPath`, resuming from the bytes already there when the server
    /// still serves the same file (`If-Range` with the ETag remembered in `<partialPath>.etag`).
    /// Returns the sha256 and size of the whole file. Throws when the server's `X-Talus-SHA256`
    /// differs from `expectedSHA256`, or from what arrived.
    public func download(_ url: String, to partialPath: String, expectedSHA256: String? = nil,
                         onBytes: @escaping @Sendable (Int) -> Void = { _ in }) async throws -> (sha256: String, size: Int64) {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await downloadOnce(url, to: partialPath, expectedSHA256: expectedSHA256, onBytes: onBytes)
            } catch let error as DownloadError where error.permanent {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                guard attempt < maxAttempts, !Task.isCancelled else {
                    throw DownloadError("\(url): \(error) (after \(attempt) attempts)")
                }
                let delay = Duration.milliseconds(min(10_000, 250 << min(attempt, 6)))
                logger.warning("download interrupted; resuming", metadata: [
                    "url": "\(url)", "attempt": "\(attempt)", "error": "\(error)", "retry_in": "\(delay)"])
                try await Task.sleep(for: delay)
            }
        }
    }

    private func downloadOnce(_ url: String, to partialPath: String, expectedSHA256: String?,
                              onBytes: @escaping @Sendable (Int) -> Void) async throws -> (sha256: String, size: Int64) {
        let etagPath = partialPath + ".etag"
        let sink = try HashingFileSink(path: partialPath)
        defer { sink.close() }
        var request = try HTTPClient.Request(url: url)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let have = sink.existingBytes
        let etag = (try? String(contentsOfFile: etagPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if have > 0, let etag, !etag.isEmpty {
            request.headers.add(name: "Range", value: "bytes=\(have)-")
            request.headers.add(name: "If-Range", value: etag)
        }
        // The body is handled on the connection's event loop (`BodyToSink`): chunks go into
        // batches there, with no hop per chunk; the batches are hashed and written on the
        // thread pool. The head comes here first and the body waits until the sink is ready.
        let eventLoop = client.eventLoopGroup.next()
        let delegate = BodyToSink(sink: sink, eventLoop: eventLoop, batchBytes: batchBytes, depth: maxBatchesInFlight, onBytes: onBytes)
        let task = client.execute(request: request, delegate: delegate, eventLoop: .delegateAndChannel(on: eventLoop),
                                  deadline: .now() + .hours(12))
        do {
            let head = try await delegate.head.futureResult.get()
            let headers = head.headers
            switch head.status.code {
            case 200:
                try await sink.restart()
            case 206:
                guard let range = headers.first(name: "Content-Range"), range.hasPrefix("bytes \(have)-") else {
                    throw DownloadError("\(url): unexpected Content-Range \(headers.first(name: "Content-Range") ?? "none")")
                }
                try await sink.hashExisting()
                logger.info("resuming download", metadata: ["url": "\(url)", "offset": "\(have)"])
            case 401, 403:
                throw DownloadError("\(url): the API refused the slave's token (HTTP \(head.status.code)); check api.token", permanent: true)
            case 404:
                throw DownloadError("\(url): not found on the API (HTTP 404)", permanent: true)
            case 416:
                // Our partial file is longer than the server's: start over.
                try await sink.restart()
                try? FileManager.default.removeItem(atPath: etagPath)
                throw DownloadError("\(url): range not satisfiable; starting over")
            default:
                throw DownloadError("\(url): HTTP \(head.status.code)", permanent: (400..<500).contains(head.status.code))
            }
            let announced = headers.first(name: "X-Talus-SHA256")?.lowercased()
            if let announced, let expectedSHA256, announced != expectedSHA256 {
                throw DownloadError("\(url): the API serves a file with sha256 \(announced), the part expects \(expectedSHA256)", permanent: true)
            }
            if let newTag = headers.first(name: "ETag") {
                try? newTag.write(toFile: etagPath, atomically: true, encoding: .utf8)
            } else {
                try? FileManager.default.removeItem(atPath: etagPath)
            }
            delegate.proceed.succeed(())
            try await withTaskCancellationHandler {
                try await task.futureResult.get()
            } onCancel: {
                task.cancel()
            }
            try await eventLoop.flatSubmit { delegate.pipeline.finish() }.get()
            let (hex, size) = try await sink.finish()
            if let length = headers.first(name: "Content-Length").flatMap(Int64.init),
               size != (head.status.code == 206 ? have + length : length) {
                throw DownloadError("\(url): connection ended after \(size) bytes")
            }
            if let announced, announced != hex {
                try await sink.restart()
                throw DownloadError("\(url): received bytes have sha256 \(hex), the API announced \(announced)")
            }
            try? FileManager.default.removeItem(atPath: etagPath)
            return (hex, size)
        } catch {
            // Stop the transfer, and let no step touch the file once this returns.
            delegate.proceed.fail(error)
            task.cancel()
            _ = try? await task.futureResult.get()
            try? await eventLoop.flatSubmit { delegate.pipeline.quiesce() }.get()
            throw error
        }
    }
}

/// The response of one download on its event loop: the head is handed to the downloader, which
/// says when the body may flow (`proceed`); body chunks go into `pipeline`.
final class BodyToSink: HTTPClientResponseDelegate, @unchecked Sendable {
    typealias Response = Void
    // AsyncHTTPClient calls a delegate on its task's event loop (`.delegateAndChannel(on:)`);
    // `pipeline` lives on that loop too; `head` and `proceed` are promises (thread-safe).
    let head: EventLoopPromise<HTTPResponseHead>
    let proceed: EventLoopPromise<Void>
    let pipeline: SinkPipeline
    private let onBytes: @Sendable (Int) -> Void

    init(sink: HashingFileSink, eventLoop: any EventLoop, batchBytes: Int, depth: Int, onBytes: @escaping @Sendable (Int) -> Void) {
        head = eventLoop.makePromise()
        proceed = eventLoop.makePromise()
        pipeline = SinkPipeline(sink: sink, eventLoop: eventLoop, batchBytes: batchBytes, depth: depth)
        self.onBytes = onBytes
    }

    func didReceiveHead(task: HTTPClient.Task<Void>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        self.head.succeed(head)
        return proceed.futureResult
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Void>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        onBytes(buffer.readableBytes)
        return pipeline.add(buffer)
    }

    func didReceiveError(task: HTTPClient.Task<Void>, _ error: any Error) {
        head.fail(error)
    }

    func didFinishRequest(task: HTTPClient.Task<Void>) throws {
        // A request that ended before its head (cannot happen with HTTP/1) leaves no waiter behind.
        head.fail(DownloadError("the response ended without a head"))
    }
}

/// A file being written and hashed. Hashing and writing are separate steps so that they can run
/// on two threads at once; `SinkPipeline` keeps each kind in order.
final class HashingFileSink: @unchecked Sendable {
    // `hasher` is touched only by hash steps, `fd`'s position and `written` only by write steps;
    // `SinkPipeline` runs the steps of each kind one at a time, in order, and `restart`,
    // `hashExisting` and `finish` run only when no step is in flight (the caller awaits them).
    // `flushedUpTo`, `flushing` and closing `fd` are guarded by `flushLock`.
    private var fd: Int32
    private var hasher = SHA256()
    private var written: Int64 = 0
    private let flushLock = NSLock()
    private var flushing = false
    private var flushedUpTo: Int64 = 0
    let path: String
    let existingBytes: Int64
    /// Dirty bytes past which a background `fdatasync` starts (write-behind), so that the final
    /// `fsync` finds little left to write.
    var writeBehindBytes: Int64 = 64 << 20

    init(path: String) throws {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
        var st = stat()
        fstat(fd, &st)
        existingBytes = Int64(st.st_size)
    }

    func close() {
        flushLock.withLock {
            if fd >= 0 { Glibc.close(fd); fd = -1 }
        }
    }

    private func onPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(body)
    }

    /// Drops whatever the file holds.
    func restart() async throws {
        try await onPool { [self] in
            guard ftruncate(fd, 0) == 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
            lseek(fd, 0, SEEK_SET)
            hasher = SHA256()
            written = 0
            flushLock.withLock { flushedUpTo = 0 }
        }
    }

    /// Hashes the bytes already in the file (a resumed download) and positions at its end.
    func hashExisting() async throws {
        try await onPool { [self] in
            lseek(fd, 0, SEEK_SET)
            hasher = SHA256()
            written = 0
            let block = 1 << 20
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 16)
            defer { buffer.deallocate() }
            while written < existingBytes {
                let n = read(fd, buffer.baseAddress, min(block, Int(existingBytes - written)))
                if n < 0 { if errno == EINTR { continue }; throw POSIXErrorWithPath(errno: errno, path: path) }
                if n == 0 { break }
                hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                written += Int64(n)
            }
            lseek(fd, off_t(written), SEEK_SET)
            flushLock.withLock { flushedUpTo = written }
        }
    }

    /// Adds `buffers` to the hash (one hash step; blocking).
    func hash(_ buffers: [ByteBuffer]) {
        for buffer in buffers { buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) } }
    }

    /// Appends `buffers` to the file (one write step; blocking); starts a background flush of
    /// what is dirty once that passes `writeBehindBytes`.
    func write(_ buffers: [ByteBuffer]) throws {
        for buffer in buffers {
            try buffer.withUnsafeReadableBytes { bytes in
                var offset = 0
                while offset < bytes.count {
                    let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                    if n < 0 { if errno == EINTR { continue }; throw POSIXErrorWithPath(errno: errno, path: path) }
                    offset += n
                }
            }
            written += Int64(buffer.readableBytes)
        }
        let end = written
        let copy = flushLock.withLock { () -> Int32 in
            guard !flushing, end - flushedUpTo >= writeBehindBytes, fd >= 0 else { return -1 }
            let copy = dup(fd)
            flushing = copy >= 0
            return copy
        }
        guard copy >= 0 else { return }
        // Not awaited: the disk catches up while the download goes on (`finish`'s fsync writes
        // whatever is left). A duplicate descriptor, so that `close` may run meanwhile; a thread
        // of its own, so that no hash or write step waits for the disk.
        Thread.detachNewThread { [self] in
            _ = fdatasync(copy)
            Glibc.close(copy)
            flushLock.withLock { flushedUpTo = max(flushedUpTo, end); flushing = false }
        }
    }

    /// Flushes the file to disk and returns its sha256 and size.
    func finish() async throws -> (String, Int64) {
        try await onPool { [self] in
            guard fsync(fd) == 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
            return (hexString(hasher.finalize()), written)
        }
    }
}

/// Body chunks on their way into a `HashingFileSink`, on one event loop: gathered (not copied)
/// into batches of `batchBytes`; each batch is hashed by one ordered chain of steps and written
/// by another, both on NIO's thread pool, side by side. While `depth` batches are in flight,
/// `add` returns a future that waits for room (AsyncHTTPClient then stops reading the socket).
final class SinkPipeline: @unchecked Sendable {
    // Every member is used on `eventLoop` only (the delegate's calls, the steps' completions).
    let sink: HashingFileSink
    let eventLoop: any EventLoop
    let batchBytes: Int
    let depth: Int
    private let pool = NIOThreadPool.singleton
    private var batch: [ByteBuffer] = []
    private var batchSize = 0
    private var hashTail: EventLoopFuture<Void>
    private var writeTail: EventLoopFuture<Void>
    private var inFlight = 0
    private var failure: (any Error)?
    private var roomWaiter: EventLoopPromise<Void>?
    private var idleWaiters: [EventLoopPromise<Void>] = []

    init(sink: HashingFileSink, eventLoop: any EventLoop, batchBytes: Int, depth: Int) {
        self.sink = sink
        self.eventLoop = eventLoop
        self.batchBytes = max(1, batchBytes)
        self.depth = max(1, depth)
        hashTail = eventLoop.makeSucceededVoidFuture()
        writeTail = eventLoop.makeSucceededVoidFuture()
    }

    /// Takes a body chunk.
    func add(_ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        eventLoop.preconditionInEventLoop()
        if let failure { return eventLoop.makeFailedFuture(failure) }
        batchSize += buffer.readableBytes
        batch.append(buffer)
        guard batchSize >= batchBytes else { return eventLoop.makeSucceededVoidFuture() }
        submit()
        guard inFlight >= depth else { return eventLoop.makeSucceededVoidFuture() }
        let room = eventLoop.makePromise(of: Void.self)
        roomWaiter = room
        return room.futureResult
    }

    /// Submits what is left and completes once every batch is hashed and written (or fails
    /// with the first step's error).
    func finish() -> EventLoopFuture<Void> {
        eventLoop.preconditionInEventLoop()
        if batchSize > 0 { submit() }
        return quiesce().flatMapThrowing { [self] in
            if let failure { throw failure }
        }
    }

    /// Completes once no step is in flight.
    func quiesce() -> EventLoopFuture<Void> {
        eventLoop.preconditionInEventLoop()
        guard inFlight > 0 else { return eventLoop.makeSucceededVoidFuture() }
        let idle = eventLoop.makePromise(of: Void.self)
        idleWaiters.append(idle)
        return idle.futureResult
    }

    private func submit() {
        let buffers = batch, sink = self.sink, pool = self.pool, loop = eventLoop
        batch = []
        batchSize = 0
        let hash = hashTail.flatMap { pool.runIfActive(eventLoop: loop) { sink.hash(buffers) } }
        let write = writeTail.flatMap { pool.runIfActive(eventLoop: loop) { try sink.write(buffers) } }
        hashTail = hash
        writeTail = write
        inFlight += 1
        hash.and(write).whenComplete { [self] result in
            inFlight -= 1
            if case .failure(let error) = result, failure == nil { failure = error }
            if let room = roomWaiter, inFlight < depth || failure != nil {
                roomWaiter = nil
                if let failure { room.fail(failure) } else { room.succeed(()) }
            }
            if inFlight == 0 {
                let waiters = idleWaiters
                idleWaiters = []
                for w in waiters { w.succeed(()) }
            }
        }
    }
}
