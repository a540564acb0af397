// Options of the operations and their results. Each options type knows the libmongoc `opts`
// document it stands for; nil fields are left out so server and client defaults apply.

import BSON

/// Builds an `opts` document from the fields that are set.
func optionsDocument(_ pairs: KeyValuePairs<String, BSONValue?>) -> BSONDocument {
    var doc = BSONDocument()
    for (key, value) in pairs {
        if let value { doc[key] = value }
    }
    return doc
}

/// How many members must acknowledge a write (MongoDB's `writeConcern`).
public struct WriteConcern: Sendable, Hashable {
    public enum W: Sendable, Hashable {
        /// A majority of the voting members (the default of this library and of MongoDB ≥ 5.0).
        case majority
        /// This many members (0: unacknowledged).
        case nodes(Int)
        /// Members matching a tag set name.
        case tag(String)
    }

    public var w: W?
    /// Wait for the on-disk journal.
    public var journal: Bool?
    /// Give up waiting for acknowledgement after this many milliseconds (`wtimeout`).
    public var timeoutMS: Int?

    public init(w: W? = nil, journal: Bool? = nil, timeoutMS: Int? = nil) {
        self.w = w
        self.journal = journal
        self.timeoutMS = timeoutMS
    }

    public static let majority = WriteConcern(w: .majority)

    var document: BSONDocument {
        let wValue: BSONValue? = switch w {
        case .majority?: "majority"
        case .nodes(let n)?: .int32(Int32(clamping: n))
        case .tag(let t)?: .string(t)
        case nil: nil
        }
        return optionsDocument([
            "w": wValue, "j": journal.map { .bool($0) }, "wtimeout": timeoutMS.map { .int64(Int64($0)) },
        ])
    }
}

/// The consistency of reads (MongoDB's `readConcern`).
public struct ReadConcern: Sendable, Hashable {
    public var level: String
    public init(level: String) { self.level = level }

    /// Data acknowledged by a majority: never rolled back.
    public static let majority = ReadConcern(level: "majority")
    public static let local = ReadConcern(level: "local")
    public static let available = ReadConcern(level: "available")
    public static let linearizable = ReadConcern(level: "linearizable")
    public static let snapshot = ReadConcern(level: "snapshot")

    var document: BSONDocument { ["level": .string(level)] }
}

extension Optional where Wrapped == WriteConcern {
    var bson: BSONValue? { self.map { .document($0.document) } }
}

extension Optional where Wrapped == ReadConcern {
    var bson: BSONValue? { self.map { .document($0.document) } }
}

extension Optional where Wrapped == Int {
    var bson: BSONValue? { self.map { .int64(Int64($0)) } }
}

extension Optional where Wrapped == Bool {
    var bson: BSONValue? { self.map { .bool($0) } }
}

extension Optional where Wrapped == BSONDocument {
    var bson: BSONValue? { self.map { .document($0) } }
}

/// Options of `find`, `findOne` and `findCursor`.
public struct FindOptions: Sendable {
    /// Sort specification, e.g. `["priority": -1, "_id": 1]`.
    public var sort: BSONDocument?
    /// At most this many documents.
    public var limit: Int?
    /// Skip this many documents first.
    public var skip: Int?
    /// Fields to include or exclude, e.g. `["name": 1, "_id": 0]`.
    public var projection: BSONDocument?
    /// Documents per server round trip.
    public var batchSize: Int?
    /// Index to use: a name or a key pattern.
    public var hint: BSONValue?
    /// Server-side time limit.
    public var maxTimeMS: Int?
    public var readConcern: ReadConcern?

    public init(
        sort: BSONDocument? = nil, limit: Int? = nil, skip: Int? = nil, projection: BSONDocument? = nil,
        batchSize: Int? = nil, hint: BSONValue? = nil, maxTimeMS: Int? = nil, readConcern: ReadConcern? = nil
    ) {
        self.sort = sort
        self.limit = limit
        self.skip = skip
        self.projection = projection
        self.batchSize = batchSize
        self.hint = hint
        self.maxTimeMS = maxTimeMS
        self.readConcern = readConcern
    }

    var document: BSONDocument {
        optionsDocument([
            "sort": sort.bson, "limit": limit.bson, "skip": skip.bson, "projection": projection.bson,
            "batchSize": batchSize.bson, "hint": hint, "maxTimeMS": maxTimeMS.bson, "readConcern": readConcern.bson,
        ])
    }
}

