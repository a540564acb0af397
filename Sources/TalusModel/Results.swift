// Results, crashes, slaves, users, tokens, filesets and the master's state (DESIGN §3).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// A result a tool reported.
public struct ResultDocument: TalusDocument, Equatable {
    public static let collection = Collection.results
    public static let currentSchema = 1

    public var id: ObjectId
    public var schema: Int
    public var job: ObjectId
    public var idx: Int
    public var run: String
    public var tool: String
    /// Free-form kind given by the tool (`coverage`, `stats`, `crash`, ...).
    public var type: String
    public var data: BSONDocument
    /// Files stored with the result (GridFS ids in the `files` bucket).
    public var files: [StoredFileRef]
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), job: ObjectId, idx: Int, run: String, tool: String, type: String,
                data: BSONDocument = [:], files: [StoredFileRef] = [], tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.job = job; self.idx = idx; self.run = run; self.tool = tool
        self.type = type; self.data = data; self.files = files; created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, job, idx, run, tool, type, data, files, created, updated, tags
    }
}

/// A reference to a file stored in the `files` GridFS bucket.
public struct StoredFileRef: Codable, Sendable, Equatable {
    public var id: ObjectId
    public var name: String
    public var size: Int64
    public var sha256: String
    public init(id: ObjectId, name: String, size: Int64, sha256: String) {
        self.id = id; self.name = name; self.size = size; self.sha256 = sha256
    }
}

/// One kept sample of a crash bucket.
public struct CrashSample: Codable, Sendable, Equatable {
    public var job: ObjectId
    public var idx: Int
    public var run: String
    public var at: Date
    public var data: BSONDocument
    /// The input that crashed the target, when the tool sent one.
    public var file: StoredFileRef?
    public init(job: ObjectId, idx: Int, run: String, at: Date = bsonNow(), data: BSONDocument = [:], file: StoredFileRef? = nil) {
        self.job = job; self.idx = idx; self.run = run; self.at = at; self.data = data; self.file = file
    }
}

/// Crashes of one job grouped by a stable signature: one document per (job, bucket).
public struct CrashDocument: TalusDocument, Equatable {
    public static let collection = Collection.crashes
    public static let currentSchema = 1
    /// Samples kept per bucket by default (the master's `crash_samples` setting overrides).
    public static let defaultMaxSamples = 10

    public var id: ObjectId
    public var schema: Int
    public var job: ObjectId
    public var tool: String
    /// Stable signature (normalized by ``CrashSignature``).
    public var bucket: String
    public var firstSeen: Date
    public var lastSeen: Date
    public var count: Int
    public var samples: [CrashSample]
    public var created: Date
    public var updated: Date
    public var tags: Tags

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, job, tool, bucket
        case firstSeen = "first_seen"
        case lastSeen = "last_seen"
        case count, samples, created, updated, tags
    }
}

/// Normalizes a tool-supplied crash signature into a bucket key: trimmed, whitespace collapsed,
/// addresses (`0x…` hex of 6+ digits) replaced so ASLR does not split buckets, at most 256 chars.
public enum CrashSignature {
    public static func bucket(_ raw: String) -> String {
        var out = ""
        var lastWasSpace = false
        var i = raw.startIndex
        while i < raw.endIndex {
            let c = raw[i]
            if c == "0", raw.index(after: i) < raw.endIndex, raw[raw.index(after: i)] == "x" {
                var j = raw.index(i, offsetBy: 2)
                var digits = 0
                while j < raw.endIndex, raw[j].isHexDigit { j = raw.index(after: j); digits += 1 }
                if digits >= 6 {
                    out += "0xADDR"; i = j; lastWasSpace = false; continue
                }
            }
            if c.isWhitespace {
                if !lastWasSpace && !out.isEmpty { out.append(" ") }
                lastWasSpace = true
            } else {
                out.append(c); lastWasSpace = false
            }
            i = raw.index(after: i)
        }
        while out.last == " " { out.removeLast() }
        if out.isEmpty { return "unknown" }
        return String(out.prefix(256))
    }
}

/// A hypervisor host running `talus-slave` (DESIGN §3, §7).
public struct SlaveDocument: TalusDocument, Equatable {
    public static let collection = Collection.slaves
    public static let currentSchema = 1

    public struct Capacity: Codable, Sendable, Equatable {
        public var vms: Int
        public var memoryMB: Int
        public init(vms: Int, memoryMB: Int) { self.vms = vms; self.memoryMB = memoryMB }
        enum CodingKeys: String, CodingKey { case vms; case memoryMB = "memory_mb" }
    }

