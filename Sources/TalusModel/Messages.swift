// AMQP messages between master and slaves (DESIGN §6): versioned JSON. A reader that meets an
// unknown version throws ``MessageVersionError`` and the consumer dead-letters the message.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// AMQP names shared by master and slaves (DESIGN §6).
public enum AMQPNames {
    /// Direct exchange for parts; routing key = the job's queue name.
    public static let partsExchange = "talus.parts"
    /// Queue `talus.parts.<name>` holds the parts of jobs whose queue is `<name>`.
    public static func partsQueue(_ name: String) -> String { "talus.parts." + name }
    /// Events from slaves to the master (a durable queue, published through the default exchange).
    public static let eventsQueue = "talus.events"
    /// Fanout exchange for master → slaves control messages.
    public static let controlExchange = "talus.control"
    /// Dead-letter exchange and queue for messages nobody can read (unknown version, garbage).
    public static let deadLetterExchange = "talus.dead"
    public static let deadLetterQueue = "talus.dead"
    /// AMQP priorities used for parts: 0…10 (`x-max-priority` 10).
    public static let maxPriority = 10

    /// Maps a job priority 1…100 to an AMQP priority 1…10.
    public static func amqpPriority(jobPriority: Int) -> UInt8 {
        UInt8(min(10, max(1, (jobPriority + 9) / 10)))
    }
}

/// The version a message carries in `v`.
public let messageVersion = 1

/// A message with an unknown `v`: rejected to the dead-letter queue, never crashed on.
public struct MessageVersionError: Error, CustomStringConvertible, Sendable {
    public let found: Int
    public var description: String { "unsupported message version \(found) (this build reads \(messageVersion))" }
}

/// JSON coders with the conventions of every Talus wire format: ISO 8601 dates with
/// milliseconds (UTC), ObjectIds as hex strings, binary data as base64, sorted keys.
public enum TalusJSON {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(formatDate(date))
        }
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { decoder in
            let c = try decoder.singleValueContainer()
            let text = try c.decode(String.self)
            guard let date = parseDate(text) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an ISO 8601 date: \(text)")
            }
            return date
        }
        return d
    }

    /// `2026-11-21T23:21:26.123Z`: UTC, milliseconds (the precision of BSON dates).
    public static func formatDate(_ date: Date) -> String {
        let totalMs = Int64((date.timeIntervalSince1970 * 1000).rounded())
        let seconds = totalMs >= 0 ? totalMs / 1000 : (totalMs - 999) / 1000
        let ms = totalMs - seconds * 1000
        let whole = Date(timeIntervalSince1970: Double(seconds)).formatted(Date.ISO8601FormatStyle())
        let digits = String(ms)
        return whole.dropLast() + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    /// Parses ISO 8601 (UTC `Z` or an offset) with or without fractional seconds; fractions are
    /// kept to the millisecond, computed the same way as ``bsonNow()`` so values compare equal.
    public static func parseDate(_ text: String) -> Date? {
        var base = text
        var ms: Int64 = 0
        if let dot = text.firstIndex(of: ".") {
            let rest = text[text.index(after: dot)...]
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty else { return nil }
            let three = (digits + "00").prefix(3)
            ms = Int64(three) ?? 0
            base = String(text[..<dot]) + String(rest.dropFirst(digits.count))
        }
        guard let whole = try? Date.ISO8601FormatStyle().parse(base) else { return nil }
        let totalMs = Int64(whole.timeIntervalSince1970.rounded()) * 1000 + ms
        return Date(timeIntervalSince1970: Double(totalMs) / 1000)
    }
}

// MARK: - Master → slaves: parts

/// One file of an image's backing chain, as a slave must fetch it.
public struct ImageChainEntry: Codable, Sendable, Equatable {
    public var id: ObjectId
    public var sha256: String
    public var size: Int64
    /// The id of the image this file is an overlay of, or nil for the base.
    public var backing: ObjectId?
    public init(id: ObjectId, sha256: String, size: Int64, backing: ObjectId?) {
        self.id = id; self.sha256 = sha256; self.size = size; self.backing = backing
    }
}

/// The image a part runs on: the image itself first, then its bases down to the root.
public struct PartImage: Codable, Sendable, Equatable {
    public var id: ObjectId
    public var sha256: String
    public var chain: [ImageChainEntry]
    public init(id: ObjectId, sha256: String, chain: [ImageChainEntry]) {
        self.id = id; self.sha256 = sha256; self.chain = chain
    }
}

