// Stored files (DESIGN §3 `files`): a GridFS bucket named `files` — `files.files` holds one
// document per file, `files.chunks` its contents in numbered chunks — laid out as the GridFS
// specification says, so standard tools (mongofiles, drivers' GridFS buckets) read what Talus
// writes. The master writes result files and crash inputs here; the API writes user uploads
// (corpora) and serves every file back byte-exact.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// Names and sizes of the `files` GridFS bucket.
public enum FilesBucket {
    /// The bucket name: collections `files.files` and `files.chunks`.
    public static let name = "files"
    public static let filesCollection = Collection.filesFiles
    public static let chunksCollection = Collection.filesChunks
    /// The GridFS default chunk size (255 KiB): a chunk document stays well under 16 MB and a
    /// chunk is a reasonable unit of streaming.
    public static let defaultChunkSize: Int32 = 255 * 1024
}

/// What Talus keeps in a stored file's `metadata`.
public struct StoredFileMetadata: Codable, Sendable, Equatable {
    /// Lowercase hex SHA-256 of the contents (always set; readers may verify).
    public var sha256: String
    /// The user who uploaded it (nil for files a tool produced).
    public var owner: ObjectId?
    /// The job whose run produced it (nil for uploads).
    public var job: ObjectId?
    /// MIME type when known (`application/octet-stream` otherwise).
    public var contentType: String?
    public var tags: Tags

    public init(sha256: String, owner: ObjectId? = nil, job: ObjectId? = nil, contentType: String? = nil, tags: Tags = []) {
        self.sha256 = sha256; self.owner = owner; self.job = job; self.contentType = contentType; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case sha256, owner, job
        case contentType = "content_type"
        case tags
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        sha256 = try c.decode(String.self, forKey: .sha256)
        owner = try c.decodeIfPresent(ObjectId.self, forKey: .owner)
        job = try c.decodeIfPresent(ObjectId.self, forKey: .job)
        contentType = try c.decodeIfPresent(String.self, forKey: .contentType)
        tags = try c.decodeIfPresent(Tags.self, forKey: .tags) ?? []
    }
}

/// A `files.files` document (GridFS spec field names: `length`, `chunkSize`, `uploadDate`).
///
/// Written last, after every chunk: a file document exists only for a complete file.
public struct StoredFileDocument: Codable, Sendable, Equatable {
    public static let collection = Collection.filesFiles

    public var id: ObjectId
    /// Total bytes.
    public var length: Int64
    /// Bytes per chunk (every chunk but the last is exactly this long).
    public var chunkSize: Int32
    public var uploadDate: Date
    public var filename: String
    public var metadata: StoredFileMetadata

    public init(id: ObjectId = ObjectId(), length: Int64, chunkSize: Int32 = FilesBucket.defaultChunkSize,
                uploadDate: Date = bsonNow(), filename: String, metadata: StoredFileMetadata) {
        self.id = id; self.length = length; self.chunkSize = chunkSize; self.uploadDate = uploadDate
        self.filename = filename; self.metadata = metadata
    }

    enum CodingKeys: String, CodingKey { case id = "_id", length, chunkSize, uploadDate, filename, metadata }

    /// Number of chunks the file has.
    public var chunkCount: Int {
        length == 0 ? 0 : Int((length + Int64(chunkSize) - 1) / Int64(chunkSize))
    }

    /// The reference results, crash samples and filesets keep.
    public var ref: StoredFileRef { StoredFileRef(id: id, name: filename, size: length, sha256: metadata.sha256) }
}

/// A `files.chunks` document: chunk `n` (0-based) of file `files_id`.
public struct FileChunkDocument: Codable, Sendable, Equatable {
    public static let collection = Collection.filesChunks

    public var id: ObjectId
    public var filesId: ObjectId
    public var n: Int32
    public var data: BSONBinary

    public init(id: ObjectId = ObjectId(), filesId: ObjectId, n: Int32, data: BSONBinary) {
        self.id = id; self.filesId = filesId; self.n = n; self.data = data
    }

    enum CodingKeys: String, CodingKey { case id = "_id", filesId = "files_id", n, data }
}
