// The `files` GridFS bucket (layout in TalusModel/Files.swift): storing a request body as chunks
// with its SHA-256, and streaming a file back byte-exact.

import BSON
import Crypto
import Foundation
import Hummingbird
import Logging
import Mongo
import NIOCore
import TalusCore
import TalusModel

/// Reads and writes files of the `files` bucket.
struct GridFSBucket: Sendable {
    let files: MongoCollection<StoredFileDocument>
    let chunks: MongoCollection<FileChunkDocument>
    /// Chunks inserted per round trip while storing.
    static let batch = 16

    /// Stores `body` as a new file. The chunks go first and the file document last, so a file
    /// document only ever describes a complete file; on any failure the chunks written so far are
    /// removed. A body over `maxBytes` is a 413.
    func store(_ body: RequestBody, filename: String, metadata: StoredFileMetadata, maxBytes: Int64) async throws -> StoredFileDocument {
        let id = ObjectId()
        let chunkSize = Int(FilesBucket.defaultChunkSize)
        var hasher = SHA256()
        var length: Int64 = 0
        var current: [UInt8] = []
        current.reserveCapacity(chunkSize)
        var batch: [FileChunkDocument] = []
        var n: Int32 = 0
        do {
            for try await buffer in body {
                length += Int64(buffer.readableBytes)
                if length > maxBytes {
                    throw APIProblem.tooLarge("files are limited to \(maxBytes) bytes (files.max_bytes)")
                }
                buffer.withUnsafeReadableBytes { raw in
                    hasher.update(bufferPointer: raw)
                    var rest = raw[...]
                    while !rest.isEmpty {
                        let take = min(chunkSize - current.count, rest.count)
                        current.append(contentsOf: rest.prefix(take))
                        rest = rest.dropFirst(take)
                        if current.count == chunkSize {
                            batch.append(FileChunkDocument(filesId: id, n: n, data: BSONBinary(bytes: current)))
                            n += 1
                            current.removeAll(keepingCapacity: true)
                        }
                    }
                }
                if batch.count >= Self.batch {
                    try await chunks.insertMany(batch)
                    batch.removeAll(keepingCapacity: true)
                }
            }
            if !current.isEmpty { batch.append(FileChunkDocument(filesId: id, n: n, data: BSONBinary(bytes: current))) }
            if !batch.isEmpty { try await chunks.insertMany(batch) }
            let doc = StoredFileDocument(id: id, length: length, filename: filename,
                                         metadata: StoredFileMetadata(sha256: hexString(hasher.finalize()), owner: metadata.owner,
                                                                      job: metadata.job, contentType: metadata.contentType,
                                                                      tags: metadata.tags))
            try await files.insertOne(doc)
            return doc
        } catch {
            try? await chunks.deleteMany(["files_id": .objectId(id)])
            throw error
        }
    }

    /// The file with `id`, or nil.
    func find(_ id: ObjectId) async throws -> StoredFileDocument? {
        try await files.findOne(["_id": .objectId(id)])
    }

    /// A response body streaming the file's chunks in order. A missing or short chunk ends the
    /// stream with an error (the client sees a truncated body, never wrong bytes).
    func body(of file: StoredFileDocument, logger: Logger) -> ResponseBody {
        let chunks = self.chunks
        return ResponseBody(contentLength: Int(file.length)) { writer in
            var expected: Int32 = 0
            var sent: Int64 = 0
            let cursor = try await chunks.findCursor(
                ["files_id": .objectId(file.id)], options: FindOptions(sort: ["n": 1], batchSize: 8))
            for try await chunk in cursor {
                let isLast = sent + Int64(chunk.data.bytes.count) == file.length
                guard chunk.n == expected, chunk.data.bytes.count == Int(file.chunkSize) || isLast else {
                    logger.error("corrupt stored file", metadata: ["file": .string(file.id.hex), "chunk": .stringConvertible(chunk.n)])
                    throw APIProblem(.internalServerError, "stored file \(file.id.hex) is corrupt at chunk \(chunk.n)")
                }
                try await writer.write(ByteBuffer(bytes: chunk.data.bytes))
                sent += Int64(chunk.data.bytes.count)
                expected += 1
            }
            guard sent == file.length else {
                logger.error("stored file is missing chunks", metadata: ["file": .string(file.id.hex)])
                throw APIProblem(.internalServerError, "stored file \(file.id.hex) is missing chunks")
            }
            try await writer.finish(nil)
        }
    }

    /// Deletes the file document, then its chunks.
    func delete(_ id: ObjectId) async throws {
        try await files.deleteOne(["_id": .objectId(id)])
        try await chunks.deleteMany(["files_id": .objectId(id)])
    }
}
