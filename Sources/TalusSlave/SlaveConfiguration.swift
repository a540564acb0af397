// Configuration of `talus-slave` (DESIGN §10): every key declared once with its default and
// documentation; `talus-slave config-reference` renders them. A bad value stops the daemon with a
// message naming the key.

import Foundation
import Libvirt
import Logging
import TalusCore
import TalusModel

/// The keys `talus-slave` reads from `/etc/talus/slave.yaml` (or `TALUS_…` variables).
public enum SlaveKeys {
    public static let idFile = SettingKey(
        "slave.id_file", type: "path", default: "/var/lib/talus/slave-id",
        doc: "File holding this slave's UUID; created with a fresh UUID on first start. Two slaves on one host need different files.")
    public static let queues = SettingKey(
        "slave.queues", type: "list", default: "default",
        doc: "Comma-separated job queue names to take parts from (`talus.parts.<name>`).")
    public static let vms = SettingKey(
        "slave.vms", type: "int", default: "2", doc: "How many VMs run at once (the AMQP prefetch follows the free slots).")
    public static let memoryMB = SettingKey(
        "slave.memory_mb", type: "int", default: "0",
        doc: "Guest memory (MiB) all running VMs may use together; a part waits until its VM fits. 0: physical memory minus 1 GiB.")
    public static let amqpURL = SettingKey(
        "amqp.url", type: "url", default: "amqp://guest:guest@127.0.0.1:5672/", secret: true,
        doc: "The RabbitMQ broker (`amqp://user:password@host:port/vhost`).")
    public static let amqpNamespace = SettingKey(
        "amqp.namespace", type: "string", default: "talus",
        doc: "Prefix of every exchange and queue (`<namespace>.parts.<queue>`, `<namespace>.events`, ...); the master's `amqp.namespace`.")
    public static let apiURL = SettingKey(
        "api.url", type: "url", default: "http://127.0.0.1:8420", doc: "The Talus REST API, for image files and tool bundles.")
    public static let apiToken = SettingKey(
        "api.token", type: "string", default: "", secret: true, doc: "Bearer token of a user with the `slave` role.")
    public static let cacheDir = SettingKey(
        "cache.dir", type: "path", default: "/var/lib/talus/cache",
        doc: "Image and tool bundle cache (must be readable by the QEMU user: libvirt gives the images to it).")
    public static let cacheMaxBytes = SettingKey(
        "cache.max_bytes", type: "size", default: "50GiB",
        doc: "Cache size budget; least recently used images and bundles not in use are removed past it (suffixes K, M, G, T, KiB, MiB, GiB, TiB).")
    public static let cacheVerify = SettingKey(
        "cache.verify", type: "enum", default: "changed",
        doc: "When a cached file's sha256 is checked again before use: `changed` (its size, mtime or inode changed since the last check, or the check is older than cache.verify_interval) or `always` (every use; hashing runs at ~1.5 GB/s with SHA-NI).")
    public static let cacheVerifyInterval = SettingKey(
        "cache.verify_interval", type: "duration", default: "24h",
        doc: "With cache.verify=changed, a file is hashed again on use when its last full check is older than this.")
    public static let runDir = SettingKey(
        "run.dir", type: "path", default: "/var/lib/talus/run",
        doc: "Per-part directories (overlay, config ISO, channel socket, serial log); emptied at start. One per slave.")
    public static let agentPath = SettingKey(
        "agent.path", type: "path", default: "/usr/lib/talus/talus-agent",
        doc: "The statically linked guest agent put on every config ISO (images/build-agent.sh).")
    public static let libvirtURI = SettingKey("libvirt.uri", type: "url", default: "qemu:///system", doc: "The libvirt daemon.")
    public static let domainType = SettingKey(
        "libvirt.domain_type", type: "enum", default: "auto",
        doc: "`kvm`, `qemu` (TCG software emulation, for hosts without working KVM) or `auto` (at start, a KVM test guest defined like the parts' must get through its firmware within 10 s; else `qemu`).")
    public static let isolatedNetwork = SettingKey(
        "libvirt.isolated_network", type: "string", default: "talus-isolated",
        doc: "The libvirt network of jobs with network `isolated` (set up by provisioning).")
    public static let heartbeatTimeout = SettingKey(
        "guest.heartbeat_timeout", type: "duration", default: "30s",
        doc: "A part fails when its guest agent sends nothing for this long after saying hello.")
    public static let agentHeartbeat = SettingKey(
        "guest.agent_heartbeat", type: "duration", default: "5s", doc: "How often the agent sends a heartbeat (written to config.json).")
    public static let bootTimeout = SettingKey(
        "guest.boot_timeout", type: "duration", default: "180s",
        doc: "A part fails when its guest agent has not said hello this long after the VM started.")
    public static let cancelGrace = SettingKey(
        "guest.cancel_grace", type: "duration", default: "3s",
        doc: "After a cancel is sent to the guest, how long it may take to stop before its VM is destroyed.")
    public static let maxFrameBytes = SettingKey(
        "guest.max_frame_bytes", type: "size", default: "1MiB", doc: "Largest guest protocol frame; larger ones are dropped and counted.")
    public static let maxFileBytes = SettingKey(
        "guest.max_file_bytes", type: "size", default: "64MiB", doc: "Largest single file a guest may send back (crash samples, results).")
    public static let maxPartFileBytes = SettingKey(
        "guest.max_part_file_bytes", type: "size", default: "1GiB", doc: "Total bytes of files one part may send back.")
    public static let maxProtocolErrors = SettingKey(
        "guest.max_protocol_errors", type: "int", default: "1000",
        doc: "A part fails once its guest produced this many protocol errors (garbage, bad frames, wrong tokens).")
    public static let isoMaxBytes = SettingKey(
        "guest.iso_max_bytes", type: "size", default: "256MiB", doc: "Largest config ISO (agent, tool bundle, input files).")
    public static let heartbeatInterval = SettingKey(
        "heartbeat.interval", type: "duration", default: "5s", doc: "How often the slave tells the master it is alive.")
    public static let shutdownGrace = SettingKey(
        "shutdown.grace", type: "duration", default: "60s",
        doc: "On SIGTERM, how long running parts may go on; the rest are cancelled and requeued.")
    public static let metricsListen = SettingKey(
        "metrics.listen", type: "host:port", default: "127.0.0.1:9102", doc: "`/healthz` and `/metrics`; empty turns them off.")
    public static let logLevel = SettingKey(
        "log.level", type: "enum", default: "info", doc: "trace, debug, info, notice, warning, error or critical.")

