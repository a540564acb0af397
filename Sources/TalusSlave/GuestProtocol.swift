// The host side of the guest protocol (DESIGN §7), without I/O: what to do with each item the
// `FrameDecoder` produces. The guest is never trusted: nothing is relayed before a hello with the
// part's secret token; garbage, oversized, malformed and out-of-order frames are dropped and
// counted; files are checked (contiguous chunks, size limits, sha256) before a result or crash may
// name them.

import Crypto
import Foundation
import TalusCore
import TalusModel

/// One thing the session must do after a decoded item.
public enum GuestAction: Sendable, Equatable {
    /// Send this frame to the guest.
    case reply(GuestFrame)
    /// The guest authenticated.
    case hello(agent: String)
    /// The tool started.
    case started
    /// Relay this report to the master.
    case relay(ToolReport)
    /// The agent said it is alive.
    case heartbeat
    /// The tool ended.
    case finished(exitCode: Int, reason: String?)
    /// A protocol error to count.
    case error(GuestProtocolErrorKind, String)
    /// Too many protocol errors: end the part.
    case tooManyErrors
}

/// The protocol state of one part's channel.
public struct GuestProtocolState: Sendable {
    let tokenDigest: SHA256.Digest
    let limits: GuestLimits
    public private(set) var authenticated = false
    public private(set) var isFinished = false
    public private(set) var errors: [GuestProtocolErrorKind: Int] = [:]
    private var files: [String: IncomingFile] = [:]
    private var completedFiles = Set<String>()
    private var partFileBytes: Int64 = 0

    struct IncomingFile: Sendable {
        var next: Int64 = 0
        var hasher = SHA256()
        var rejected = false
    }

    public init(token: String, limits: GuestLimits) {
        tokenDigest = SHA256.hash(data: Data(token.utf8))
        self.limits = limits
    }

    /// Total protocol errors so far.
    public var errorCount: Int { errors.values.reduce(0, +) }

    /// "3 garbage, 1 bad_token" — for the reason of a failed part.
    public var errorSummary: String? {
        guard errorCount > 0 else { return nil }
        return errors.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.value) \($0.key.rawValue)" }.joined(separator: ", ")
    }

    /// What to do with `item`.
    public mutating func handle(_ item: FrameDecoder.Item) -> [GuestAction] {
        var actions: [GuestAction]
        switch item {
        case .garbage(let bytes): actions = [.error(.garbage, "\(bytes) bytes outside frames")]
        case .oversized(let length): actions = [.error(.oversized, "a frame of \(length) bytes (limit \(limits.maxFrameBytes))")]
        case .malformed(let why): actions = [.error(.malformed, why)]
        case .frame(let frame): actions = handle(frame)
        }
        for case .error(let kind, _) in actions {
            errors[kind, default: 0] += 1
        }
        if errorCount >= limits.maxProtocolErrors, actions.contains(where: { if case .error = $0 { true } else { false } }) {
            actions.append(.tooManyErrors)
        }
        return actions
    }

    private mutating func handle(_ frame: GuestFrame) -> [GuestAction] {
        if case .hello(let token, let agent) = frame {
            guard SHA256.hash(data: Data(token.utf8)) == tokenDigest else { return [.error(.badToken, "a hello with a wrong token")] }
            if authenticated { return [.reply(.welcome)] }  // the agent repeats hello until welcomed
            authenticated = true
            return [.reply(.welcome), .hello(agent: String(agent.prefix(100)))]
        }
        guard authenticated else { return [.error(.unauthenticated, "a \(frame.type) frame before a valid hello")] }
        guard !isFinished else { return [.error(.outOfOrder, "a \(frame.type) frame after finished")] }
        switch frame {
        case .hello: return []
        case .started: return [.started]
        case .heartbeat: return [.heartbeat]
        case .welcome, .cancel: return [.error(.outOfOrder, "a host frame (\(frame.type)) from the guest")]
        case .finished(let code, let reason):
            isFinished = true
            return [.finished(exitCode: code, reason: reason.map { String($0.prefix(2000)) })]
        case .report(let report):
            return handle(report)
        }
    }

    private mutating func handle(_ report: ToolReport) -> [GuestAction] {
        switch report {
        case .file(let chunk):
            return handle(chunk)
        case .crash(let signature, let data, let file):
            if let file, !completedFiles.contains(file) {
                return [.relay(.log(level: "warning", message: "crash sample \(file) was not received completely; the crash is kept without it")),
                        .relay(.crash(signature: signature, data: data, file: nil))]
            }
            return [.relay(report)]
        case .result(let kind, let data, let files):
            let missing = files.filter { !completedFiles.contains($0) }
            guard !missing.isEmpty else { return [.relay(report)] }
            return [.relay(.log(level: "warning", message: "result files not received completely: \(missing.joined(separator: ", "))")),
                    .relay(.result(kind: kind, data: data, files: files.filter { completedFiles.contains($0) }))]
        case .progress, .log:
            return [.relay(report)]
        }
    }

    private mutating func handle(_ chunk: FileChunk) -> [GuestAction] {
        if chunk.offset == 0 {
            // A new file (or the same name sent again: it replaces the earlier one).
            completedFiles.remove(chunk.name)
            files[chunk.name] = IncomingFile()
        }
        guard var file = files[chunk.name] else {
            return [.error(.outOfOrder, "a chunk of \(chunk.name) at offset \(chunk.offset) without its start")]
        }
        if file.rejected { return [] }
        var reject: (GuestProtocolErrorKind, String)?
        let count = Int64(chunk.data.count)
        if chunk.offset != file.next {
            reject = (.outOfOrder, "a chunk of \(chunk.name) at offset \(chunk.offset), expected \(file.next)")
        } else if file.next + count > limits.maxFileBytes {
            reject = (.fileRejected, "file \(chunk.name) is larger than guest.max_file_bytes (\(limits.maxFileBytes))")
        } else if partFileBytes + count > limits.maxPartFileBytes {
            reject = (.fileRejected, "the part's files exceed guest.max_part_file_bytes (\(limits.maxPartFileBytes)) at \(chunk.name)")
        }
        if let (kind, why) = reject {
            file.rejected = true
            files[chunk.name] = file
            return [.error(kind, why), .relay(.log(level: "warning", message: "file \(chunk.name) dropped: \(why)"))]
        }
        chunk.data.withUnsafeBytes { file.hasher.update(bufferPointer: $0) }
        file.next += count
        partFileBytes += count
        guard chunk.last else {
            files[chunk.name] = file
            return [.relay(.file(chunk))]
        }
        let digest = hexString(file.hasher.finalize())
        files[chunk.name] = nil
        if let size = chunk.size, size != file.next {
            return [.error(.fileRejected, "file \(chunk.name): announced \(size) bytes, received \(file.next)"),
                    .relay(.log(level: "warning", message: "file \(chunk.name) dropped: its size does not match"))]
        }
        if let announced = chunk.sha256, announced.lowercased() != digest {
            return [.error(.fileRejected, "file \(chunk.name): sha256 \(digest), the guest announced \(announced)"),
                    .relay(.log(level: "warning", message: "file \(chunk.name) dropped: its sha256 does not match"))]
        }
        completedFiles.insert(chunk.name)
        var last = chunk
        last.size = file.next
        last.sha256 = digest
        return [.relay(.file(last))]
    }
}