/// Options of inserts.
public struct InsertOptions: Sendable {
    /// insertMany: stop at the first error (true, the default) or try every document.
    public var ordered: Bool?
    public var writeConcern: WriteConcern?
    public var bypassDocumentValidation: Bool?

    public init(ordered: Bool? = nil, writeConcern: WriteConcern? = nil, bypassDocumentValidation: Bool? = nil) {
        self.ordered = ordered
        self.writeConcern = writeConcern
        self.bypassDocumentValidation = bypassDocumentValidation
    }

    func document(many: Bool) -> BSONDocument {
        optionsDocument([
            "ordered": many ? ordered.bson : nil, "writeConcern": writeConcern.bson,
            "bypassDocumentValidation": bypassDocumentValidation.bson,
        ])
    }
}

/// Options of `updateOne`, `updateMany` and `replaceOne`.
public struct UpdateOptions: Sendable {
    /// Insert a document when none matches.
    public var upsert: Bool?
    /// Filters for `$[identifier]` in the update (not for replaceOne).
    public var arrayFilters: [BSONDocument]?
    public var hint: BSONValue?
    public var writeConcern: WriteConcern?

    public init(
        upsert: Bool? = nil, arrayFilters: [BSONDocument]? = nil, hint: BSONValue? = nil, writeConcern: WriteConcern? = nil
    ) {
        self.upsert = upsert
        self.arrayFilters = arrayFilters
        self.hint = hint
        self.writeConcern = writeConcern
    }

    var document: BSONDocument {
        optionsDocument([
            "upsert": upsert.bson, "arrayFilters": arrayFilters.map { .array($0.map { .document($0) }) }, "hint": hint,
            "writeConcern": writeConcern.bson,
        ])
    }
}

/// Options of `deleteOne` and `deleteMany`.
public struct DeleteOptions: Sendable {
    public var hint: BSONValue?
    public var writeConcern: WriteConcern?

    public init(hint: BSONValue? = nil, writeConcern: WriteConcern? = nil) {
        self.hint = hint
        self.writeConcern = writeConcern
    }

    var document: BSONDocument { optionsDocument(["hint": hint, "writeConcern": writeConcern.bson]) }
}

/// Options of `countDocuments`.
public struct CountOptions: Sendable {
    public var limit: Int?
    public var skip: Int?
    public var hint: BSONValue?
    public var maxTimeMS: Int?
    public var readConcern: ReadConcern?

    public init(limit: Int? = nil, skip: Int? = nil, hint: BSONValue? = nil, maxTimeMS: Int? = nil, readConcern: ReadConcern? = nil) {
        self.limit = limit
        self.skip = skip
        self.hint = hint
        self.maxTimeMS = maxTimeMS
        self.readConcern = readConcern
    }

    var document: BSONDocument {
        optionsDocument([
            "limit": limit.bson, "skip": skip.bson, "hint": hint, "maxTimeMS": maxTimeMS.bson,
            "readConcern": readConcern.bson,
        ])
    }
}

/// Options of `findOneAndUpdate`, `findOneAndReplace` and `findOneAndDelete`.
public struct FindOneAndModifyOptions: Sendable {
    /// Which version of the document to return.
    public enum ReturnDocument: Sendable {
        case before
        case after
    }

    /// Return the document as it was before the change (the default) or after it.
    public var returnDocument: ReturnDocument
    /// Insert a document when none matches (update and replace).
    public var upsert: Bool
    /// Which document to change when several match.
    public var sort: BSONDocument?
    /// Fields of the returned document.
    public var projection: BSONDocument?
    public var arrayFilters: [BSONDocument]?
    public var maxTimeMS: Int?
    public var writeConcern: WriteConcern?

    public init(
        returnDocument: ReturnDocument = .before, upsert: Bool = false, sort: BSONDocument? = nil,
        projection: BSONDocument? = nil, arrayFilters: [BSONDocument]? = nil, maxTimeMS: Int? = nil,
        writeConcern: WriteConcern? = nil
    ) {
        self.returnDocument = returnDocument
        self.upsert = upsert
        self.sort = sort
        self.projection = projection
        self.arrayFilters = arrayFilters
        self.maxTimeMS = maxTimeMS
        self.writeConcern = writeConcern
    }

