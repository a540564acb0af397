// Git plumbing for the code repository: everything is read from objects (`ls-tree`, `cat-file
// --batch`, `diff-tree -z`), never from a work tree, so hooks see exactly the pushed commit
// (including objects still in the push quarantine) and paths with spaces or odd bytes survive.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TalusCore

/// A git command failed or printed something this code does not understand.
public struct GitError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One file of a tree: its mode, path and where its contents are.
public struct TreeEntry: Sendable, Equatable, Hashable {
    /// What kind of file it is.
    public enum Kind: Sendable, Equatable, Hashable {
        case file
        case executable
        case symlink
        /// A gitlink (mode 160000): a commit of another repository.
        case submodule
        /// Anything else (a device, a fifo... on disk; an unknown mode in git).
        case other(String)
    }

    public let kind: Kind
    /// Path relative to the repository root, `/`-separated (`tools/toyfuzz/fuzz.sh`).
    public let path: String
    /// Where the contents are: a git object id, or an absolute path on disk.
    public let locator: String

    public init(kind: Kind, path: String, locator: String) {
        self.kind = kind; self.path = path; self.locator = locator
    }

    /// The path's `/`-separated components.
    public var components: [Substring] { path.split(separator: "/", omittingEmptySubsequences: false) }

    /// Kind from a git mode (`100644`, `100755`, `120000`, `160000`).
    static func kind(gitMode: String) -> Kind {
        switch gitMode {
        case "100644", "100664": .file
        case "100755": .executable
        case "120000": .symlink
        case "160000": .submodule
        default: .other("git mode \(gitMode)")
        }
    }
}

/// A bare git repository, driven through the `git` command.
public struct GitRepository: Sendable {
    /// The repository's git directory (the bare repository itself).
    public let path: String
    /// Bound on each git command.
    public var timeout: Duration = .seconds(120)

    public init(path: String) { self.path = path }

    /// True for `0000…0000` (the old value of a created ref, the new value of a deleted one).
    public static func isZero(_ oid: String) -> Bool { !oid.isEmpty && oid.allSatisfy { $0 == "0" } }

    /// True for a full lowercase hex object id (40 for SHA-1 repositories, 64 for SHA-256).
    public static func isFullOID(_ s: String) -> Bool {
        (s.utf8.count == 40 || s.utf8.count == 64) && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// Runs `git --git-dir=PATH args…` and returns its output. The environment is inherited, so a
    /// hook's quarantine variables (`GIT_OBJECT_DIRECTORY`, `GIT_ALTERNATE_OBJECT_DIRECTORIES`)
    /// apply and objects of the push being received are readable.
    public func git(_ arguments: [String], input: [UInt8]? = nil, check: Bool = true,
                    outputLimit: Int = 256 << 20) async throws -> CommandBytesResult {
        do {
            return try await runCommandBytes("git", ["--git-dir=" + path] + arguments, input: input,
                                             environment: ["LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"],
                                             timeout: timeout, check: check, outputLimit: outputLimit)
        } catch let e as CommandError {
            throw GitError("git \(arguments.joined(separator: " ")) failed: \(e.status.map { "exit status \($0)" } ?? "did not finish")"
                           + (e.stderr.isEmpty ? "" : ": " + e.stderr.trimmingCharacters(in: .whitespacesAndNewlines).suffix(600)))
        }
    }

    /// The full id of the commit `rev` names, or nil when it names none.
    public func resolveCommit(_ rev: String) async throws -> String? {
        let r = try await git(["rev-parse", "--verify", "--quiet", "--end-of-options", rev + "^{commit}"], check: false)
        guard r.status == 0 else { return nil }
        let oid = String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return Self.isFullOID(oid) ? oid : nil
    }

    /// The committer date of `commit`.
    public func commitDate(_ commit: String) async throws -> Date {
        let r = try await git(["show", "-s", "--format=%ct", commit])
        let text = String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let seconds = Int64(text) else { throw GitError("cannot read the commit date of \(commit): \(text)") }
        return Date(timeIntervalSince1970: Double(seconds))
    }

    /// The object id of the empty tree (what a created branch is compared against).
    public func emptyTree() async throws -> String {
        let r = try await git(["hash-object", "-t", "tree", "--stdin"], input: [])
        return String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Every file under `prefixes` (directories, relative to the root) at `commit`, recursively,
    /// in git's order. Submodules appear as `.submodule` entries.
    public func files(at commit: String, under prefixes: [String]) async throws -> [TreeEntry] {
        let r = try await git(["ls-tree", "-r", "-z", "--full-tree", commit, "--"] + prefixes)
        var out: [TreeEntry] = []
        for record in r.stdout.split(separator: 0, omittingEmptySubsequences: true) {
            // <mode> SP <type> SP <object> TAB <path>
            guard let tab = record.firstIndex(of: 0x09) else { throw GitError("unexpected ls-tree output") }
            let head = String(decoding: record[record.startIndex..<tab], as: UTF8.self).split(separator: " ")
            guard head.count == 3 else { throw GitError("unexpected ls-tree output: \(head)") }
            let path = String(decoding: record[(tab + 1)...], as: UTF8.self)
            out.append(TreeEntry(kind: TreeEntry.kind(gitMode: String(head[0])), path: path, locator: String(head[2])))
        }
        return out
    }

    /// Paths that differ between the trees of `old` and `new` (nil `old`: every path of `new`).
    /// Renames show as a deletion and an addition, so both directories count as changed.
    public func changedPaths(from old: String?, to new: String) async throws -> [String] {
        let base: String
        if let old { base = old } else { base = try await emptyTree() }
        let r = try await git(["diff-tree", "-r", "-z", "--no-renames", "--name-only", "--no-commit-id", base, new])
        return r.stdout.split(separator: 0, omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The contents of blobs, in the order asked, through one `cat-file --batch`.
    public func blobs(_ oids: [String]) async throws -> [[UInt8]] {
        guard !oids.isEmpty else { return [] }
        let input = Array(oids.joined(separator: "\n").utf8) + [0x0A]
        let r = try await git(["cat-file", "--batch"], input: input)
        let b = r.stdout
        var out: [[UInt8]] = []
        var i = 0
        for oid in oids {
            // <oid> SP <type> SP <size> LF <contents> LF   |   <oid> SP missing LF
            guard let lf = b[i...].firstIndex(of: 0x0A) else { throw GitError("cat-file: short output for \(oid)") }
            let header = String(decoding: b[i..<lf], as: UTF8.self).split(separator: " ")
            guard header.count == 3, let size = Int(header[2]) else {
                throw GitError("object \(oid) is missing from the repository")
            }
            guard header[1] == "blob" else { throw GitError("object \(oid) is a \(header[1]), not a file") }
            let start = lf + 1
            guard start + size < b.count else {
                throw GitError("cat-file: short output for \(oid)")
            }
            out.append(Array(b[start..<(start + size)]))
            i = start + size + 1
        }
        return out
    }
}
