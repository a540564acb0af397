// The tools and components of one tree: a commit of the code repository, or directories on a
// user's disk (`talus tool run-local`). The hook's checks and the bundle builder both work on a
// snapshot, so what a tool author runs locally is checked and packed exactly like a push.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import TalusModel

extension CodeDocument.Kind {
    /// The top-level directory of the kind: `tools` or `components`.
    public var directory: String { self == .tool ? "tools" : "components" }
}

/// A tool or component directory's identity.
public struct UnitKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let kind: CodeDocument.Kind
    public let name: String
    public init(_ kind: CodeDocument.Kind, _ name: String) { self.kind = kind; self.name = name }
    /// `tools/<name>`.
    public var path: String { "\(kind.directory)/\(name)" }
    public var manifestPath: String { path + "/" + ToolManifest.fileName }
    public var description: String { path }
    public static func < (a: UnitKey, b: UnitKey) -> Bool { (a.kind.rawValue, a.name) < (b.kind.rawValue, b.name) }

    /// The unit a repository path belongs to (`tools/x/...` → tool x); nil for other paths and
    /// for files directly in `tools/` or `components/` (a README there is fine).
    public init?(path: String) {
        let parts = path.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        switch parts[0] {
        case "tools": self.init(.tool, String(parts[1]))
        case "components": self.init(.component, String(parts[1]))
        default: return nil
        }
    }
}

/// Reads file contents for a snapshot's entries.
public protocol ContentReader: Sendable {
    /// The contents of `entries`, in order.
    func read(_ entries: [TreeEntry]) async throws -> [[UInt8]]
}

/// Contents from git objects (entry locators are object ids).
public struct GitContentReader: ContentReader {
    public let repository: GitRepository
    public init(repository: GitRepository) { self.repository = repository }
    public func read(_ entries: [TreeEntry]) async throws -> [[UInt8]] {
        try await repository.blobs(entries.map(\.locator))
    }
}

/// Contents from files on disk (entry locators are absolute paths; symlinks read as their target).
public struct DiskContentReader: ContentReader {
    public init() {}
    public func read(_ entries: [TreeEntry]) async throws -> [[UInt8]] {
        try entries.map { e in
            if e.kind == .symlink {
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: e.locator) else {
                    throw GitError("cannot read the symbolic link \(e.locator)")
                }
                return Array(target.utf8)
            }
            guard let data = FileManager.default.contents(atPath: e.locator) else {
                throw GitError("cannot read \(e.locator)")
            }
            return Array(data)
        }
    }
}

/// The tools and components of a tree.
public struct CodeSnapshot: Sendable {
    /// Every file under `tools/` and `components/`.
    public let entries: [TreeEntry]
    /// Files of each tool and component directory.
    public let units: [UnitKey: [TreeEntry]]
    /// Contents of the manifests and symbolic links (by repository path): what the checks read.
    public let small: [String: [UInt8]]
    /// Reads the other files (for bundles).
    public let reader: any ContentReader
    /// The commit, for snapshots of the repository.
    public let commit: String?
    /// The commit's date (bundle file times), or the epoch.
    public let date: Date

    public init(entries: [TreeEntry], reader: any ContentReader, commit: String? = nil, date: Date = Date(timeIntervalSince1970: 0)) async throws {
        self.entries = entries
        var units: [UnitKey: [TreeEntry]] = [:]
        for e in entries {
            if let key = UnitKey(path: e.path) { units[key, default: []].append(e) }
        }
        self.units = units
        let wanted = entries.filter { e in
            e.kind == .symlink || (e.path.hasSuffix("/" + ToolManifest.fileName) && UnitKey(path: e.path).map { $0.manifestPath == e.path } == true
                && (e.kind == .file || e.kind == .executable))
        }
        let contents = try await reader.read(wanted)
        var small: [String: [UInt8]] = [:]
        for (e, bytes) in zip(wanted, contents) { small[e.path] = bytes }
        self.small = small
        self.reader = reader
        self.commit = commit
        self.date = date
    }

    /// The snapshot of `commit` in `repository`.
    public static func load(_ repository: GitRepository, commit: String) async throws -> CodeSnapshot {
        let entries = try await repository.files(at: commit, under: ["tools", "components"])
        let date = try await repository.commitDate(commit)
        return try await CodeSnapshot(entries: entries, reader: GitContentReader(repository: repository), commit: commit, date: date)
    }

    /// A snapshot of directories on disk: each `(unit, directory)` pair becomes `tools/<name>/…`
    /// or `components/<name>/…`.
    public static func load(directories: [(UnitKey, String)]) async throws -> CodeSnapshot {
        var entries: [TreeEntry] = []
        for (key, dir) in directories {
            entries += try diskEntries(root: dir, prefix: key.path)
        }
        return try await CodeSnapshot(entries: entries, reader: DiskContentReader())
    }

    /// Files under `root` as entries named `prefix/<relative path>`. Directories named `.git`
    /// are skipped.
    static func diskEntries(root: String, prefix: String) throws -> [TreeEntry] {
        var out: [TreeEntry] = []
        func walk(_ dir: String, _ rel: String) throws {
            let names: [String]
            do { names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted() } catch {
                throw GitError("cannot list \(dir): \(error.localizedDescription)")
            }
            for name in names where name != ".git" {
                let full = dir + "/" + name
                let relative = rel.isEmpty ? name : rel + "/" + name
                var st = stat()
                guard lstat(full, &st) == 0 else { throw GitError("cannot read \(full): \(String(cString: strerror(errno)))") }
                let kind: TreeEntry.Kind
                switch st.st_mode & S_IFMT {
                case S_IFDIR: try walk(full, relative); continue
                case S_IFLNK: kind = .symlink
                case S_IFREG: kind = st.st_mode & 0o100 != 0 ? .executable : .file
                default: kind = .other("not a regular file, directory or symbolic link")
                }
                out.append(TreeEntry(kind: kind, path: prefix + "/" + relative, locator: full))
            }
        }
        try walk(root, "")
        return out
    }
}