    /// The fields libmongoc takes through `mongoc_find_and_modify_opts_append`.
    var extra: BSONDocument {
        optionsDocument([
            "arrayFilters": arrayFilters.map { .array($0.map { .document($0) }) }, "maxTimeMS": maxTimeMS.bson,
            "writeConcern": writeConcern.bson,
        ])
    }
}

/// Options of `aggregate` and `aggregateCursor`.
public struct AggregateOptions: Sendable {
    public var batchSize: Int?
    public var allowDiskUse: Bool?
    public var maxTimeMS: Int?
    public var readConcern: ReadConcern?
    /// For pipelines ending in `$out` / `$merge`.
    public var writeConcern: WriteConcern?

    public init(
        batchSize: Int? = nil, allowDiskUse: Bool? = nil, maxTimeMS: Int? = nil, readConcern: ReadConcern? = nil,
        writeConcern: WriteConcern? = nil
    ) {
        self.batchSize = batchSize
        self.allowDiskUse = allowDiskUse
        self.maxTimeMS = maxTimeMS
        self.readConcern = readConcern
        self.writeConcern = writeConcern
    }

    var document: BSONDocument {
        optionsDocument([
            "batchSize": batchSize.bson, "allowDiskUse": allowDiskUse.bson, "maxTimeMS": maxTimeMS.bson,
            "readConcern": readConcern.bson, "writeConcern": writeConcern.bson,
        ])
    }
}

/// An index to create: its key pattern and options.
public struct IndexModel: Sendable {
    /// The key pattern, e.g. `["status.name": 1, "priority": -1]`.
    public var keys: BSONDocument
    public var options: IndexOptions

    public init(keys: BSONDocument, options: IndexOptions = .init()) {
        self.keys = keys
        self.options = options
    }

    /// The name MongoDB drivers derive from the keys when none is given: `a_1_b_-1`.
    public var name: String {
        options.name ?? keys.map { key, value in
            let v: String = switch value {
            case .int32(let i): String(i)
            case .int64(let i): String(i)
            case .double(let d): d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
            case .string(let s): s
            default: value.description
            }
            return "\(key)_\(v)"
        }.joined(separator: "_")
    }

    var document: BSONDocument {
        var doc: BSONDocument = ["key": .document(keys), "name": .string(name)]
        for (k, v) in options.document { doc[k] = v }
        return doc
    }
}

/// Options of an index.
public struct IndexOptions: Sendable {
    /// The index name (default: derived from the keys, see ``IndexModel/name``).
    public var name: String?
    /// Refuse documents with the same key (duplicate-key error 11000).
    public var unique: Bool?
    /// A TTL index: remove documents this long after the date in the (single) indexed field.
    public var expireAfterSeconds: Int?
    /// Index only documents that match this filter.
    public var partialFilterExpression: BSONDocument?
    /// Index only documents that have the field.
    public var sparse: Bool?
    /// Any other index option, merged in as is.
    public var extra: BSONDocument?

    public init(
        name: String? = nil, unique: Bool? = nil, expireAfterSeconds: Int? = nil,
        partialFilterExpression: BSONDocument? = nil, sparse: Bool? = nil, extra: BSONDocument? = nil
    ) {
        self.name = name
        self.unique = unique
        self.expireAfterSeconds = expireAfterSeconds
        self.partialFilterExpression = partialFilterExpression
        self.sparse = sparse
        self.extra = extra
    }

    var document: BSONDocument {
        optionsDocument([
            "unique": unique.bson, "expireAfterSeconds": expireAfterSeconds.map { .int32(Int32(clamping: $0)) },
            "partialFilterExpression": partialFilterExpression.bson, "sparse": sparse.bson,
        ]).merging(extra ?? [:])
    }
}

/// What `updateOne`, `updateMany` and `replaceOne` did.
public struct UpdateResult: Sendable, Hashable {
    /// Documents the filter matched.
    public let matchedCount: Int
    /// Documents actually changed.
    public let modifiedCount: Int
    /// Documents inserted by an upsert (0 or 1).
    public let upsertedCount: Int
    /// The `_id` of the upserted document.
    public let upsertedId: BSONValue?

    init(reply: BSONDocument) {
        matchedCount = reply["matchedCount"]?.intValue ?? 0
        modifiedCount = reply["modifiedCount"]?.intValue ?? 0
        upsertedId = reply["upsertedId"]
        upsertedCount = reply["upsertedCount"]?.intValue ?? (upsertedId == nil ? 0 : 1)
    }
}
