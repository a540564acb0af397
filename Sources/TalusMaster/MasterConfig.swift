// The master's configuration (DESIGN §10): every key declared once with its default and
// documentation, read strictly from /etc/talus/master.yaml and TALUS_* environment overrides.

import Foundation
import Logging
import TalusCore

/// Everything `talus-master` reads from its configuration.
public struct MasterConfig: Sendable {
    /// The keys of the master itself (image keys come from ``ImageConfig/keys``).
    public enum Key {
        public static let mongoURI = SettingKey(
            "mongo.uri", type: "url", default: "mongodb://127.0.0.1:27017/?replicaSet=rs0", secret: true,
            doc: "MongoDB connection string of a replica set (change streams need one). May carry credentials.")
        public static let mongoDatabase = SettingKey(
            "mongo.database", type: "string", default: "talus", doc: "The database holding every Talus collection.")
        public static let amqpURL = SettingKey(
            "amqp.url", type: "url", default: "amqp://guest:guest@127.0.0.1:5672/", secret: true,
            doc: "RabbitMQ broker, `amqp://user:password@host:port/vhost`.")
        public static let amqpNamespace = SettingKey(
            "amqp.namespace", type: "string", default: "talus",
            doc: "Prefix of every exchange and queue (`<namespace>.parts`, `<namespace>.events`, ...). Slaves must use the same one.")
        public static let leaseSeconds = SettingKey(
            "master.lease_seconds", type: "int", default: "15",
            doc: "Leader lease length. A standby master takes over at most this long after the leader died. Clocks of the master hosts must agree within a third of it.")
        public static let jobWindow = SettingKey(
            "jobs.window", type: "int", default: "4",
            doc: "Parts kept queued per job beyond the free VM slots the slaves report, so cancel and priority act within seconds.")
        public static let partAttempts = SettingKey(
            "jobs.part_attempts", type: "int", default: "3",
            doc: "Attempts of a part before it counts as failed.")
        public static let maxFailedParts = SettingKey(
            "jobs.max_failed_parts", type: "int", default: "10",
            doc: "A job fails once more parts than this have failed (or when every part so far failed).")
        public static let maxErrors = SettingKey(
            "jobs.max_errors", type: "int", default: "50", doc: "Errors kept on a job document (the newest).")
        public static let crashSamples = SettingKey(
            "crashes.max_samples", type: "int", default: "10", doc: "Samples kept per crash bucket (the first ones).")
        public static let offlineAfter = SettingKey(
            "slaves.offline_after", type: "duration", default: "30s",
            doc: "A slave silent this long is marked offline and its running parts lost (RabbitMQ redelivers them).")
        public static let reconcileAttempts = SettingKey(
            "reconcile.max_attempts", type: "int", default: "6",
            doc: "Failed reconciles of one document before it is marked error/failed with the last error.")
        public static let reconcileBackoff = SettingKey(
            "reconcile.backoff", type: "duration", default: "1s",
            doc: "Delay before the first retry of a failed reconcile; doubles per failure, at most 5 minutes.")
        public static let eventBatch = SettingKey(
            "events.batch_size", type: "int", default: "500", doc: "Most slave events ingested in one batch.")
        public static let eventLinger = SettingKey(
            "events.batch_wait", type: "duration", default: "20ms",
            doc: "How long the ingester waits for a batch to fill once an event arrived.")
        public static let metricsListen = SettingKey(
            "metrics.listen", type: "host:port", default: "127.0.0.1:9101",
            doc: "Address of `/healthz` and `/metrics` (loopback unless you mean it; port 0 picks a free one).")
        public static let logLevel = SettingKey(
            "log.level", type: "string", default: "info", doc: "trace, debug, info, notice, warning, error or critical.")

        public static let all: [SettingKey] = [
            mongoURI, mongoDatabase, amqpURL, amqpNamespace, leaseSeconds, jobWindow, partAttempts, maxFailedParts,
            maxErrors, crashSamples, offlineAfter, reconcileAttempts, reconcileBackoff, eventBatch, eventLinger,
            metricsListen, logLevel,
        ]
    }

    /// Every key `talus-master` reads, for the reference page and typo detection.
    public static var keys: [SettingKey] { Key.all + ImageConfig.keys }

