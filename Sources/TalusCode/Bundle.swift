// Tool bundles (DESIGN §8): a tar.gz holding `tool/…` (the tool directory's files) and
// `components/<name>/…` for every component the tool references, transitively. Built from a
// snapshot (git objects, or directories on disk for `run-local`), never from a work tree, and
// deterministic: entries sorted, owner root, modes 0755/0644, every time the commit's date,
// `gzip -n` (no name, no timestamp). The same commit gives the same bytes.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Crypto
import TalusCore
import TalusModel

/// A bundle cannot be built: the tool or a component is missing, or a file breaks the tree rules.
public struct BundleError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// The tool (or a referenced component) is not in the tree.
        case notFound
        /// A file cannot go into a bundle (symlink out of the tree, submodule, `..`...).
        case unsafe
        /// A manifest does not decode.
        case invalid
        /// The commit is not in the repository.
        case missingCommit
    }
    public let kind: Kind
    public let description: String
    public init(_ kind: Kind, _ description: String) { self.kind = kind; self.description = description }
}

/// A built bundle.
public struct ToolBundle: Sendable {
    /// The tar.gz bytes.
    public let bytes: [UInt8]
    /// Lowercase hex SHA-256 of `bytes`.
    public let sha256: String
    /// The tool's manifest.
    public let manifest: ToolManifest
    /// Components packed, in order.
    public let components: [String]
}

/// Builds bundles from snapshots.
public enum BundleBuilder {
    /// The tool `name`'s bundle from `snapshot`.
    public static func build(tool name: String, from snapshot: CodeSnapshot) async throws -> ToolBundle {
        let toolKey = UnitKey(.tool, name)
        let manifest = try manifestOf(toolKey, snapshot)
        // Components, transitively, each once (cycles are harmless).
        let order = snapshot.componentClosure(of: toolKey)
        for c in order { _ = try manifestOf(UnitKey(.component, c), snapshot, requiredBy: "tool \(name)") }
        var members: [(archivePath: String, entry: TreeEntry)] = []
        for (key, prefix) in [(toolKey, "tool")] + order.sorted().map({ (UnitKey(.component, $0), "components/\($0)") }) {
            for e in snapshot.units[key] ?? [] {
                if let problem = TreeRules.problem(e, unitPath: key.path, symlinkTarget: snapshot.small[e.path]) {
                    throw BundleError(.unsafe, "\(e.path) \(problem)")
                }
                members.append((prefix + "/" + e.path.dropFirst(key.path.count + 1), e))
            }
        }
        members.sort { $0.archivePath.utf8.lexicographicallyPrecedes($1.archivePath.utf8) }

        let mtime = Int64(snapshot.date.timeIntervalSince1970)
        var tar = TarWriter(mtime: mtime)
        // Directories first-seen order follows the sorted files, so the archive is deterministic.
        var directories = Set<String>()
        func addDirectories(of path: String) {
            var parts = path.split(separator: "/").dropLast()
            var prefixes: [String] = []
            while !parts.isEmpty { prefixes.append(parts.joined(separator: "/")); parts = parts.dropLast() }
            for dir in prefixes.reversed() where directories.insert(dir).inserted { tar.directory(dir) }
        }
        let regular = members.filter { $0.entry.kind != .symlink }
        let contents = try await snapshot.reader.read(regular.map(\.entry))
        var byPath: [String: [UInt8]] = [:]
        for (m, bytes) in zip(regular, contents) { byPath[m.archivePath] = bytes }
        addDirectories(of: "tool/x")
        if !order.isEmpty { addDirectories(of: "components/x") }
        for m in members {
            addDirectories(of: m.archivePath)
            switch m.entry.kind {
            case .symlink:
                tar.symlink(m.archivePath, target: String(decoding: snapshot.small[m.entry.path] ?? [], as: UTF8.self))
            case .executable:
                tar.file(m.archivePath, byPath[m.archivePath] ?? [], executable: true)
            default:
                tar.file(m.archivePath, byPath[m.archivePath] ?? [], executable: false)
            }
        }
        let gz = try await gzip(tar.finish())
        return ToolBundle(bytes: gz, sha256: sha256Hex(gz), manifest: manifest, components: order)
    }

    static func manifestOf(_ key: UnitKey, _ snapshot: CodeSnapshot, requiredBy: String? = nil) throws -> ToolManifest {
        guard snapshot.units[key] != nil else {
            let at = snapshot.commit.map { " at commit \($0)" } ?? ""
            throw BundleError(.notFound, "\(key.kind.rawValue) \(key.name) does not exist\(at)" + (requiredBy.map { " (required by \($0))" } ?? ""))
        }
        guard let bytes = snapshot.small[key.manifestPath] else {
            throw BundleError(.invalid, "\(key.manifestPath) is missing")
        }
        do {
            return try TalusJSON.decoder().decode(ToolManifest.self, from: Data(bytes))
        } catch {
            throw BundleError(.invalid, "\(key.manifestPath) cannot be read: \(error)")
        }
    }

