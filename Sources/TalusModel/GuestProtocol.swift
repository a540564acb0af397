// The guest protocol (DESIGN §7): frames between `talus-agent` in the guest and the slave, over
// the virtio-serial channel `org.talus.agent.0`; and the tool's events file (DESIGN §8).
//
// Wire format of a frame: the 4 bytes `TAL1`, a 4-byte big-endian payload length, then the
// payload: one JSON object with a `type`. The magic lets a reader resynchronize after garbage.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// The name of the virtio-serial port the agent talks on.
public let guestChannelName = "org.talus.agent.0"
/// Volume label of the config ISO the slave attaches.
public let configISOLabel = "TALUSCFG"

/// A chunk of a file the tool produced (a crash sample, an output file).
public struct FileChunk: Codable, Sendable, Equatable {
    /// Relative name within the run's output (no `..`, no leading `/`).
    public var name: String
    public var offset: Int64
    public var data: Data
    /// True on the file's final chunk, which also carries `size` and `sha256`.
    public var last: Bool
    public var size: Int64?
    public var sha256: String?

    public init(name: String, offset: Int64, data: Data, last: Bool, size: Int64? = nil, sha256: String? = nil) {
        self.name = name; self.offset = offset; self.data = data; self.last = last; self.size = size; self.sha256 = sha256
    }

    /// True when `name` is a safe relative path: not empty, no `..` component, not absolute,
    /// no NUL, at most 255 bytes.
    public static func isSafeName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 255, !name.hasPrefix("/"), !name.contains("\0") else { return false }
        return !name.split(separator: "/", omittingEmptySubsequences: false).contains { $0 == ".." || $0.isEmpty }
    }
}

/// Something a tool reports while it runs: relayed guest → slave → master unchanged.
public enum ToolReport: Sendable, Equatable {
    /// `amount` progress units.
    case progress(amount: Int)
    /// A result of a tool-defined `kind`; `files` names files sent before as chunks.
    case result(kind: String, data: BSONDocument, files: [String])
    /// A crash with its raw signature; `file` names the sample sent before as chunks.
    case crash(signature: String, data: BSONDocument, file: String?)
    case log(level: String, message: String)
    case file(FileChunk)

    public var type: String {
        switch self {
        case .progress: "progress"
        case .result: "result"
        case .crash: "crash"
        case .log: "log"
        case .file: "file"
        }
    }

    enum CodingKeys: String, CodingKey {
        case type, amount, kind, data, files, signature, file, level, message
        case name, offset, last, size, sha256
    }

    /// Decodes the report's keys from a flat JSON object (shared with envelopes).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let type = try c.decode(String.self, forKey: .type)
        switch type {
        case "progress":
            let amount = try c.decodeIfPresent(Int.self, forKey: .amount) ?? 1
            guard amount >= 0 && amount <= 1_000_000 else {
                throw DecodingError.dataCorruptedError(forKey: .amount, in: c, debugDescription: "progress amount must be 0…1000000")
            }
            self = .progress(amount: amount)
        case "result":
            self = .result(kind: try c.decodeIfPresent(String.self, forKey: .kind) ?? "result",
                           data: try c.decodeIfPresent(BSONDocument.self, forKey: .data) ?? [:],
                           files: try c.decodeIfPresent([String].self, forKey: .files) ?? [])
        case "crash":
            self = .crash(signature: try c.decode(String.self, forKey: .signature),
                          data: try c.decodeIfPresent(BSONDocument.self, forKey: .data) ?? [:],
                          file: try c.decodeIfPresent(String.self, forKey: .file))
        case "log":
            self = .log(level: try c.decodeIfPresent(String.self, forKey: .level) ?? "info",
                        message: try c.decode(String.self, forKey: .message))
        case "file":
            let name = try c.decode(String.self, forKey: .name)
            guard FileChunk.isSafeName(name) else {
                throw DecodingError.dataCorruptedError(forKey: .name, in: c, debugDescription: "unsafe file name \(name)")
            }
            self = .file(FileChunk(name: name, offset: try c.decode(Int64.self, forKey: .offset),
                                   data: try c.decode(Data.self, forKey: .data), last: try c.decode(Bool.self, forKey: .last),
                                   size: try c.decodeIfPresent(Int64.self, forKey: .size),
                                   sha256: try c.decodeIfPresent(String.self, forKey: .sha256)))
        default:
            throw DecodingError.dataCorruptedError(forKey: .type, in: c, debugDescription: "unknown report type \(type)")
        }
    }

    /// Encodes the report's keys into a flat JSON object (shared with envelopes).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        switch self {
        case .progress(let amount): try c.encode(amount, forKey: .amount)
        case .result(let kind, let data, let files):
            try c.encode(kind, forKey: .kind); try c.encode(data, forKey: .data); try c.encode(files, forKey: .files)
        case .crash(let signature, let data, let file):
            try c.encode(signature, forKey: .signature); try c.encode(data, forKey: .data)
            try c.encodeIfPresent(file, forKey: .file)
        case .log(let level, let message):
            try c.encode(level, forKey: .level); try c.encode(message, forKey: .message)
        case .file(let chunk):
            try c.encode(chunk.name, forKey: .name); try c.encode(chunk.offset, forKey: .offset)
            try c.encode(chunk.data, forKey: .data); try c.encode(chunk.last, forKey: .last)
            try c.encodeIfPresent(chunk.size, forKey: .size); try c.encodeIfPresent(chunk.sha256, forKey: .sha256)
        }
    }
}

