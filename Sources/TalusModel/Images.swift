// Operating systems, images and uploads (DESIGN §3 and §5).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// An operating system an image runs (`win10-x64`, `debian12-amd64`, ...).
public struct OSDocument: TalusDocument, Equatable {
    public static let collection = Collection.os
    public static let currentSchema = 1

    public enum Family: String, Codable, Sendable, CaseIterable { case linux, windows, other }

    public var id: ObjectId
    public var schema: Int
    public var name: String
    public var family: Family
    public var version: String?
    public var arch: String
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), name: String, family: Family, version: String? = nil,
                arch: String = "x86_64", tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.name = name; self.family = family
        self.version = version; self.arch = arch; created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, name, family, version, arch, created, updated, tags
    }
}

/// The file of an image in the master's image store.
public struct ImageFile: Codable, Sendable, Equatable {
    /// Path relative to the image store (`<image id>.qcow2`).
    public var path: String
    /// Always `qcow2` in the store.
    public var format: String
    /// Lowercase hex SHA-256 of the stored file, computed when the image became ready.
    public var sha256: String?
    /// Bytes on disk.
    public var size: Int64?
    /// Guest-visible disk size in bytes.
    public var virtualSize: Int64?

    public init(path: String, format: String = "qcow2", sha256: String? = nil, size: Int64? = nil, virtualSize: Int64? = nil) {
        self.path = path; self.format = format; self.sha256 = sha256; self.size = size; self.virtualSize = virtualSize
    }

    enum CodingKeys: String, CodingKey {
        case path, format, sha256, size
        case virtualSize = "virtual_size"
    }
}

/// VNC connection details of an interactive image VM (DESIGN §5). Shown to authenticated users
/// only; the password is fresh per VM and at most 8 characters (VNC authentication is DES).
public struct VNCInfo: Codable, Sendable, Equatable {
    public var host: String
    public var port: Int
    public var password: String
    public var expires: Date?

    public init(host: String, port: Int, password: String, expires: Date?) {
        self.host = host; self.port = port; self.password = password; self.expires = expires
    }
}

/// What the user asked for with the current request.
public struct ImageRequest: Codable, Sendable, Equatable {
    /// `import`: the upload holding the disk image.
    public var upload: ObjectId?
    /// `configure` / `create`: give the user a VNC session and wait for the guest to shut down.
    /// A non-interactive configure boots the image and waits (bounded) for it to power off.
    public var interactive: Bool
    /// Optional override of the session length, seconds (bounded by the master's maximum).
    public var sessionSeconds: Int?
    /// A shell script for a non-interactive `configure` (or `create`/`import`): the master puts
    /// it as `run.sh` on a config ISO (label `TALUSCFG`); the image's boot hook runs it and powers
    /// the guest off (images/README.md). A non-zero exit status the hook reports on the serial
    /// console fails the request; the changes are then discarded.
    public var script: String?

    public init(upload: ObjectId? = nil, interactive: Bool = true, sessionSeconds: Int? = nil, script: String? = nil) {
        self.upload = upload; self.interactive = interactive; self.sessionSeconds = sessionSeconds; self.script = script
    }

    enum CodingKeys: String, CodingKey {
        case upload, interactive, script
        case sessionSeconds = "session_seconds"
    }
}

/// The status of an image: the state machine of ``ImageState`` plus what the master tells the
/// user while it works (VNC details, deadline).
public struct ImageStatus: Codable, Sendable, Equatable {
    public var name: ImageState
    public var reason: String?
    public var since: Date
    /// When the current transitional state ends in `error` if the work has not finished.
    public var deadline: Date?
    /// Present while an interactive VM runs.
    public var vnc: VNCInfo?
    /// The libvirt domain the master runs for this image, while it runs one.
    public var domain: String?

    public init(_ name: ImageState, reason: String? = nil, since: Date = bsonNow(), deadline: Date? = nil,
                vnc: VNCInfo? = nil, domain: String? = nil) {
        self.name = name; self.reason = reason; self.since = since; self.deadline = deadline
        self.vnc = vnc; self.domain = domain
    }
}

/// Credentials a configuration step may use to log in to the guest. Secret: never logged, and
/// the API shows only whether they are set.
public struct ImageCredentials: Codable, Sendable, Equatable {
    public var username: String
    public var password: String
    public init(username: String, password: String) { self.username = username; self.password = password }
}

/// A VM image (DESIGN §3, §5).
public struct ImageDocument: TalusDocument, Equatable {
    public static let collection = Collection.images
    public static let currentSchema = 1

    public var id: ObjectId
    public var schema: Int
    public var name: String
    /// The `os` document's id.
    public var os: ObjectId
    /// The image this one is a qcow2 overlay of, or nil for a base image.
    public var base: ObjectId?
    public var description: String?
    /// Set once the file exists in the store.
    public var file: ImageFile?
    public var credentials: ImageCredentials?
    public var request: ImageRequest?
    public var status: ImageStatus
    /// Memory and CPUs for the import/configure VM; nil: the master's `images.vm_memory_mb` and
    /// `images.vm_cpus`.
    public var vm: VMShape?
    public var owner: ObjectId?
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), name: String, os: ObjectId, base: ObjectId? = nil,
                description: String? = nil, file: ImageFile? = nil, credentials: ImageCredentials? = nil,
                request: ImageRequest? = nil, status: ImageStatus, vm: VMShape? = nil, owner: ObjectId? = nil,
                tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.name = name; self.os = os; self.base = base
        self.description = description; self.file = file; self.credentials = credentials; self.request = request
        self.status = status; self.vm = vm; self.owner = owner; created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, name, os, base, description, file, credentials, request, status, vm, owner
        case created, updated, tags
    }

    /// The same document with credentials removed, for display.
    public var redacted: ImageDocument {
        var copy = self
        if copy.credentials != nil { copy.credentials = ImageCredentials(username: copy.credentials!.username, password: "********") }
        return copy
    }
}

/// An uploaded file waiting to be consumed (an image import) or kept (a fileset member).
public struct UploadDocument: TalusDocument, Equatable {
    public static let collection = Collection.uploads
    public static let currentSchema = 1

    public var id: ObjectId
    public var schema: Int
    /// Original file name, for display.
    public var filename: String
    /// Path relative to the API's upload directory.
    public var path: String
    /// Bytes received so far (equals the total once complete).
    public var size: Int64
    /// The total the uploader announced; the content must be exactly this long.
    public var expectedSize: Int64?
    /// Lowercase hex SHA-256 of the complete file.
    public var sha256: String?
    public var complete: Bool
    public var owner: ObjectId?
    /// Incomplete or unconsumed uploads are removed after this time.
    public var expires: Date
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), filename: String, path: String, size: Int64 = 0, expectedSize: Int64? = nil,
                sha256: String? = nil, complete: Bool = false, owner: ObjectId? = nil, expires: Date, tags: Tags = [],
                now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.filename = filename; self.path = path; self.size = size
        self.expectedSize = expectedSize; self.sha256 = sha256; self.complete = complete; self.owner = owner; self.expires = expires
        created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, filename, path, size
        case expectedSize = "expected_size"
        case sha256, complete, owner, expires, created, updated, tags
    }
}

/// Formats an upload may have for an import (DESIGN §5); anything else is refused.
public enum DiskFormat: String, Codable, Sendable, CaseIterable {
    case raw, qcow2, vmdk, vdi, vhdx
}