    /// Every key, in documentation order.
    public static let all: [SettingKey] = [
        idFile, queues, vms, memoryMB, amqpURL, amqpNamespace, apiURL, apiToken, cacheDir, cacheMaxBytes, cacheVerify, cacheVerifyInterval,
        runDir, agentPath, libvirtURI, domainType, isolatedNetwork, heartbeatTimeout, agentHeartbeat, bootTimeout,
        cancelGrace, maxFrameBytes, maxFileBytes, maxPartFileBytes, maxProtocolErrors, isoMaxBytes, heartbeatInterval,
        shutdownGrace, metricsListen, logLevel,
    ]

    /// The Markdown reference of the keys.
    public static func reference() -> String {
        settingsReference(title: "talus-slave", file: "/etc/talus/slave.yaml", keys: all)
    }
}

/// How the domain type is chosen.
public enum DomainTypeSetting: String, Sendable, CaseIterable {
    case kvm, qemu, auto
}

/// When cached files are hashed again.
public enum CacheVerifyPolicy: String, Sendable, CaseIterable {
    case changed, always
}

/// Limits of the guest protocol server (DESIGN §7).
public struct GuestLimits: Sendable {
    public var maxFrameBytes: Int
    public var maxFileBytes: Int64
    public var maxPartFileBytes: Int64
    public var maxProtocolErrors: Int
    public var heartbeatTimeout: Duration
    public var bootTimeout: Duration
    public var cancelGrace: Duration
    public var agentHeartbeat: Duration

    public init(maxFrameBytes: Int = 1 << 20, maxFileBytes: Int64 = 64 << 20, maxPartFileBytes: Int64 = 1 << 30,
                maxProtocolErrors: Int = 1000, heartbeatTimeout: Duration = .seconds(30), bootTimeout: Duration = .seconds(180),
                cancelGrace: Duration = .seconds(3), agentHeartbeat: Duration = .seconds(5)) {
        self.maxFrameBytes = maxFrameBytes; self.maxFileBytes = maxFileBytes; self.maxPartFileBytes = maxPartFileBytes
        self.maxProtocolErrors = maxProtocolErrors; self.heartbeatTimeout = heartbeatTimeout; self.bootTimeout = bootTimeout
        self.cancelGrace = cancelGrace; self.agentHeartbeat = agentHeartbeat
    }
}