/// A frame on the guest channel.
public enum GuestFrame: Sendable, Equatable, Codable {
    // guest → host
    /// First frame: the per-VM secret token from `config.json`. Frames before a valid hello are
    /// dropped.
    case hello(token: String, agent: String)
    /// The tool's entry command started.
    case started
    case report(ToolReport)
    /// The tool exited (`exitCode` −1 when it was killed); the agent powers off next.
    case finished(exitCode: Int, reason: String?)
    /// The agent is alive (every few seconds; the slave ends a part whose guest goes silent).
    case heartbeat
    // host → guest
    /// The hello was accepted.
    case welcome
    /// Stop the tool now and power off.
    case cancel(reason: String)

    enum CodingKeys: String, CodingKey { case type, token, agent, exitCode = "exit_code", reason }

    public var type: String {
        switch self {
        case .hello: "hello"
        case .started: "started"
        case .report(let r): r.type
        case .finished: "finished"
        case .heartbeat: "heartbeat"
        case .welcome: "welcome"
        case .cancel: "cancel"
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decode(String.self, forKey: .type) {
        case "hello": self = .hello(token: try c.decode(String.self, forKey: .token),
                                    agent: try c.decodeIfPresent(String.self, forKey: .agent) ?? "unknown")
        case "started": self = .started
        case "finished": self = .finished(exitCode: try c.decode(Int.self, forKey: .exitCode),
                                          reason: try c.decodeIfPresent(String.self, forKey: .reason))
        case "heartbeat": self = .heartbeat
        case "welcome": self = .welcome
        case "cancel": self = .cancel(reason: try c.decodeIfPresent(String.self, forKey: .reason) ?? "cancelled")
        default: self = .report(try ToolReport(from: decoder))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .report(let r): try r.encode(to: encoder); return
        default: try c.encode(type, forKey: .type)
        }
        switch self {
        case .hello(let token, let agent): try c.encode(token, forKey: .token); try c.encode(agent, forKey: .agent)
        case .finished(let exitCode, let reason):
            try c.encode(exitCode, forKey: .exitCode); try c.encodeIfPresent(reason, forKey: .reason)
        case .cancel(let reason): try c.encode(reason, forKey: .reason)
        default: break
        }
    }
}

/// Encodes frames: `TAL1`, big-endian length, JSON.
public enum FrameEncoder {
    public static let magic: [UInt8] = Array("TAL1".utf8)

    public static func encode(_ frame: GuestFrame) throws -> [UInt8] {
        let payload = try TalusJSON.encoder().encode(frame)
        var out = magic
        let n = UInt32(payload.count)
        out += [UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)]
        out += payload
        return out
    }
}

/// Incremental frame reader that never trusts its input: garbage is skipped up to the next
/// magic, oversized and malformed frames are dropped, and each problem is reported so the
/// caller can count it.
public struct FrameDecoder: Sendable {
    /// What one step of decoding produced.
    public enum Item: Sendable, Equatable {
        case frame(GuestFrame)
        /// `bytes` bytes that were not part of any frame were skipped.
        case garbage(bytes: Int)
        /// A frame announced `length` bytes, more than the limit; it was skipped.
        case oversized(length: Int)
        /// A frame's payload was not a valid frame; it was skipped.
        case malformed(String)
    }

    public let maxFrameSize: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private let decoder = TalusJSON.decoder()

    /// - Parameter maxFrameSize: largest payload accepted (default 1 MiB).
    public init(maxFrameSize: Int = 1 << 20) { self.maxFrameSize = maxFrameSize }

