// Uploads (DESIGN §9): a client announces a file (`POST /api/v1/uploads` with its name and
// size), then streams it with `PUT /api/v1/uploads/{id}/content`. The body goes straight to
// `<storage.uploads>/<id>.part` in 1 MiB writes with its SHA-256 computed on the way — memory
// stays flat however large the file. When the announced size is reached the file is synced and
// renamed to `<id>` (atomic), and the document records size, sha256 and `complete`.
//
// Retries and resumption:
// - a PUT without `Content-Range` starts from byte 0 (a retry simply sends everything again);
// - a PUT with `Content-Range: bytes START-END/TOTAL` continues at START, which must equal the
//   bytes already received (the upload's `size`; 409 otherwise) — the hash of the part already
//   on disk is recomputed first, so the final sha256 is of the whole file;
// - a body cut off midway leaves the upload incomplete with `size` = bytes safely written;
// - a body longer than announced, or an announcement above `uploads.max_bytes`, is a 413 and
//   the partial file is removed;
// - incomplete and unconsumed uploads expire after `uploads.expire_after` (TTL index on
//   `expires`, plus a sweep that removes their files and any file without a document).

import BSON
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mongo
import NIOCore
import NIOFileSystem
import ServiceLifecycle
import Synchronization
import TalusCore
import TalusModel

/// Receives upload bodies and keeps the upload directory clean.
final class UploadManager: Sendable {
    let directory: String
    let maxBytes: Int64
    let expireAfter: Duration
    let uploads: MongoCollection<UploadDocument>
    let logger: Logger
    /// Uploads whose body is being received right now (one transfer per upload at a time).
    private let active = Mutex<Set<ObjectId>>([])

    init(directory: String, maxBytes: Int64, expireAfter: Duration, uploads: MongoCollection<UploadDocument>, logger: Logger) {
        self.directory = directory; self.maxBytes = maxBytes; self.expireAfter = expireAfter
        self.uploads = uploads; self.logger = logger
    }

    func partPath(_ id: ObjectId) -> String { directory + "/" + id.hex + ".part" }
    func finalPath(_ id: ObjectId) -> String { directory + "/" + id.hex }

    /// When an upload created now expires.
    func expiry(from now: Date = bsonNow()) -> Date {
        now.addingTimeInterval(Double(expireAfter.components.seconds))
    }

    /// A parsed `Content-Range: bytes START-END/TOTAL`.
    struct ContentRange: Equatable {
        var start: Int64
        var end: Int64
        var total: Int64

        init?(_ header: String) {
            let h = header.trimmingCharacters(in: .whitespaces)
            guard h.hasPrefix("bytes ") else { return nil }
            let spec = h.dropFirst(6)
            let halves = spec.split(separator: "/", maxSplits: 1)
            guard halves.count == 2, let total = Int64(halves[1]) else { return nil }
            let ends = halves[0].split(separator: "-", maxSplits: 1)
            guard ends.count == 2, let s = Int64(ends[0]), let e = Int64(ends[1]), s >= 0, e >= s, e < total else { return nil }
            start = s; end = e; self.total = total
        }
    }

