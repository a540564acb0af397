// What a change stream delivers: ChangeEvent and its parts, the resume token, and the options.

import BSON

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An opaque change-stream position. Persist it (it is Codable: a sub-document through
/// ``BSONEncoder``) and pass it back as ``ChangeStreamOptions/resumeAfter`` or
/// ``ChangeStreamOptions/startAfter``.
public struct ResumeToken: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The token as the server sent it (`{"_data": "..."}` on MongoDB).
    public let document: BSONDocument

    public init(_ document: BSONDocument) { self.document = document }

    public init(from decoder: any Decoder) throws {
        document = try decoder.singleValueContainer().decode(BSONDocument.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(document)
    }

    public var description: String { document.description }
}

/// The kind of change.
public enum OperationType: Sendable, Hashable, Codable, CustomStringConvertible {
    case insert, update, replace, delete, drop, rename, dropDatabase, invalidate
    /// A type this library does not name (e.g. `createIndexes` with expanded events).
    case other(String)

    public init(rawValue: String) {
        self = switch rawValue {
        case "insert": .insert
        case "update": .update
        case "replace": .replace
        case "delete": .delete
        case "drop": .drop
        case "rename": .rename
        case "dropDatabase": .dropDatabase
        case "invalidate": .invalidate
        default: .other(rawValue)
        }
    }

    public var rawValue: String {
        switch self {
        case .insert: "insert"
        case .update: "update"
        case .replace: "replace"
        case .delete: "delete"
        case .drop: "drop"
        case .rename: "rename"
        case .dropDatabase: "dropDatabase"
        case .invalidate: "invalidate"
        case .other(let s): s
        }
    }

    public var description: String { rawValue }

    public init(from decoder: any Decoder) throws {
        self.init(rawValue: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A database and (except for database-wide events) a collection.
public struct Namespace: Sendable, Hashable, Codable, CustomStringConvertible {
    public let db: String
    public let coll: String?

    public init(db: String, coll: String?) {
        self.db = db
        self.coll = coll
    }

    public var description: String { coll.map { "\(db).\($0)" } ?? db }
}

/// The fields an update changed.
public struct UpdateDescription: Sendable, Hashable, Codable {
    /// Changed fields by dotted path, with their new values.
    public let updatedFields: BSONDocument
    /// Removed fields by dotted path.
    public let removedFields: [String]
    /// Arrays shortened by the update (`$pop`, `$pull`, `$push` with `$slice`...).
    public let truncatedArrays: [TruncatedArray]?

    public struct TruncatedArray: Sendable, Hashable, Codable {
        public let field: String
        public let newSize: Int
    }
}

/// One change-stream event. `T` is the type of the full document.
public struct ChangeEvent<T: Decodable & Sendable>: Sendable, Decodable {
    /// The event's resume token (`_id`): resuming after it delivers the events that follow.
    public let id: ResumeToken
    public let operationType: OperationType
    /// The namespace changed (absent for `invalidate`).
    public let ns: Namespace?
    /// The new namespace of a `rename`.
    public let to: Namespace?
    /// `_id` (and shard key) of the changed document.
    public let documentKey: BSONDocument?
    /// The document: inserted or replaced; for updates with `fullDocument: .updateLookup` the
    /// current version (nil if it is already gone).
    public let fullDocument: T?
    /// What an update changed.
    public let updateDescription: UpdateDescription?
    /// When the change happened (the oplog time).
    public let clusterTime: BSONTimestamp?
    /// Server wall-clock time of the change (MongoDB ≥ 6.0).
    public let wallTime: Date?

    enum CodingKeys: String, CodingKey {
        case id = "_id"
        case operationType, ns, to, documentKey, fullDocument, updateDescription, clusterTime, wallTime
    }

    /// The `_id` from ``documentKey``.
    public var documentID: BSONValue? { documentKey?["_id"] }
}

/// Options of a change stream (`watch`).
public struct ChangeStreamOptions: Sendable {
    /// What update events carry as `fullDocument`.
    public enum FullDocument: String, Sendable {
        /// Nothing for updates (inserts and replaces always carry it).
        case `default`
        /// The current version of the document, looked up when the event is read.
        case updateLookup
        case whenAvailable
        case required
    }

    public var fullDocument: FullDocument?
    /// How long the server waits for new events before answering a getMore with an empty batch.
    /// Bounds how quickly a stream notices cancellation or ``ChangeStream/close()``; also how
    /// often an idle stream reports (``ChangeStreamNotification/idle``). Default 1000 ms.
    public var maxAwaitTimeMS: Int
    /// Events per server batch.
    public var batchSize: Int?
    /// Resume after this event (its token): the next event delivered is the one after it.
    public var resumeAfter: ResumeToken?
    /// Like ``resumeAfter``, but also valid after an `invalidate` event.
    public var startAfter: ResumeToken?
    /// Start with the changes at or after this time (see ``MongoClient/currentClusterTime()``).
    public var startAtOperationTime: BSONTimestamp?
    /// Events read ahead of the consumer before the stream thread waits (backpressure).
    public var bufferSize: Int

    public init(
        fullDocument: FullDocument? = nil, maxAwaitTimeMS: Int = 1000, batchSize: Int? = nil,
        resumeAfter: ResumeToken? = nil, startAfter: ResumeToken? = nil, startAtOperationTime: BSONTimestamp? = nil,
        bufferSize: Int = 256
    ) {
        self.fullDocument = fullDocument
        self.maxAwaitTimeMS = maxAwaitTimeMS
        self.batchSize = batchSize
        self.resumeAfter = resumeAfter
        self.startAfter = startAfter
        self.startAtOperationTime = startAtOperationTime
        self.bufferSize = bufferSize
    }

    var document: BSONDocument {
        optionsDocument([
            "fullDocument": fullDocument.map { .string($0.rawValue) }, "maxAwaitTimeMS": .int64(Int64(maxAwaitTimeMS)),
            "batchSize": batchSize.bson, "resumeAfter": resumeAfter.map { .document($0.document) },
            "startAfter": startAfter.map { .document($0.document) },
            "startAtOperationTime": startAtOperationTime.map { .timestamp($0) },
        ])
    }
}
