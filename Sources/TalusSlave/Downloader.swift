// Downloads from the Talus API (DESIGN §7, §9): streamed to a file and hashed (sha256) on the way,
// resumed with `Range` after an interruption, verified against the server's `X-Talus-SHA256`.
// Hashing and writing run on NIO's thread pool, side by side and overlapped with receiving the
// next bytes; dirty pages are flushed in the background while the download goes on.

import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
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
    /// Bytes gathered before one write and one hash step on the thread pool.
    public var batchBytes = 1 << 20
    /// Batches received but not yet both hashed and written; past this, reading waits.
    public var maxBatchesInFlight = 8

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
        var request = HTTPClientRequest(url: url)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let have = sink.existingBytes
        let etag = (try? String(contentsOfFile: etagPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if have > 0, let etag, !etag.isEmpty {
            request.headers.add(name: "Range", value: "bytes=\(have)-")
            request.headers.add(name: "If-Range", value: etag)
        }
        let response = try await client.execute(request, timeout: .hours(12))
        switch response.status.code {
        case 200:
            try await sink.restart()
        case 206:
            guard let range = response.headers.first(name: "Content-Range"), range.hasPrefix("bytes \(have)-") else {
                throw DownloadError("\(url): unexpected Content-Range \(response.headers.first(name: "Content-Range") ?? "none")")
            }
            try await sink.hashExisting()
            logger.info("resuming download", metadata: ["url": "\(url)", "offset": "\(have)"])
        case 401, 403:
            throw DownloadError("\(url): the API refused the slave's token (HTTP \(response.status.code)); check api.token", permanent: true)
        case 404:
            throw DownloadError("\(url): not found on the API (HTTP 404)", permanent: true)
        case 416:
            // Our partial file is longer than the server's: start over.
            try await sink.restart()
            try? FileManager.default.removeItem(atPath: etagPath)
            throw DownloadError("\(url): range not satisfiable; starting over")
        default:
            throw DownloadError("\(url): HTTP \(response.status.code)", permanent: (400..<500).contains(response.status.code))
        }
        let announced = response.headers.first(name: "X-Talus-SHA256")?.lowercased()
        if let announced, let expectedSHA256, announced != expectedSHA256 {
            throw DownloadError("\(url): the API serves a file with sha256 \(announced), the part expects \(expectedSHA256)", permanent: true)
        }
        if let newTag = response.headers.first(name: "ETag") {
            try? newTag.write(toFile: etagPath, atomically: true, encoding: .utf8)
        } else {
            try? FileManager.default.removeItem(atPath: etagPath)
        }
        // The pipeline: the body's chunks are gathered (not copied) into batches; each batch is
        // hashed on one ordered chain and written on another, both on NIO's thread pool, while
        // the loop keeps receiving. At most `maxBatchesInFlight` batches are held: past that the
        // loop waits, which stops reading from the socket (backpressure).
        var pipeline = SinkPipeline(sink: sink, depth: maxBatchesInFlight)
        do {
            var batch: [ByteBuffer] = []
            var batchSize = 0
            for try await chunk in response.body {
                onBytes(chunk.readableBytes)
                batchSize += chunk.readableBytes
                batch.append(chunk)
                if batchSize >= batchBytes {
                    try await pipeline.submit(batch)
                    batch = []
                    batchSize = 0
                }
            }
            if batchSize > 0 { try await pipeline.submit(batch) }
            try await pipeline.drain()
        } catch {
            // Nothing may touch the file once this returns.
            await pipeline.abandon()
            throw error
        }
        let (hex, size) = try await sink.finish()
        if let length = response.headers.first(name: "Content-Length").flatMap(Int64.init),
           size != (response.status.code == 206 ? have + length : length) {
            throw DownloadError("\(url): connection ended after \(size) bytes")
        }
        if let announced, announced != hex {
            try await sink.restart()
            throw DownloadError("\(url): received bytes have sha256 \(hex), the API announced \(announced)")
        }
        try? FileManager.default.removeItem(atPath: etagPath)
        return (hex, size)
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

    /// Adds `buffers` to the hash (one hash step).
    func hash(_ buffers: [ByteBuffer]) async throws {
        try await onPool { [self] in
            for buffer in buffers { buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) } }
        }
    }

    /// Appends `buffers` to the file (one write step); starts a background flush of what is
    /// dirty once that passes `writeBehindBytes`.
    func write(_ buffers: [ByteBuffer]) async throws {
        let end: Int64 = try await onPool { [self] in
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
            return written
        }
        let start = flushLock.withLock { () -> Bool in
            guard !flushing, end - flushedUpTo >= writeBehindBytes else { return false }
            flushing = true
            return true
        }
        guard start else { return }
        // Not awaited: the disk catches up while the download goes on (`finish`'s fsync writes
        // whatever is left). A duplicate descriptor, so that `close` may run meanwhile.
        let copy = flushLock.withLock { fd >= 0 ? dup(fd) : -1 }
        guard copy >= 0 else { flushLock.withLock { flushing = false }; return }
        // A thread of its own: on NIO's pool it would hold up one of the hash and write steps.
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

/// Batches on their way into a `HashingFileSink`: each is hashed and written by two ordered
/// chains of steps that run side by side; at most `depth` batches are held at once.
struct SinkPipeline {
    let sink: HashingFileSink
    let depth: Int
    private var hashTail: Task<Void, any Error>?
    private var writeTail: Task<Void, any Error>?
    private var inFlight: [(hash: Task<Void, any Error>, write: Task<Void, any Error>)] = []

    init(sink: HashingFileSink, depth: Int) {
        self.sink = sink
        self.depth = max(1, depth)
    }

    /// Queues `batch`; waits first while `depth` batches are in flight.
    mutating func submit(_ batch: [ByteBuffer]) async throws {
        while inFlight.count >= depth {
            let oldest = inFlight.removeFirst()
            try await oldest.hash.value
            try await oldest.write.value
        }
        let sink = self.sink
        let previousHash = hashTail, previousWrite = writeTail
        let hash = Task { try await previousHash?.value; try await sink.hash(batch) }
        let write = Task { try await previousWrite?.value; try await sink.write(batch) }
        hashTail = hash
        writeTail = write
        inFlight.append((hash, write))
    }

    /// Waits until every queued batch is hashed and written.
    mutating func drain() async throws {
        while !inFlight.isEmpty {
            let oldest = inFlight.removeFirst()
            try await oldest.hash.value
            try await oldest.write.value
        }
    }

    /// Waits until no step runs any more, ignoring their errors.
    mutating func abandon() async {
        for step in inFlight {
            _ = try? await step.hash.value
            _ = try? await step.write.value
        }
        inFlight.removeAll()
    }
}
