// Configuration of `talus-api` (DESIGN §10): `/etc/talus/api.yaml` plus `TALUS_*` environment
// overrides. Every key is declared here once with its default and documentation;
// `talus-api config-reference` prints the table.

import Foundation
import Logging
import TalusCode
import TalusCore

/// The settings `talus-api` reads.
public struct APIConfig: Sendable {
    /// Every key `talus-api` reads, for the reference page and typo detection.
    public static let keys: [SettingKey] = [
        Key.listen, Key.mongoURI, Key.mongoDatabase, Key.uploads, Key.images, Key.uploadMax, Key.uploadExpire,
        Key.fileMax, Key.maxBody, Key.metricsPublic, Key.authCache, Key.logLevel,
        CodeConfig.Key.repository, CodeConfig.Key.bundleCache,
    ]

    /// The declared keys.
    /// The settings of a `talus-api` serving on loopback `port` with its storage under
    /// `directory` (benchmarks and tests that start one).
    public static func localValues(port: Int, mongoURI: String, database: String, directory: String,
                                   logLevel: String = "warning") -> [String: String] {
        [Key.listen.name: "127.0.0.1:\(port)", Key.mongoURI.name: mongoURI, Key.mongoDatabase.name: database,
         Key.uploads.name: directory + "/uploads", Key.images.name: directory + "/images", Key.logLevel.name: logLevel]
    }

    public enum Key {
        public static let listen = SettingKey(
            "http.listen", type: "host:port", default: "127.0.0.1:8420",
            doc: "Address and port the REST API listens on. Loopback by default: put a TLS proxy in front to expose it.")
        public static let mongoURI = SettingKey(
            "mongo.uri", type: "url", default: "mongodb://127.0.0.1:27017/?replicaSet=rs0", secret: true,
            doc: "MongoDB connection string (a replica set).")
        public static let mongoDatabase = SettingKey(
            "mongo.database", type: "string", default: "talus", doc: "Database holding the Talus collections.")
        public static let uploads = SettingKey(
            "storage.uploads", type: "path", default: "/var/lib/talus/uploads",
            doc: "Directory for uploads (`<id>.part` while receiving, `<id>` once complete). Shared with the master, which consumes an upload when it imports an image.")
        public static let images = SettingKey(
            "storage.images", type: "path", default: "/var/lib/talus/images",
            doc: "The master's image store (files `<image id>.qcow2`), served read-only to slaves.")
        public static let uploadMax = SettingKey(
            "uploads.max_bytes", type: "bytes", default: "64GiB",
            doc: "Largest upload accepted (an image to import). Larger announcements and bodies get 413.")
        public static let uploadExpire = SettingKey(
            "uploads.expire_after", type: "duration", default: "24h",
            doc: "Uploads not consumed by an import within this time are removed with their files (incomplete ones too).")
        public static let fileMax = SettingKey(
            "files.max_bytes", type: "bytes", default: "1GiB",
            doc: "Largest file stored through `POST /api/v1/files` (corpus files, kept in MongoDB GridFS).")
        public static let maxBody = SettingKey(
            "http.max_body", type: "bytes", default: "1MiB", doc: "Largest JSON request body; larger ones get 413.")
        public static let metricsPublic = SettingKey(
            "http.metrics_public", type: "bool", default: "false",
            doc: "Serve `/metrics` without a token (for a Prometheus scraper on a trusted network). Otherwise an admin token is required.")
        public static let authCache = SettingKey(
            "auth.cache_ttl", type: "duration", default: "5s",
            doc: "How long a verified token is trusted without asking MongoDB again. Revocations through this API take effect at once; other changes within this time.")
        public static let logLevel = SettingKey(
            "log.level", type: "string", default: "info", doc: "trace, debug, info, notice, warning, error or critical.")
    }

    public var host: String
    public var port: Int
    public var mongoURI: String
    public var database: String
    public var uploadsDirectory: String
    public var imagesDirectory: String
    public var uploadMaxBytes: Int64
    public var uploadExpireAfter: Duration
    public var fileMaxBytes: Int64
    public var maxBody: Int
    public var metricsPublic: Bool
    public var authCacheTTL: Duration
    public var logLevel: Logger.Level
    /// The bare code repository tool bundles are built from (`code.repository`).
    public var codeRepository: String
    /// Where built bundles are kept (`code.bundle_cache`).
    public var bundleCache: String