/// The tool a part runs, pinned to a commit.
public struct PartTool: Codable, Sendable, Equatable {
    public var name: String
    public var commit: String
    /// The manifest's entry command at that commit; when nil the agent reads it from
    /// `tool/talus-tool.json` in the bundle.
    public var entry: String?
    public init(name: String, commit: String, entry: String? = nil) { self.name = name; self.commit = commit; self.entry = entry }
}

/// A part message on `talus.parts` (DESIGN §6).
public struct PartMessage: Codable, Sendable, Equatable {
    public var v: Int
    public var job: ObjectId
    public var idx: Int
    public var attempt: Int
    public var image: PartImage
    public var tool: PartTool
    public var params: BSONDocument
    public var vm: VMShape
    public var network: NetworkMode
    /// After this time the part is not worth starting (the job was cancelled or expired).
    public var deadline: Date?
    public var debug: Bool

    public init(job: ObjectId, idx: Int, attempt: Int, image: PartImage, tool: PartTool, params: BSONDocument,
                vm: VMShape, network: NetworkMode, deadline: Date?, debug: Bool) {
        v = messageVersion; self.job = job; self.idx = idx; self.attempt = attempt; self.image = image
        self.tool = tool; self.params = params; self.vm = vm; self.network = network; self.deadline = deadline
        self.debug = debug
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        v = try c.decode(Int.self, forKey: .v)
        guard v == messageVersion else { throw MessageVersionError(found: v) }
        job = try c.decode(ObjectId.self, forKey: .job)
        idx = try c.decode(Int.self, forKey: .idx)
        attempt = try c.decode(Int.self, forKey: .attempt)
        image = try c.decode(PartImage.self, forKey: .image)
        tool = try c.decode(PartTool.self, forKey: .tool)
        params = try c.decodeIfPresent(BSONDocument.self, forKey: .params) ?? [:]
        vm = try c.decode(VMShape.self, forKey: .vm)
        network = try c.decodeIfPresent(NetworkMode.self, forKey: .network) ?? NetworkMode.none
        deadline = try c.decodeIfPresent(Date.self, forKey: .deadline)
        debug = try c.decodeIfPresent(Bool.self, forKey: .debug) ?? false
    }

    enum CodingKeys: String, CodingKey { case v, job, idx, attempt, image, tool, params, vm, network, deadline, debug }
}

// MARK: - Master → slaves: control

/// A control message on the `talus.control` fanout exchange.
public struct ControlMessage: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// Stop every part of `job` now; the parts end as cancelled.
        case cancelJob = "cancel-job"
        /// The slave `slave` stops taking new parts.
        case drainSlave = "drain-slave"
        /// The slave `slave` takes parts again.
        case undrainSlave = "undrain-slave"
        /// Re-read configuration files.
        case reloadConfig = "reload-config"
    }
    public var v: Int
    public var type: Kind
    public var job: ObjectId?
    public var slave: String?
    public var at: Date

    public init(_ type: Kind, job: ObjectId? = nil, slave: String? = nil, at: Date = bsonNow()) {
        v = messageVersion; self.type = type; self.job = job; self.slave = slave; self.at = at
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        v = try c.decode(Int.self, forKey: .v)
        guard v == messageVersion else { throw MessageVersionError(found: v) }
        type = try c.decode(Kind.self, forKey: .type)
        job = try c.decodeIfPresent(ObjectId.self, forKey: .job)
        slave = try c.decodeIfPresent(String.self, forKey: .slave)
        at = try c.decode(Date.self, forKey: .at)
    }

    enum CodingKeys: String, CodingKey { case v, type, job, slave, at }
}

// MARK: - Slaves → master: events

/// Identifies the execution an event belongs to and its place in that execution's sequence.
/// `(job, idx, attempt, run, seq)` is unique per event: the master drops duplicates by it.
public struct EventSource: Codable, Sendable, Equatable, Hashable {
    public var job: ObjectId
    public var idx: Int
    public var attempt: Int
    /// The run id the slave chose when it started the part (a redelivered part runs under a new one).
    public var run: String
    /// 1, 2, 3, … within the run.
    public var seq: Int
    public init(job: ObjectId, idx: Int, attempt: Int, run: String, seq: Int) {
        self.job = job; self.idx = idx; self.attempt = attempt; self.run = run; self.seq = seq
    }
}

/// How a part ended.
public enum PartOutcome: String, Codable, Sendable {
    /// The tool ran and exited 0.
    case success
    /// The tool exited non-zero, the VM deadline passed, the guest stopped answering, the domain
    /// died, or the slave could not set the part up.
    case failure
    /// A cancel-job control message (or the slave shutting down) stopped the part.
    case cancelled
}