/// Everything `talus-slave` is configured with.
public struct SlaveConfiguration: Sendable {
    public var idFile: String
    public var queues: [String]
    public var vms: Int
    public var memoryMB: Int
    public var amqpURL: String
    /// Exchange and queue names (`amqp.namespace`).
    public var amqpNames: AMQPNames
    public var apiURL: String
    public var apiToken: String?
    public var cacheDir: String
    public var cacheMaxBytes: Int64
    public var cacheVerify: CacheVerifyPolicy
    public var cacheVerifyInterval: Duration
    public var runDir: String
    public var agentPath: String
    public var libvirtURI: String
    public var domainType: DomainTypeSetting
    public var isolatedNetwork: String
    public var guest: GuestLimits
    public var isoMaxBytes: Int64
    public var heartbeatInterval: Duration
    public var shutdownGrace: Duration
    /// nil: no ops server.
    public var metricsListen: (host: String, port: Int)?
    public var logLevel: Logger.Level

    /// Reads and checks every key; throws ``SettingsError`` naming the first bad one.
    public init(settings: Settings) throws {
        try settings.checkUnknownKeys(SlaveKeys.all)
        idFile = try settings.string(SlaveKeys.idFile)
        queues = try settings.string(SlaveKeys.queues).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        guard !queues.isEmpty else { throw SettingsError(key: SlaveKeys.queues.name, problem: "names no queue") }
        for q in queues where q.utf8.count > 200 || q.contains(where: { $0.isWhitespace }) {
            throw SettingsError(key: SlaveKeys.queues.name, problem: "\"\(q)\" is not a valid queue name")
        }
        vms = try settings.int(SlaveKeys.vms, range: 1...1000)
        let memory = try settings.int(SlaveKeys.memoryMB, range: 0...(1 << 30))
        memoryMB = memory > 0 ? memory : max(256, SlaveConfiguration.physicalMemoryMB() - 1024)
        amqpURL = try settings.string(SlaveKeys.amqpURL)
        let namespace = try settings.string(SlaveKeys.amqpNamespace)
        guard !namespace.isEmpty, namespace.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw SettingsError(key: SlaveKeys.amqpNamespace.name, problem: "\"\(namespace)\" is not a valid namespace (letters, digits, - _ .)")
        }
        amqpNames = AMQPNames(namespace: namespace)
        apiURL = try settings.string(SlaveKeys.apiURL)
        while apiURL.hasSuffix("/") { apiURL.removeLast() }
        guard apiURL.hasPrefix("http://") || apiURL.hasPrefix("https://") else {
            throw SettingsError(key: SlaveKeys.apiURL.name, problem: "\"\(apiURL)\" is not an http(s) URL")
        }
        apiToken = try settings.optionalString(SlaveKeys.apiToken)
        cacheDir = try settings.string(SlaveKeys.cacheDir)
        cacheMaxBytes = try SlaveConfiguration.size(settings, SlaveKeys.cacheMaxBytes)
        cacheVerify = try settings.enum(SlaveKeys.cacheVerify, CacheVerifyPolicy.self)
        cacheVerifyInterval = try settings.duration(SlaveKeys.cacheVerifyInterval)
        runDir = try settings.string(SlaveKeys.runDir)
        while runDir.count > 1 && runDir.hasSuffix("/") { runDir.removeLast() }
        // <run.dir>/<36-character run id>/agent.sock must fit a unix socket address (107 bytes).
        if runDir.utf8.count + 1 + 36 + PartPaths.socketName.utf8.count + 1 > 107 {
            throw SettingsError(key: SlaveKeys.runDir.name,
                                problem: "\(runDir) is too long: the channel sockets under it would not fit a unix socket address (keep it under \(107 - 38 - PartPaths.socketName.utf8.count) bytes)")
        }
        agentPath = try settings.string(SlaveKeys.agentPath)
        libvirtURI = try settings.string(SlaveKeys.libvirtURI)
        domainType = try settings.enum(SlaveKeys.domainType, DomainTypeSetting.self)
        isolatedNetwork = try settings.string(SlaveKeys.isolatedNetwork)
        guest = GuestLimits(
            maxFrameBytes: Int(try SlaveConfiguration.size(settings, SlaveKeys.maxFrameBytes, range: 4096...(64 << 20))),
            maxFileBytes: try SlaveConfiguration.size(settings, SlaveKeys.maxFileBytes),
            maxPartFileBytes: try SlaveConfiguration.size(settings, SlaveKeys.maxPartFileBytes),
            maxProtocolErrors: try settings.int(SlaveKeys.maxProtocolErrors, range: 1...1_000_000),
            heartbeatTimeout: try SlaveConfiguration.positive(settings, SlaveKeys.heartbeatTimeout),
            bootTimeout: try SlaveConfiguration.positive(settings, SlaveKeys.bootTimeout),
            cancelGrace: try settings.duration(SlaveKeys.cancelGrace),
            agentHeartbeat: try SlaveConfiguration.positive(settings, SlaveKeys.agentHeartbeat))
        if guest.agentHeartbeat * 2 > guest.heartbeatTimeout {
            throw SettingsError(key: SlaveKeys.heartbeatTimeout.name,
                                problem: "must be at least twice guest.agent_heartbeat (\(guest.agentHeartbeat))")
        }
        isoMaxBytes = try SlaveConfiguration.size(settings, SlaveKeys.isoMaxBytes)
        heartbeatInterval = try SlaveConfiguration.positive(settings, SlaveKeys.heartbeatInterval)
        shutdownGrace = try settings.duration(SlaveKeys.shutdownGrace)
        let listen = try settings.string(SlaveKeys.metricsListen).trimmingCharacters(in: .whitespaces)
        if listen.isEmpty {
            metricsListen = nil
        } else {
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]),
                  (0...65535).contains(port), colon > listen.startIndex
            else { throw SettingsError(key: SlaveKeys.metricsListen.name, problem: "\"\(listen)\" is not host:port") }
            metricsListen = (String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
        }
        let level = try settings.string(SlaveKeys.logLevel)
        guard let parsed = Logger.Level(rawValue: level) else {
            throw SettingsError(key: SlaveKeys.logLevel.name, problem: "\"\(level)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        logLevel = parsed
    }

    static func positive(_ settings: Settings, _ key: SettingKey) throws -> Duration {
        let d = try settings.duration(key)
        guard d > .zero else { throw SettingsError(key: key.name, problem: "must be more than 0") }
        return d
    }

    static func size(_ settings: Settings, _ key: SettingKey, range: ClosedRange<Int64>? = nil) throws -> Int64 {
        let raw = try settings.string(key)
        guard let v = parseSize(raw) else {
            throw SettingsError(key: key.name, problem: "\"\(raw)\" is not a size (e.g. 512MiB, 50G, 1048576)")
        }
        if let range, !range.contains(v) {
            throw SettingsError(key: key.name, problem: "\(v) bytes is outside \(range.lowerBound)…\(range.upperBound)")
        }
        return v
    }

    /// Parses `1048576`, `512K`, `50G`, `1.5GiB` (K/M/G/T are powers of 1024, like the `i` forms).
    public static func parseSize(_ raw: String) -> Int64? {
        var s = raw.trimmingCharacters(in: .whitespaces).uppercased()
        if s.hasSuffix("IB") { s.removeLast(2) } else if s.hasSuffix("B") { s.removeLast() }
        var scale: Double = 1
        if let last = s.last, let power = ["K": 1, "M": 2, "G": 3, "T": 4][String(last)] {
            scale = pow(1024, Double(power))
            s.removeLast()
        }
        guard let v = Double(s.trimmingCharacters(in: .whitespaces)), v >= 0, v * scale < 9e18 else { return nil }
        return Int64((v * scale).rounded())
    }

    static func physicalMemoryMB() -> Int {
        Int(ProcessInfo.processInfo.physicalMemory / (1 << 20))
    }
}

/// Reads the slave's UUID from `path`, creating the file with a fresh UUID on first use.
public func loadOrCreateSlaveID(at path: String) throws -> String {
    if let text = try? String(contentsOfFile: path, encoding: .utf8) {
        let id = text.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        guard UUID(uuidString: id) != nil else {
            throw SettingsError(key: SlaveKeys.idFile.name, problem: "\(path) does not hold a UUID (remove it to get a new one)")
        }
        return id
    }
    let id = UUID().uuidString.lowercased()
    let dir = (path as NSString).deletingLastPathComponent
    do {
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        try (id + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    } catch {
        throw SettingsError(key: SlaveKeys.idFile.name, problem: "cannot create \(path): \(error.localizedDescription)")
    }
    return id
}
