// Configuration of the code repository's tools (`talus-code`, and the API's bundle endpoint):
// `/etc/talus/code.yaml` plus `TALUS_*` environment overrides (DESIGN §10).

import Foundation
import Logging
import TalusCore

/// The settings `talus-code` reads (the hooks, `init`, `record`). The API reads
/// ``Key/repository`` and ``Key/bundleCache`` from its own file.
public struct CodeConfig: Sendable {
    /// Every key `talus-code` reads.
    public static let keys: [SettingKey] = [Key.mongoURI, Key.mongoDatabase, Key.repository, Key.branch, Key.bundleCache, Key.logLevel]

    public enum Key {
        public static let mongoURI = SettingKey(
            "mongo.uri", type: "url", default: "mongodb://127.0.0.1:27017/?replicaSet=rs0", secret: true,
            doc: "MongoDB connection string (a replica set). The post-receive hook runs as the pushing user (git-shell accounts), so this file must be readable by them: use a MongoDB user that may only write the `code` collection and the `state` document `code.head`.")
        public static let mongoDatabase = SettingKey(
            "mongo.database", type: "string", default: "talus", doc: "Database holding the Talus collections.")
        public static let repository = SettingKey(
            "code.repository", type: "path", default: "/var/lib/talus/code.git",
            doc: "The bare git repository of tools and components (created by `talus-code init`). Read by the API to build tool bundles.")
        public static let branch = SettingKey(
            "code.branch", type: "string", default: "main",
            doc: "The branch whose pushes are checked (pre-receive) and recorded (post-receive). Other branches are accepted unchecked and never recorded.")
        public static let bundleCache = SettingKey(
            "code.bundle_cache", type: "path", default: "/var/cache/talus/bundles",
            doc: "Where the API keeps built tool bundles (`<name>/<commit>.tar.gz` and `.sha256`); safe to delete, bundles are rebuilt on demand.")
        public static let logLevel = SettingKey(
            "log.level", type: "string", default: "warning", doc: "trace, debug, info, notice, warning, error or critical.")
    }

    public var mongoURI: String
    public var database: String
    public var repository: String
    public var branch: String
    public var bundleCache: String
    public var logLevel: Logger.Level

    public init(mongoURI: String = "mongodb://127.0.0.1:27017/?replicaSet=rs0", database: String = "talus",
                repository: String = "/var/lib/talus/code.git", branch: String = "main",
                bundleCache: String = "/var/cache/talus/bundles", logLevel: Logger.Level = .warning) {
        self.mongoURI = mongoURI; self.database = database; self.repository = repository; self.branch = branch
        self.bundleCache = bundleCache; self.logLevel = logLevel
    }

    /// Reads every key; throws ``SettingsError`` naming the first bad or unknown key.
    public init(settings: Settings) throws {
        try settings.checkUnknownKeys(Self.keys)
        mongoURI = try settings.string(Key.mongoURI)
        database = try settings.string(Key.mongoDatabase)
        repository = try settings.string(Key.repository)
        branch = try settings.string(Key.branch)
        guard !branch.isEmpty, !branch.contains(" "), !branch.hasPrefix("refs/") else {
            throw SettingsError(key: Key.branch.name, problem: "\"\(branch)\" is not a branch name (write main, not refs/heads/main)")
        }
        bundleCache = try settings.string(Key.bundleCache)
        let level = try settings.string(Key.logLevel)
        guard let parsed = Logger.Level(rawValue: level) else {
            throw SettingsError(key: Key.logLevel.name, problem: "\"\(level)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        logLevel = parsed
    }
}