/// Slave status carried by heartbeats and online/offline events.
public struct SlaveInfo: Codable, Sendable, Equatable {
    public var uuid: String
    public var hostname: String
    public var address: String?
    public var version: String
    public var capacity: SlaveDocument.Capacity
    public var running: [SlaveDocument.RunningPart]
    public var draining: Bool
    public init(uuid: String, hostname: String, address: String?, version: String, capacity: SlaveDocument.Capacity,
                running: [SlaveDocument.RunningPart], draining: Bool) {
        self.uuid = uuid; self.hostname = hostname; self.address = address; self.version = version
        self.capacity = capacity; self.running = running; self.draining = draining
    }
}

/// What happened, with its payload.
public enum EventBody: Sendable, Equatable {
    /// The slave took the part and is booting its VM.
    case partStarted
    /// Something the tool reported, relayed from the guest (DESIGN §7, §8).
    case report(ToolReport)
    /// The part ended. `reason` says why when it did not succeed; `serialTail` is the end of the
    /// VM's serial console log on failure.
    case partEnded(outcome: PartOutcome, reason: String?, exitCode: Int?, serialTail: String?)
    case heartbeat(SlaveInfo)
    case slaveOnline(SlaveInfo)
    case slaveOffline(SlaveInfo)

    /// The wire name in `type`.
    public var type: String {
        switch self {
        case .partStarted: "part-started"
        case .report(let r): r.type
        case .partEnded: "part-ended"
        case .heartbeat: "heartbeat"
        case .slaveOnline: "slave-online"
        case .slaveOffline: "slave-offline"
        }
    }
}

/// An event on `talus.events`: `{v, type, slave, at, source?, ...payload}` as flat JSON.
public struct EventMessage: Codable, Sendable, Equatable {
    public var v: Int
    /// The slave's uuid.
    public var slave: String
    public var at: Date
    /// Set for every part event; nil for heartbeats and slave-online/offline.
    public var source: EventSource?
    public var body: EventBody

    public init(slave: String, source: EventSource?, body: EventBody, at: Date = bsonNow()) {
        v = messageVersion; self.slave = slave; self.at = at; self.source = source; self.body = body
    }

    enum CodingKeys: String, CodingKey {
        case v, type, slave, at, source
        case outcome, reason, exitCode = "exit_code", serialTail = "serial_tail", info
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        v = try c.decode(Int.self, forKey: .v)
        guard v == messageVersion else { throw MessageVersionError(found: v) }
        slave = try c.decode(String.self, forKey: .slave)
        at = try c.decode(Date.self, forKey: .at)
        source = try c.decodeIfPresent(EventSource.self, forKey: .source)
        let type = try c.decode(String.self, forKey: .type)
        switch type {
        case "part-started": body = .partStarted
        case "part-ended":
            body = .partEnded(outcome: try c.decode(PartOutcome.self, forKey: .outcome),
                              reason: try c.decodeIfPresent(String.self, forKey: .reason),
                              exitCode: try c.decodeIfPresent(Int.self, forKey: .exitCode),
                              serialTail: try c.decodeIfPresent(String.self, forKey: .serialTail))
        case "heartbeat": body = .heartbeat(try c.decode(SlaveInfo.self, forKey: .info))
        case "slave-online": body = .slaveOnline(try c.decode(SlaveInfo.self, forKey: .info))
        case "slave-offline": body = .slaveOffline(try c.decode(SlaveInfo.self, forKey: .info))
        default: body = .report(try ToolReport(from: decoder))
        }
        if source == nil, !["heartbeat", "slave-online", "slave-offline"].contains(type) {
            throw DecodingError.keyNotFound(CodingKeys.source, .init(codingPath: [], debugDescription: "\(type) needs a source"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(v, forKey: .v)
        try c.encode(slave, forKey: .slave)
        try c.encode(at, forKey: .at)
        try c.encodeIfPresent(source, forKey: .source)
        switch body {
        case .partStarted: try c.encode(body.type, forKey: .type)
        case .report(let report): try report.encode(to: encoder)
        case .partEnded(let outcome, let reason, let exitCode, let serialTail):
            try c.encode(body.type, forKey: .type)
            try c.encode(outcome, forKey: .outcome); try c.encodeIfPresent(reason, forKey: .reason)
            try c.encodeIfPresent(exitCode, forKey: .exitCode); try c.encodeIfPresent(serialTail, forKey: .serialTail)
        case .heartbeat(let info), .slaveOnline(let info), .slaveOffline(let info):
            try c.encode(body.type, forKey: .type)
            try c.encode(info, forKey: .info)
        }
    }
}
