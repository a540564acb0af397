// Output: human tables and key/value blocks by default, JSON (sorted keys, ISO dates, ids as
// hex) with --json.

import BSON
import Foundation
import TalusModel

enum Format {
    static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n)
        var i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m"
    }

    static func date(_ d: Date?) -> String {
        guard let d else { return "-" }
        let text = TalusJSON.formatDate(d)
        return String(text.prefix(16)).replacingOccurrences(of: "T", with: " ")
    }

    static func ago(_ d: Date?, now: Date = Date()) -> String {
        guard let d else { return "-" }
        let s = now.timeIntervalSince(d)
        if s < 0 { return "in " + duration(-s) }
        return duration(s) + " ago"
    }

    /// A document as one line of JSON, its top-level keys sorted: a document decoded from the
    /// API's JSON has its keys in no fixed order, and `show` should print the same every time.
    static func json(_ doc: BSONDocument) -> String {
        BSONDocument(doc.keys.sorted().map { ($0, doc[$0]!) }).extendedJSON(.relaxed)
    }
}

/// Writes command output to stdout.
enum Output {
    static func line(_ text: String = "") {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    /// Writes `value` as pretty, key-sorted JSON.
    static func json<T: Encodable>(_ value: T) throws {
        let data = try TalusJSON.encoder(pretty: true).encode(value)
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    /// Writes `value` as one line of JSON (JSON Lines events).
    static func jsonLine<T: Encodable>(_ value: T) throws {
        let data = try TalusJSON.encoder().encode(value)
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    /// A table with a header row; columns padded to their widest cell (the last one is not).
    static func table(_ header: [String], _ rows: [[String]]) {
        guard !rows.isEmpty else { line("(none)"); return }
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
        func render(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }
        line(render(header))
        for row in rows { line(render(row)) }
    }

    /// `key: value` lines, keys aligned.
    static func fields(_ pairs: [(String, String)]) {
        let width = pairs.map(\.0.count).max() ?? 0
        for (k, v) in pairs { line((k + ":").padding(toLength: width + 1, withPad: " ", startingAt: 0) + " " + v) }
    }

    static func note(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}
