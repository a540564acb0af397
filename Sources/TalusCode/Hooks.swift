// The code repository's git hooks (DESIGN §8).
//
// pre-receive: for an update of the main branch, checks every tool and component changed between
// the old and the new commit (a created branch counts every one; renames count both sides), at the
// new commit, and rejects the whole push with messages naming each file and problem. It writes
// nothing anywhere. Other branches and tags are accepted unchecked (work in progress is welcome
// there); deleting main is refused.
//
// post-receive: records every tool and component at the new head of main in `code`, under a lock
// so concurrent pushes record in order, and moves the recorded head.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import TalusModel

/// One line of a hook's standard input: `<old> <new> <ref>`.
public struct RefUpdate: Sendable, Equatable {
    public let old: String
    public let new: String
    public let ref: String

    public init(old: String, new: String, ref: String) { self.old = old; self.new = new; self.ref = ref }

    public var isCreation: Bool { GitRepository.isZero(old) }
    public var isDeletion: Bool { GitRepository.isZero(new) }

    /// Parses a hook's standard input. Ref names cannot contain spaces (git check-ref-format), so
    /// three space-separated fields are unambiguous.
    public static func parse(_ text: String) throws -> [RefUpdate] {
        try text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.isEmpty { return nil }
            guard fields.count == 3 else { throw GitError("unexpected hook input line: \(line)") }
            return RefUpdate(old: String(fields[0]), new: String(fields[1]), ref: String(fields[2]))
        }
    }
}

/// The hooks, as functions of their input; each returns the lines to show the pusher.
public struct CodeHooks: Sendable {
    public let repository: GitRepository
    /// The branch whose tools are validated and recorded (`main`).
    public let branch: String

    public init(repository: GitRepository, branch: String = "main") {
        self.repository = repository
        self.branch = branch
    }

    public var mainRef: String { "refs/heads/" + branch }

    /// Every recorded commit gets a ref `refs/talus/recorded/<commit>`, so a force push that drops
    /// it from main never lets `git gc` prune a commit a task may have pinned.
    public static let recordedRefs = "refs/talus/"

    /// The verdict of pre-receive.
    public struct Verdict: Sendable {
        public var accepted: Bool
        /// Lines for the pusher (git shows them prefixed with `remote:`).
        public var lines: [String]
        /// The problems found, for callers that want them structured.
        public var problems: [CodeProblem]
    }

    /// Checks the updates of a push.
    public func preReceive(_ updates: [RefUpdate]) async throws -> Verdict {
        var verdict = Verdict(accepted: true, lines: [], problems: [])
        for update in updates where update.ref.hasPrefix(Self.recordedRefs) {
            verdict.accepted = false
            verdict.lines.append("talus: \(update.ref) is refused: refs under \(Self.recordedRefs) keep recorded commits alive and are managed by the repository.")
        }
        for update in updates where update.ref == mainRef {
            if update.isDeletion {
                verdict.accepted = false
                verdict.lines.append("talus: deleting \(branch) is refused: it is the branch tools are recorded from.")
                continue
            }
            let changedPaths = try await repository.changedPaths(from: update.isCreation ? nil : update.old, to: update.new)
            let changed = Set(changedPaths.compactMap(UnitKey.init(path:)))
            if changed.isEmpty { continue }
            let snapshot = try await CodeSnapshot.load(repository, commit: update.new)
            let check = RepositoryCheck.check(snapshot, changed: changed)
            if check.problems.isEmpty {
                let present = changed.filter { snapshot.units[$0] != nil }.sorted().map(\.path)
                if !present.isEmpty {
                    verdict.lines.append("talus: checked \(present.joined(separator: ", ")) at \(update.new.prefix(12)): ok")
                }
            } else {
                verdict.accepted = false
                verdict.problems += check.problems
                let n = check.problems.count
                verdict.lines.append("talus: push to \(branch) rejected: \(n) problem\(n == 1 ? "" : "s") at \(update.new.prefix(12)):")
                verdict.lines += check.problems.map { "talus:   \($0.file): \($0.message)" }
                verdict.lines.append("talus: fix them, commit, and push again (`talus tool run-local tools/<name>` checks a tool before you push).")
            }
        }
        return verdict
    }

    /// Records the head of main after a push that updated it. Serialized by a lock file in the
    /// repository, and always records the branch's current tip (read under the lock), so pushes
    /// racing each other end with the latest commit recorded as the head.
    public func postReceive(_ updates: [RefUpdate], store: CodeStore) async throws -> [String] {
        guard updates.contains(where: { $0.ref == mainRef && !$0.isDeletion }) else { return [] }
        let lock = try FileLock(path: repository.path + "/talus-record.lock")
        defer { lock.unlock() }
        try await lock.lock()
        guard let tip = try await repository.resolveCommit(mainRef) else { return [] }
        return try await record(commit: tip, store: store)
    }

    /// Records every valid tool and component at `commit` and makes it the recorded head.
    public func record(commit: String, store: CodeStore) async throws -> [String] {
        let snapshot = try await CodeSnapshot.load(repository, commit: commit)
        let check = RepositoryCheck.check(snapshot)
        _ = try await repository.git(["update-ref", Self.recordedRefs + "recorded/" + commit, commit])
        try await store.ensureIndexes()
        let docs = try await store.record(snapshot, check: check, branch: branch)
        var lines: [String] = []
        let tools = docs.filter { $0.kind == .tool }.map(\.name)
        let components = docs.filter { $0.kind == .component }.map(\.name)
        lines.append("talus: recorded at \(commit.prefix(12)) (\(branch)): "
                     + "tools: \(tools.isEmpty ? "none" : tools.joined(separator: ", ")); "
                     + "components: \(components.isEmpty ? "none" : components.joined(separator: ", "))")
        // Units with problems (from before the hook existed, or pushed around it) are skipped loudly.
        let skipped = Set(snapshot.units.keys).subtracting(check.manifests.keys).sorted()
        if !skipped.isEmpty {
            lines.append("talus: not recorded (invalid): \(skipped.map(\.path).joined(separator: ", "))")
            lines += check.problems.map { "talus:   \($0.file): \($0.message)" }
        }
        return lines
    }
}

/// An exclusive `flock` on a file, taken without blocking a thread of the cooperative pool.
final class FileLock: @unchecked Sendable {
    // `fd` is set once in init and closed once in unlock (guarded by `closed`); one owner uses it.
    private let fd: Int32
    private var closed = false

    init(path: String) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o664)
        guard fd >= 0 else { throw GitError("cannot open the lock file \(path): \(String(cString: strerror(errno)))") }
    }

    func lock(timeout: Duration = .seconds(300)) async throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else { throw GitError("cannot lock: \(String(cString: strerror(errno)))") }
            guard ContinuousClock.now < deadline else { throw GitError("another recording held the lock for \(timeout)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func unlock() {
        guard !closed else { return }
        closed = true
        close(fd)   // releases the lock
    }
}