    /// The default configuration file.
    public static let defaultPath = "/etc/talus/master.yaml"

    public var mongoURI: String
    public var database: String
    public var amqpURL: String
    public var amqpNamespace: String
    public var lease: Duration
    public var jobWindow: Int
    public var partAttempts: Int
    public var maxFailedParts: Int
    public var maxErrors: Int
    public var crashSamples: Int
    public var offlineAfter: Duration
    public var reconcileAttempts: Int
    public var reconcileBackoff: Duration
    public var eventBatch: Int
    public var eventLinger: Duration
    public var metricsHost: String
    /// 0: any free port (the one chosen is reported through ``MasterService/opsPort``).
    public var metricsPort: Int
    public var logLevel: Logger.Level
    public var images: ImageConfig

    /// Reads and checks every key.
    public init(settings: Settings) throws {
        try settings.checkUnknownKeys(Self.keys)
        mongoURI = try settings.string(Key.mongoURI)
        guard mongoURI.hasPrefix("mongodb://") || mongoURI.hasPrefix("mongodb+srv://") else {
            throw SettingsError(key: Key.mongoURI.name, problem: "must start with mongodb:// or mongodb+srv://")
        }
        database = try settings.string(Key.mongoDatabase)
        guard !database.isEmpty, !database.contains(where: { "/\\. \"$".contains($0) }) else {
            throw SettingsError(key: Key.mongoDatabase.name, problem: "\"\(database)\" is not a valid database name")
        }
        amqpURL = try settings.string(Key.amqpURL)
        guard amqpURL.hasPrefix("amqp://") else {
            throw SettingsError(key: Key.amqpURL.name, problem: "must start with amqp://")
        }
        amqpNamespace = try settings.string(Key.amqpNamespace)
        guard !amqpNamespace.isEmpty, amqpNamespace.utf8.count <= 100,
              amqpNamespace.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
            throw SettingsError(key: Key.amqpNamespace.name, problem: "use 1–100 letters, digits, '.', '_' or '-'")
        }
        lease = .seconds(try settings.int(Key.leaseSeconds, range: 2...600))
        jobWindow = try settings.int(Key.jobWindow, range: 0...100_000)
        partAttempts = try settings.int(Key.partAttempts, range: 1...100)
        maxFailedParts = try settings.int(Key.maxFailedParts, range: 0...1_000_000)
        maxErrors = try settings.int(Key.maxErrors, range: 1...10_000)
        crashSamples = try settings.int(Key.crashSamples, range: 0...1000)
        offlineAfter = try settings.duration(Key.offlineAfter)
        guard offlineAfter >= .seconds(1) else {
            throw SettingsError(key: Key.offlineAfter.name, problem: "must be at least 1s")
        }
        reconcileAttempts = try settings.int(Key.reconcileAttempts, range: 1...1000)
        reconcileBackoff = try settings.duration(Key.reconcileBackoff)
        eventBatch = try settings.int(Key.eventBatch, range: 1...10_000)
        eventLinger = try settings.duration(Key.eventLinger)
        (metricsHost, metricsPort) = try Self.hostPort(try settings.string(Key.metricsListen), key: Key.metricsListen.name)
        let level = try settings.string(Key.logLevel)
        guard let parsed = Logger.Level(rawValue: level.lowercased()) else {
            throw SettingsError(key: Key.logLevel.name, problem: "\"\(level)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        logLevel = parsed
        images = try ImageConfig(settings: settings)
    }

    /// Reads `path` (YAML) with environment overrides. A missing file is an error only when
    /// `required` (the operator named it); otherwise defaults and the environment apply.
    public static func load(
        path: String?, required: Bool, environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> MasterConfig {
        try MasterConfig(settings: try await Settings(filePath: path, required: required, environment: environment))
    }

    /// The Markdown reference of every key.
    public static func reference() -> String {
        settingsReference(title: "talus-master", file: defaultPath, keys: keys)
    }

    /// Splits `host:port` (`[v6]:port` for IPv6).
    static func hostPort(_ text: String, key: String) throws -> (String, Int) {
        let bad = SettingsError(key: key, problem: "\"\(text)\" is not host:port (e.g. 127.0.0.1:9101)")
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { throw bad }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw bad }
        return (host, port)
    }
}