    /// A configuration for tests and tools; every value has the documented default unless given.
    public init(host: String = "127.0.0.1", port: Int = 8420, mongoURI: String, database: String = "talus",
                uploadsDirectory: String, imagesDirectory: String, uploadMaxBytes: Int64 = 64 << 30,
                uploadExpireAfter: Duration = .seconds(86_400), fileMaxBytes: Int64 = 1 << 30, maxBody: Int = 1 << 20,
                metricsPublic: Bool = false, authCacheTTL: Duration = .seconds(5), logLevel: Logger.Level = .info,
                codeRepository: String = CodeConfig.Key.repository.defaultText,
                bundleCache: String = CodeConfig.Key.bundleCache.defaultText) {
        self.codeRepository = codeRepository; self.bundleCache = bundleCache
        self.host = host; self.port = port; self.mongoURI = mongoURI; self.database = database
        self.uploadsDirectory = uploadsDirectory; self.imagesDirectory = imagesDirectory
        self.uploadMaxBytes = uploadMaxBytes; self.uploadExpireAfter = uploadExpireAfter; self.fileMaxBytes = fileMaxBytes
        self.maxBody = maxBody; self.metricsPublic = metricsPublic; self.authCacheTTL = authCacheTTL; self.logLevel = logLevel
    }

    /// Reads every key; throws ``SettingsError`` naming the first bad or unknown key.
    public init(settings: Settings) throws {
        try settings.checkUnknownKeys(Self.keys)
        let listen = try settings.string(Key.listen)
        guard let (host, port) = Self.parseListen(listen) else {
            throw SettingsError(key: Key.listen.name, problem: "\"\(listen)\" is not host:port (e.g. 127.0.0.1:8420)")
        }
        self.host = host
        self.port = port
        mongoURI = try settings.string(Key.mongoURI)
        guard mongoURI.hasPrefix("mongodb://") || mongoURI.hasPrefix("mongodb+srv://") else {
            throw SettingsError(key: Key.mongoURI.name, problem: "not a mongodb:// URI")
        }
        database = try settings.string(Key.mongoDatabase)
        guard !database.isEmpty, !database.contains(where: { "/\\. \"$".contains($0) }) else {
            throw SettingsError(key: Key.mongoDatabase.name, problem: "\"\(database)\" is not a valid database name")
        }
        uploadsDirectory = try Self.path(settings, Key.uploads)
        imagesDirectory = try Self.path(settings, Key.images)
        uploadMaxBytes = try Self.bytes(settings, Key.uploadMax)
        uploadExpireAfter = try settings.duration(Key.uploadExpire)
        fileMaxBytes = try Self.bytes(settings, Key.fileMax)
        let body = try Self.bytes(settings, Key.maxBody)
        guard body >= 1024, body <= 1 << 30 else {
            throw SettingsError(key: Key.maxBody.name, problem: "must be between 1KiB and 1GiB")
        }
        maxBody = Int(body)
        metricsPublic = try settings.bool(Key.metricsPublic)
        authCacheTTL = try settings.duration(Key.authCache)
        let level = try settings.string(Key.logLevel)
        guard let parsed = Logger.Level(rawValue: level) else {
            throw SettingsError(key: Key.logLevel.name, problem: "\"\(level)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        logLevel = parsed
        codeRepository = try Self.path(settings, CodeConfig.Key.repository)
        bundleCache = try Self.path(settings, CodeConfig.Key.bundleCache)
    }

    /// `host:port`, `[v6]:port` → (host, port).
    static func parseListen(_ text: String) -> (String, Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    static func path(_ settings: Settings, _ key: SettingKey) throws -> String {
        let p = try settings.string(key)
        guard p.hasPrefix("/") else { throw SettingsError(key: key.name, problem: "\"\(p)\" is not an absolute path") }
        return p
    }

    static func bytes(_ settings: Settings, _ key: SettingKey) throws -> Int64 {
        let raw = try settings.string(key)
        guard let v = parseBytes(raw) else {
            throw SettingsError(key: key.name, problem: "\"\(raw)\" is not a size (e.g. 1048576, 512KiB, 64MiB, 64GiB)")
        }
        return v
    }

    /// `1234`, `512KiB`, `64MiB`, `2GiB`, `1TiB` (also `KB`/`MB`/`GB` meaning the same powers of 1024).
    public static func parseBytes(_ raw: String) -> Int64? {
        let s = raw.trimmingCharacters(in: .whitespaces)
        let units: [(String, Int64)] = [("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("tib", 1 << 40),
                                        ("kb", 1 << 10), ("mb", 1 << 20), ("gb", 1 << 30), ("tb", 1 << 40),
                                        ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40), ("b", 1)]
        let lower = s.lowercased()
        for (suffix, scale) in units where lower.hasSuffix(suffix) {
            let number = lower.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
            guard let v = Int64(number), v >= 0 else { return nil }
            let (product, overflow) = v.multipliedReportingOverflow(by: scale)
            return overflow ? nil : product
        }
        guard let v = Int64(lower), v >= 0 else { return nil }
        return v
    }
}
