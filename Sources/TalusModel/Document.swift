// The common shape of every Talus document (DESIGN §3): `_id`, `created`, `updated`, `tags`, and a
// `schema` version that a reader checks before trusting the rest.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// A document stored in one of Talus's MongoDB collections.
///
/// Field names on the wire are snake_case (DESIGN §3); Swift names are camelCase with explicit
/// `CodingKeys`, so the same value encodes identically through ``BSONEncoder`` and `JSONEncoder`.
public protocol TalusDocument: Codable, Sendable {
    /// The collection the document lives in.
    static var collection: Collection { get }
    /// The schema version this build writes. Readers refuse documents with a newer one.
    static var currentSchema: Int { get }

    var id: ObjectId { get }
    var schema: Int { get }
}

extension TalusDocument {
    /// Throws ``SchemaError`` when the document was written by a newer Talus than this one.
    public func checkSchema() throws {
        if schema > Self.currentSchema {
            throw SchemaError(collection: Self.collection, id: id, found: schema, supported: Self.currentSchema)
        }
    }
}

/// The collections of the `talus` database (DESIGN §3) plus the ones the implementation adds.
public enum Collection: String, Codable, Sendable, CaseIterable {
    case os, images, uploads, code, tasks, jobs, parts, runs, results, crashes, slaves, users, tokens
    case filesets
    /// GridFS bucket `files`: `files.files` and `files.chunks`.
    case filesFiles = "files.files"
    case filesChunks = "files.chunks"
    /// The master's resume token and leader lease.
    case state
}

/// A document carries a schema version newer than this build understands: refuse loudly rather
/// than misread it.
public struct SchemaError: Error, CustomStringConvertible, Sendable {
    public let collection: Collection
    public let id: ObjectId
    public let found: Int
    public let supported: Int
    public var description: String {
        "\(collection.rawValue)/\(id): schema \(found) is newer than this Talus understands (\(supported)); upgrade this daemon"
    }
}

/// Free-form user tags on any document.
public typealias Tags = [String]

/// Current time truncated to milliseconds, the precision BSON dates keep, so a value read back
/// compares equal to the one written.
public func bsonNow() -> Date {
    let ms = (Date().timeIntervalSince1970 * 1000).rounded(.down)
    return Date(timeIntervalSince1970: ms / 1000)
}