    public struct RunningPart: Codable, Sendable, Equatable {
        public var job: ObjectId
        public var idx: Int
        public var attempt: Int
        public var run: String
        public var since: Date
        public init(job: ObjectId, idx: Int, attempt: Int, run: String, since: Date) {
            self.job = job; self.idx = idx; self.attempt = attempt; self.run = run; self.since = since
        }
    }

    public var id: ObjectId
    public var schema: Int
    /// The slave's own stable id (from its state directory).
    public var uuid: String
    public var hostname: String
    public var address: String?
    public var capacity: Capacity
    public var running: [RunningPart]
    /// BSON date; a TTL index removes slaves silent for a long time.
    public var lastHeartbeat: Date
    public var version: String
    public var status: Status<SlaveState>
    public var created: Date
    public var updated: Date
    public var tags: Tags

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, uuid, hostname, address, capacity, running
        case lastHeartbeat = "last_heartbeat"
        case version, status, created, updated, tags
    }
}

/// Roles of API users (DESIGN §9).
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    /// Slaves: read image files and tool bundles.
    case slave
    /// Users: everything about their images, tasks, jobs and results.
    case user
    /// Admins: users, tokens, slaves, os, everything.
    case admin

    private var rank: Int { switch self { case .slave: 0; case .user: 1; case .admin: 2 } }
    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rank < rhs.rank }
}

/// A person or a slave host that holds API tokens.
public struct UserDocument: TalusDocument, Equatable {
    public static let collection = Collection.users
    public static let currentSchema = 1

    public var id: ObjectId
    public var schema: Int
    public var name: String
    public var role: Role
    public var disabled: Bool
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), name: String, role: Role, tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.name = name; self.role = role; disabled = false
        created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey { case id = "_id", schema, name, role, disabled, created, updated, tags }
}

/// An API bearer token, stored as the SHA-256 of the secret (the secret is shown once).
public struct TokenDocument: TalusDocument, Equatable {
    public static let collection = Collection.tokens
    public static let currentSchema = 1

    public var id: ObjectId
    public var schema: Int
    public var user: ObjectId
    public var name: String
    /// Lowercase hex SHA-256 of the token secret.
    public var hash: String
    /// The first characters of the token, to tell tokens apart in listings.
    public var prefix: String
    public var expires: Date?
    public var lastUsed: Date?
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), user: ObjectId, name: String, hash: String, prefix: String,
                expires: Date? = nil, tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.user = user; self.name = name; self.hash = hash
        self.prefix = prefix; self.expires = expires; lastUsed = nil; created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, user, name, hash, prefix, expires
        case lastUsed = "last_used"
        case created, updated, tags
    }
}

/// A named group of stored files (a corpus) that a `fileset` tool parameter receives.
public struct FileSetDocument: TalusDocument, Equatable {
    public static let collection = Collection.filesets
    public static let currentSchema = 1

    public var id: ObjectId
    public var schema: Int
    public var name: String
    public var description: String?
    public var files: [StoredFileRef]
    public var owner: ObjectId?
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), name: String, description: String? = nil, files: [StoredFileRef] = [],
                owner: ObjectId? = nil, tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.name = name; self.description = description
        self.files = files; self.owner = owner; created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey { case id = "_id", schema, name, description, files, owner, created, updated, tags }
}

/// The master's leader lease (`_id: "master.lease"` in `state`).
public struct LeaseDocument: Codable, Sendable, Equatable {
    public static let id = "master.lease"
    public var id: String
    /// The holder's unique id (hostname + pid + random).
    public var holder: String
    public var expires: Date
    public var acquired: Date
    public init(holder: String, expires: Date, acquired: Date) {
        id = Self.id; self.holder = holder; self.expires = expires; self.acquired = acquired
    }
    enum CodingKeys: String, CodingKey { case id = "_id", holder, expires, acquired }
}

/// The master's change-stream position (`_id: "master.stream"` in `state`).
public struct StreamStateDocument: Codable, Sendable, Equatable {
    public static let id = "master.stream"
    public var id: String
    /// The change stream's resume token, as returned by the server.
    public var token: BSONDocument?
    public var updated: Date
    public init(token: BSONDocument?, updated: Date = bsonNow()) { id = Self.id; self.token = token; self.updated = updated }
    enum CodingKeys: String, CodingKey { case id = "_id", token, updated }
}