    /// Streams `body` into the upload's part file. Returns the updated document (complete when
    /// every announced byte arrived).
    func receive(_ upload: UploadDocument, body: RequestBody, headers: HTTPFields) async throws -> UploadDocument {
        guard !upload.complete else {
            throw APIProblem.conflict("upload \(upload.id.hex) is already complete (\(upload.size) bytes, sha256 \(upload.sha256 ?? "?")); create a new upload to send another file")
        }
        let expected = upload.expectedSize ?? maxBytes
        let contentLength = headers[.contentLength].flatMap { Int64($0) }
        var offset: Int64 = 0
        if let header = headers[.contentRange] {
            guard let range = ContentRange(header) else {
                throw APIProblem.badRequest("Content-Range must be `bytes START-END/TOTAL` (got \(header))")
            }
            guard range.total == expected else {
                throw APIProblem.invalid("Content-Range", "total \(range.total) differs from the announced size \(expected)")
            }
            if let contentLength, contentLength != range.end - range.start + 1 {
                throw APIProblem.badRequest("Content-Range covers \(range.end - range.start + 1) bytes but Content-Length is \(contentLength)")
            }
            let onDisk = Self.fileSize(partPath(upload.id)) ?? 0
            guard range.start == onDisk else {
                throw APIProblem(.conflict, "this upload has \(onDisk) bytes; resume with Content-Range: bytes \(onDisk)-\(expected - 1)/\(expected)")
            }
            offset = range.start
        }
        if let contentLength, offset + contentLength > expected {
            throw APIProblem.tooLarge("the body (\(contentLength) bytes from offset \(offset)) is larger than the announced size \(expected)")
        }
        guard active.withLock({ $0.insert(upload.id).inserted }) else {
            throw APIProblem.conflict("another transfer of upload \(upload.id.hex) is running; wait for it or cancel it")
        }
        defer { _ = active.withLock { $0.remove(upload.id) } }

        let part = partPath(upload.id)
        let start = offset
        var hasher = SHA256()
        if start > 0 {
            hasher = try await blockingIO { try Self.hashPrefix(part, length: start) }
        } else {
            // A fresh start: an empty part file (created here, not through a temporary, so a
            // cut-off transfer leaves what arrived).
            let fd = open(part, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o640)
            guard fd >= 0 else { throw POSIXErrorWithPath(errno: errno, path: part) }
            close(fd)
        }
        var received = offset
        var log = logger
        log[metadataKey: "upload"] = .string(upload.id.hex)
        do {
            try await FileSystem.shared.withFileHandle(
                forWritingAt: FilePath(part), options: .modifyFile(createIfNecessary: false)
            ) { handle in
                try await handle.resize(to: .bytes(offset))
                var pending = ByteBufferAllocator().buffer(capacity: 1 << 20)
                var pendingOffset = offset
                do {
                    for try await buffer in body {
                        let n = Int64(buffer.readableBytes)
                        if received + n > expected {
                            throw APIProblem.tooLarge("the body is larger than the announced size (\(expected) bytes)")
                        }
                        buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                        var b = buffer
                        pending.writeBuffer(&b)
                        received += n
                        if pending.readableBytes >= 1 << 20 {
                            try await handle.write(contentsOf: pending, toAbsoluteOffset: pendingOffset)
                            pendingOffset += Int64(pending.readableBytes)
                            pending.clear()
                        }
                    }
                } catch {
                    // Keep what arrived (a later PUT may resume from it).
                    if pending.readableBytes > 0 {
                        _ = try? await handle.write(contentsOf: pending, toAbsoluteOffset: pendingOffset)
                    }
                    throw error
                }
                if pending.readableBytes > 0 {
                    try await handle.write(contentsOf: pending, toAbsoluteOffset: pendingOffset)
                }
                if received == expected { try await handle.synchronize() }
            }
        } catch let problem as APIProblem {
            // Oversized: nothing of this transfer is kept.
            unlink(part)
            _ = try? await uploads.updateOne(["_id": .objectId(upload.id)],
                                         ["$set": ["size": .int64(0), "updated": .datetime(bsonNow())]])
            log.notice("upload refused", metadata: ["reason": .string(problem.detail)])
            throw problem
        } catch {
            // Cut off (or a disk error): record how much is safely on disk, for a resume.
            let onDisk = Self.fileSize(part) ?? 0
            _ = try? await uploads.updateOne(["_id": .objectId(upload.id)],
                                         ["$set": ["size": .int64(onDisk), "updated": .datetime(bsonNow())]])
            if error is FileSystemError {
                log.error("cannot write upload", metadata: ["error": "\(error)"])
                throw APIProblem(.internalServerError, "the server cannot store the upload (\(onDisk) bytes kept); tell its operator: \(error)")
            }
            log.notice("upload transfer ended early", metadata: ["received": .stringConvertible(onDisk), "error": "\(error)"])
            throw APIProblem.badRequest("the body ended after \(onDisk) of \(expected) bytes (\(error)); resume with Content-Range: bytes \(onDisk)-\(expected - 1)/\(expected)")
        }

        var doc = upload
        doc.size = received
        doc.updated = bsonNow()
        if received == expected {
            let final = finalPath(upload.id)
            guard rename(part, final) == 0 else { throw POSIXErrorWithPath(errno: errno, path: final) }
            doc.complete = true
            doc.sha256 = hexString(hasher.finalize())
            doc.path = upload.id.hex
            log.info("upload complete", metadata: ["bytes": .stringConvertible(received), "sha256": .string(doc.sha256!)])
        }
        var set: BSONDocument = ["size": .int64(doc.size), "updated": .datetime(doc.updated), "complete": .bool(doc.complete),
                                 "path": .string(doc.path)]
        if let sha = doc.sha256 { set["sha256"] = .string(sha) }
        try await uploads.updateOne(["_id": .objectId(upload.id)], ["$set": .document(set)])
        return doc
    }