    /// `gzip -n -9`: no file name or time in the header, so equal input gives equal output.
    static func gzip(_ bytes: [UInt8]) async throws -> [UInt8] {
        try await runCommandBytes("gzip", ["-n", "-9", "-c"], input: bytes, timeout: .seconds(300), outputLimit: 4 << 30).stdout
    }
}

/// Lowercase hex SHA-256 of `bytes`.
func sha256Hex(_ bytes: [UInt8]) -> String {
    hexString(SHA256.hash(data: bytes))
}

/// A ustar writer with fixed owner and times. Names longer than ustar allows get a PAX `path`
/// (or `linkpath`) record, which GNU tar and busybox tar read.
struct TarWriter {
    private(set) var out: [UInt8] = []
    let mtime: Int64

    init(mtime: Int64) { self.mtime = max(0, mtime) }

    mutating func directory(_ path: String) { entry(path + "/", type: UInt8(ascii: "5"), mode: 0o755, size: 0, link: "") }

    mutating func file(_ path: String, _ bytes: [UInt8], executable: Bool) {
        entry(path, type: UInt8(ascii: "0"), mode: executable ? 0o755 : 0o644, size: bytes.count, link: "")
        out += bytes
        pad()
    }

    mutating func symlink(_ path: String, target: String) {
        entry(path, type: UInt8(ascii: "2"), mode: 0o777, size: 0, link: target)
    }

    mutating func finish() -> [UInt8] {
        out += [UInt8](repeating: 0, count: 1024)
        return out
    }

    private mutating func pad() {
        let r = out.count % 512
        if r != 0 { out += [UInt8](repeating: 0, count: 512 - r) }
    }

    private mutating func entry(_ path: String, type: UInt8, mode: Int, size: Int, link: String) {
        let split = Self.ustarSplit(path)
        let linkFits = link.utf8.count <= 100
        if split == nil || !linkFits {
            var records: [UInt8] = []
            if split == nil { records += Self.paxRecord("path", path) }
            if !linkFits { records += Self.paxRecord("linkpath", link) }
            header(name: "PaxHeaders/" + String(decoding: path.utf8.suffix(80), as: UTF8.self).replacingOccurrences(of: "/", with: "_"), prefix: "",
                   type: UInt8(ascii: "x"), mode: 0o644, size: records.count, link: "")
            out += records
            pad()
        }
        let (prefix, name) = split ?? ("", String(decoding: path.utf8.suffix(99), as: UTF8.self))
        header(name: name, prefix: prefix, type: type, mode: mode, size: size,
               link: linkFits ? link : String(decoding: link.utf8.prefix(100), as: UTF8.self))
    }

    /// `(prefix, name)` fitting ustar's 155 + 100 bytes, split at a `/`; nil when impossible.
    static func ustarSplit(_ path: String) -> (String, String)? {
        let bytes = Array(path.utf8)
        if bytes.count <= 100 { return ("", path) }
        for i in stride(from: min(bytes.count - 1, 155), through: 1, by: -1) where bytes[i] == UInt8(ascii: "/") {
            if bytes.count - i - 1 <= 100 && bytes.count - i - 1 > 0 {
                return (String(decoding: bytes[..<i], as: UTF8.self), String(decoding: bytes[(i + 1)...], as: UTF8.self))
            }
        }
        return nil
    }

    /// `"<len> key=value\n"` where len counts the whole record.
    static func paxRecord(_ key: String, _ value: String) -> [UInt8] {
        let body = " \(key)=\(value)\n"
        var n = body.utf8.count + 1
        while String(n).utf8.count + body.utf8.count != n { n = String(n).utf8.count + body.utf8.count }
        return Array((String(n) + body).utf8)
    }

    private mutating func header(name: String, prefix: String, type: UInt8, mode: Int, size: Int, link: String) {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, _ offset: Int, _ length: Int) {
            for (i, b) in s.utf8.prefix(length).enumerated() { h[offset + i] = b }
        }
        func octal(_ v: Int64, _ offset: Int, _ length: Int) {
            let digits = String(v, radix: 8)
            put(String(repeating: "0", count: max(0, length - 1 - digits.count)) + digits, offset, length - 1)
        }
        put(name, 0, 100)
        octal(Int64(mode), 100, 8)
        octal(0, 108, 8)           // uid
        octal(0, 116, 8)           // gid
        octal(Int64(size), 124, 12)
        octal(mtime, 136, 12)
        for i in 148..<156 { h[i] = 0x20 }   // checksum field counts as spaces
        h[156] = type
        put(link, 157, 100)
        put("ustar", 257, 6)       // "ustar\0"
        put("00", 263, 2)
        put("root", 265, 32)
        put("root", 297, 32)
        put(prefix, 345, 155)
        let sum = h.reduce(0) { $0 + Int($1) }
        let digits = String(sum, radix: 8)
        put(String(repeating: "0", count: max(0, 6 - digits.count)) + digits, 148, 6)
        h[154] = 0
        h[155] = 0x20
        out += h
    }
}
