// What the operations tests share: the systemd notify socket a test listens on, a minimal HTTP
// client for /healthz and /metrics, a Prometheus text parser, and running the repository's scripts.

import Foundation
import Synchronization
import TalusTestSupport

/// A unix datagram socket that receives sd_notify(3) messages, like systemd's `NOTIFY_SOCKET`.
/// Messages are read on a thread of its own and kept in order with the time they arrived.
final class NotifyListener: Sendable {
    let path: String
    private let fd: Int32
    private let received = Mutex<[(message: String, at: ContinuousClock.Instant)]>([])
    private let closed = Atomic<Bool>(false)

    init(directory: String) throws {
        path = directory + "/notify.sock"
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket(): errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw TestSupportError("socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw TestSupportError("bind(\(path)): errno \(errno)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in self.receiveLoop() }
        thread.start()
    }

    private func receiveLoop() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !closed.load(ordering: .acquiring) {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 {
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                received.withLock { $0.append((text, ContinuousClock.now)) }
            }
        }
        Foundation.close(fd)
    }

    /// Every message so far, in order.
    var messages: [String] { received.withLock { $0.map(\.message) } }

    /// True once a message holding the line `line` (e.g. `READY=1`) arrived.
    func has(_ line: String) -> Bool { messages.contains { $0.split(separator: "\n").contains(Substring(line)) } }

    func close() {
        closed.store(true, ordering: .releasing)
        unlink(path)
    }
}

/// A response of ``httpGet(port:path:headers:timeout:)``.
struct HTTPReply: Sendable {
    var status: Int
    var headers: [String: String]
    var body: String
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.1, `Connection: close`), on a thread of its own.
func httpGet(port: Int, path: String, headers: [String: String] = [:], timeout: Duration = .seconds(10)) async throws -> HTTPReply {
    try await blockingThread {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket(): errno \(errno)") }
        defer { close(fd) }
        let seconds = Int(timeout.components.seconds)
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0 else { throw TestSupportError("connect to 127.0.0.1:\(port): errno \(errno)") }
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for (k, v) in headers { request += "\(k): \(v)\r\n" }
        request += "\r\n"
        let bytes = Array(request.utf8)
        guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { throw TestSupportError("send: errno \(errno)") }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 { throw TestSupportError("recv from 127.0.0.1:\(port)\(path): errno \(errno)") }
            if n == 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw TestSupportError("no HTTP response from :\(port)\(path): \(text.prefix(200))") }
        let head = text[..<split.lowerBound].split(separator: "\r\n")
        guard let statusLine = head.first, statusLine.hasPrefix("HTTP/"), let status = Int(statusLine.split(separator: " ")[1]) else {
            throw TestSupportError("bad status line from :\(port)\(path): \(head.first ?? "")")
        }
        var fields: [String: String] = [:]
        for line in head.dropFirst() {
            if let colon = line.firstIndex(of: ":") {
                fields[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        var body = String(text[split.upperBound...])
        if fields["transfer-encoding"]?.lowercased() == "chunked" { body = dechunk(body) }
        return HTTPReply(status: status, headers: fields, body: body)
    }
}

/// Decodes an HTTP/1.1 chunked body.
func dechunk(_ text: String) -> String {
    var out = ""
    var rest = Substring(text)
    while let lineEnd = rest.range(of: "\r\n") {
        guard let size = Int(rest[..<lineEnd.lowerBound].split(separator: ";")[0], radix: 16), size > 0 else { break }
        let start = lineEnd.upperBound
        let utf8 = rest.utf8
        guard let end = utf8.index(start, offsetBy: size, limitedBy: utf8.endIndex) else { break }
        out += String(rest[start..<end])
        rest = rest[end...].dropFirst(2)
    }
    return out
}

/// Runs blocking work on a new thread (never the cooperative pool).
func blockingThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

/// One sample line of the Prometheus text format.
struct PrometheusSample: Sendable, Equatable {
    var name: String
    var labels: [String: String]
    var value: Double
}

/// The Prometheus text exposition format (0.0.4), parsed strictly: every line is a comment
/// (`# HELP`, `# TYPE`), blank, or a sample `name{labels} value [timestamp]`; throws on anything
/// else. Returns the samples and the declared type of each family.
func parsePrometheusText(_ text: String) throws -> (samples: [PrometheusSample], types: [String: String]) {
    var samples: [PrometheusSample] = []
    var types: [String: String] = [:]
    let nameChars = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:")
    for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        let line = raw.trimmingCharacters(in: .whitespaces)
        if line.isEmpty { continue }
        if line.hasPrefix("#") {
            let parts = line.split(separator: " ", maxSplits: 3)
            if parts.count >= 4, parts[1] == "TYPE" {
                let type = String(parts[3])
                guard ["counter", "gauge", "histogram", "summary", "untyped"].contains(type) else {
                    throw TestSupportError("line \(number + 1): unknown metric type \(type)")
                }
                types[String(parts[2])] = type
            }
            continue
        }
        var i = line.startIndex
        while i < line.endIndex, nameChars.contains(line[i]) { i = line.index(after: i) }
        let name = String(line[..<i])
        guard !name.isEmpty, !name.first!.isNumber else { throw TestSupportError("line \(number + 1): no metric name: \(line)") }
        var labels: [String: String] = [:]
        if i < line.endIndex, line[i] == "{" {
            i = line.index(after: i)
            while i < line.endIndex, line[i] != "}" {
                let keyStart = i
                while i < line.endIndex, nameChars.contains(line[i]) { i = line.index(after: i) }
                let key = String(line[keyStart..<i])
                guard !key.isEmpty, i < line.endIndex, line[i] == "=" else { throw TestSupportError("line \(number + 1): bad label in \(line)") }
                i = line.index(after: i)
                guard i < line.endIndex, line[i] == "\"" else { throw TestSupportError("line \(number + 1): unquoted label value in \(line)") }
                i = line.index(after: i)
                var value = ""
                while i < line.endIndex, line[i] != "\"" {
                    if line[i] == "\\" {
                        i = line.index(after: i)
                        guard i < line.endIndex else { break }
                        value.append(line[i] == "n" ? "\n" : line[i])
                    } else {
                        value.append(line[i])
                    }
                    i = line.index(after: i)
                }
                guard i < line.endIndex else { throw TestSupportError("line \(number + 1): unterminated label value in \(line)") }
                i = line.index(after: i)
                labels[key] = value
                if i < line.endIndex, line[i] == "," { i = line.index(after: i) }
            }
            guard i < line.endIndex else { throw TestSupportError("line \(number + 1): unterminated labels in \(line)") }
            i = line.index(after: i)
        }
        let rest = line[i...].split(separator: " ")
        guard (1...2).contains(rest.count) else { throw TestSupportError("line \(number + 1): expected a value in \(line)") }
        let valueText = String(rest[0])
        guard let value = Double(valueText) ?? ["+Inf": Double.infinity, "-Inf": -Double.infinity, "NaN": Double.nan][valueText] else {
            throw TestSupportError("line \(number + 1): bad value \(valueText)")
        }
        samples.append(PrometheusSample(name: name, labels: labels, value: value))
    }
    return (samples, types)
}