    /// Bytes buffered and not yet decoded.
    public var buffered: Int { buffer.count - start }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next item, or nil when more bytes are needed.
    public mutating func next() -> Item? {
        let magic = FrameEncoder.magic
        let available = buffer.count - start
        if available == 0 { return nil }
        // Fewer bytes than a magic, and they could start one: wait for more.
        if available < magic.count && zip(buffer[start...], magic).allSatisfy({ $0 == $1 }) { return nil }
        // Not at a magic: skip to the next one (or keep the last 3 bytes, a possible prefix).
        if !hasMagic(at: start) {
            var i = start + 1
            while i + magic.count <= buffer.count && !hasMagic(at: i) { i += 1 }
            if i + magic.count > buffer.count {
                // No full magic ahead; keep a tail that could start one.
                let keep = min(magic.count - 1, buffer.count - start - 1)
                let skip = buffer.count - start - keep
                guard skip > 0 else { return nil }
                start += skip
                return .garbage(bytes: skip)
            }
            let skipped = i - start
            start = i
            return .garbage(bytes: skipped)
        }
        guard available >= 8 else { return nil }
        let length = Int(buffer[start + 4]) << 24 | Int(buffer[start + 5]) << 16
            | Int(buffer[start + 6]) << 8 | Int(buffer[start + 7])
        if length > maxFrameSize {
            // Do not trust the length: skip the magic and resynchronize on the next one.
            start += magic.count
            return .oversized(length: length)
        }
        guard available >= 8 + length else { return nil }
        let payload = Data(buffer[(start + 8)..<(start + 8 + length)])
        start += 8 + length
        do {
            return .frame(try decoder.decode(GuestFrame.self, from: payload))
        } catch {
            return .malformed(String(describing: error).prefix(200).description)
        }
    }

    private func hasMagic(at i: Int) -> Bool {
        let magic = FrameEncoder.magic
        guard i + magic.count <= buffer.count else {
            return false
        }
        for k in 0..<magic.count where buffer[i + k] != magic[k] { return false }
        return true
    }
}

/// One line a tool appended to its `TALUS_EVENTS` file (DESIGN §8).
public enum ToolEvent: Sendable, Equatable {
    case report(ToolReport)
    /// `{"type":"file","path":"rel/path"}`: send this file from `TALUS_OUTPUT` as a result file.
    case sendFile(path: String)

    /// Parses one JSON line. Throws a readable error for a malformed line.
    public static func parse(_ line: some StringProtocol) throws -> ToolEvent {
        let data = Data(line.utf8)
        let head = try TalusJSON.decoder().decode(ToolEventHead.self, from: data)
        if head.type == "file" {
            guard let path = head.path, FileChunk.isSafeName(path) else {
                throw ToolEventError("file event needs a relative \"path\" inside TALUS_OUTPUT")
            }
            return .sendFile(path: path)
        }
        return .report(try TalusJSON.decoder().decode(ToolReportLine.self, from: data).report)
    }

    private struct ToolEventHead: Decodable { let type: String; let path: String? }

    private struct ToolReportLine: Decodable {
        let report: ToolReport
        init(from decoder: any Decoder) throws { report = try ToolReport(from: decoder) }
    }
}

public struct ToolEventError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The `config.json` on the config ISO (DESIGN §7): everything the agent needs to run a part.
public struct GuestConfig: Codable, Sendable, Equatable {
    public var job: ObjectId
    public var idx: Int
    public var attempt: Int
    public var run: String
    public var tool: PartTool
    /// The tool's entry command, run by `/bin/sh -c` in the bundle's `tool/` directory; when nil
    /// the agent takes it from `tool/talus-tool.json`.
    public var entry: String?
    public var params: BSONDocument
    /// The per-VM secret the agent presents in its hello.
    public var token: String
    /// Path of the tool bundle (tar.gz) on the ISO, relative to the ISO root.
    public var bundle: String
    /// Seconds between agent heartbeats.
    public var heartbeatSeconds: Int
    /// Largest file the agent sends back; bigger files are reported as a log line.
    public var maxFileBytes: Int64

    public init(job: ObjectId, idx: Int, attempt: Int, run: String, tool: PartTool, entry: String?,
                params: BSONDocument, token: String, bundle: String = "tool.tar.gz", heartbeatSeconds: Int = 5,
                maxFileBytes: Int64 = 64 << 20) {
        self.job = job; self.idx = idx; self.attempt = attempt; self.run = run; self.tool = tool; self.entry = entry
        self.params = params; self.token = token; self.bundle = bundle; self.heartbeatSeconds = heartbeatSeconds
        self.maxFileBytes = maxFileBytes
    }

    enum CodingKeys: String, CodingKey {
        case job, idx, attempt, run, tool, entry, params, token, bundle
        case heartbeatSeconds = "heartbeat_seconds"
        case maxFileBytes = "max_file_bytes"
    }
}