    /// Removes an upload's files (either name).
    func removeFiles(_ id: ObjectId) {
        unlink(partPath(id))
        unlink(finalPath(id))
    }

    /// Removes expired uploads (documents and files) and files that belong to no upload.
    /// Returns how many files were removed.
    @discardableResult
    func sweep(now: Date = Date(), orphanGrace: TimeInterval = 3600) async throws -> Int {
        var removed = 0
        let expired = try await uploads.find(["expires": ["$lte": .datetime(now)]])
        for doc in expired {
            try await uploads.deleteOne(["_id": .objectId(doc.id)])
            removeFiles(doc.id)
            removed += 1
            logger.info("removed expired upload", metadata: ["upload": .string(doc.id.hex), "complete": .stringConvertible(doc.complete)])
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var byId: [ObjectId: [String]] = [:]
        for name in names {
            let stem = name.hasSuffix(".part") ? String(name.dropLast(5)) : name
            guard let id = ObjectId(stem) else { continue }
            byId[id, default: []].append(name)
        }
        if byId.isEmpty { return removed }
        let known = try await uploads.find(["_id": ["$in": .array(byId.keys.map { .objectId($0) })]])
        let docs = Dictionary(known.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        for (id, files) in byId {
            for name in files {
                let path = directory + "/" + name
                let stale: Bool
                if let doc = docs[id] {
                    // A part file left next to a completed upload.
                    stale = doc.complete && name.hasSuffix(".part")
                } else {
                    // No document: the upload was consumed, deleted or expired. Leave very young
                    // files alone (their document may be being written).
                    let age = (try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date)
                        .map { now.timeIntervalSince($0) } ?? .infinity
                    stale = age > orphanGrace
                }
                if stale, unlink(path) == 0 {
                    removed += 1
                    logger.info("removed orphaned upload file", metadata: ["file": .string(name)])
                }
            }
        }
        return removed
    }

    static func fileSize(_ path: String) -> Int64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int64(st.st_size)
    }

    /// SHA-256 state after the first `length` bytes of `path` (to resume an upload).
    static func hashPrefix(_ path: String, length: Int64) throws -> SHA256 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
        defer { close(fd) }
        var hasher = SHA256()
        let block = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 16)
        defer { buffer.deallocate() }
        var left = length
        while left > 0 {
            let n = read(fd, buffer.baseAddress, Int(min(Int64(block), left)))
            if n < 0 { if errno == EINTR { continue }; throw POSIXErrorWithPath(errno: errno, path: path) }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            left -= Int64(n)
        }
        return hasher
    }
}

/// Runs ``UploadManager/sweep(now:orphanGrace:)`` every `interval` until shutdown.
struct UploadSweeper: Service {
    let manager: UploadManager
    let interval: Duration
    let logger: Logger

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await manager.sweep()
            } catch {
                logger.warning("upload sweep failed; retrying later", metadata: ["error": "\(error)"])
            }
            let interval = self.interval
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
