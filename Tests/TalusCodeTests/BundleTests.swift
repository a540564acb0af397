import BSON
import Foundation
import Mongo
import Testing
import TalusCode
import TalusCore
import TalusModel
import TalusTestSupport

@Suite struct BundleTests {
    @Test func bundlesHaveTheDesignLayoutAndAreDeterministic() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let repo = GitRepository(path: f.bare)
        let main = try #require(try await f.remoteCommit())
        let a = try await BundleBuilder.build(tool: "toyfuzz", from: try await CodeSnapshot.load(repo, commit: main))
        let b = try await BundleBuilder.build(tool: "toyfuzz", from: try await CodeSnapshot.load(repo, commit: main))
        #expect(a.bytes == b.bytes)
        #expect(a.sha256 == b.sha256 && a.sha256.count == 64)
        #expect(a.components == ["toytarget"])
        let listing = try await tarListing(a.bytes)
        #expect(Set(listing) == ["tool/", "tool/fuzz.sh", "tool/seeds/", "tool/seeds/seed-1.txt", "tool/talus-tool.json",
                                 "components/", "components/toytarget/", "components/toytarget/target.sh",
                                 "components/toytarget/talus-tool.json"])
        // busybox tar (the guest's) unpacks it with the modes intact.
        let dir = try TestEnvironment.scratchDirectory("unpack")
        try Data(a.bytes).write(to: URL(fileURLWithPath: dir + "/b.tar.gz"))
        try await runCommand("/usr/bin/busybox", ["tar", "-xzf", dir + "/b.tar.gz", "-C", dir])
        #expect(FileManager.default.isExecutableFile(atPath: dir + "/tool/fuzz.sh"))
        #expect(FileManager.default.isExecutableFile(atPath: dir + "/components/toytarget/target.sh"))
        #expect(!FileManager.default.isExecutableFile(atPath: dir + "/tool/talus-tool.json"))
        let hello = try await BundleBuilder.build(tool: "hello", from: try await CodeSnapshot.load(repo, commit: main))
        #expect(hello.components == [])
        #expect(try await tarListing(hello.bytes) == ["tool/", "tool/run.sh", "tool/talus-tool.json"])
    }

    @Test func aPinnedCommitKeepsItsBundleAfterANewPush() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let cacheDir = try TestEnvironment.scratchDirectory("bundles")
        let service = BundleService(store: f.store, cache: BundleCache(directory: cacheDir, repository: GitRepository(path: f.bare)))
        let a = try #require(try await f.remoteCommit())
        let (recordA, bundleA) = try await service.bundle(tool: "toyfuzz", commit: nil)
        #expect(recordA.commit == a && bundleA.commit == a)
        let bytesA = try Data(contentsOf: URL(fileURLWithPath: bundleA.path))
        #expect(try sha256OfFile(bundleA.path).hex == bundleA.sha256)

        // B changes the tool and its component.
        let fuzz = try String(contentsOfFile: f.clone + "/tools/toyfuzz/fuzz.sh", encoding: .utf8)
        try f.write("tools/toyfuzz/fuzz.sh", fuzz + "# B\n", executable: true)
        try f.write("components/toytarget/README", "version B\n")
        let (ok, output) = try await f.commitAndPush("B")
        #expect(ok, "\(output)")
        let b = try await f.head()

        let (recordNewest, bundleB) = try await service.bundle(tool: "toyfuzz", commit: nil)
        #expect(recordNewest.commit == b)
        #expect(bundleB.sha256 != bundleA.sha256)
        #expect(try await tarListing(try Array(Data(contentsOf: URL(fileURLWithPath: bundleB.path)))).contains("components/toytarget/README"))
        // The task pinned at A still gets A's bundle, byte for byte.
        let (_, againA) = try await service.bundle(tool: "toyfuzz", commit: a)
        #expect(againA.sha256 == bundleA.sha256)
        #expect(try Data(contentsOf: URL(fileURLWithPath: againA.path)) == bytesA)
        // A fresh cache rebuilds A to the same bytes.
        let fresh = BundleCache(directory: try TestEnvironment.scratchDirectory("bundles2"), repository: GitRepository(path: f.bare))
        #expect(try await fresh.bundle(tool: "toyfuzz", commit: a).sha256 == bundleA.sha256)
        // Concurrent requests for a new commit build it once and agree.
        let other = BundleCache(directory: try TestEnvironment.scratchDirectory("bundles3"), repository: GitRepository(path: f.bare))
        async let x = other.bundle(tool: "hello", commit: b)
        async let y = other.bundle(tool: "hello", commit: b)
        let (bx, by) = try await (x, y)
        #expect(bx == by)
    }

    @Test func requestsForUnknownToolsAndCommitsAreRefused() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let service = BundleService(store: f.store, cache: BundleCache(directory: try TestEnvironment.scratchDirectory("bundles"),
                                                                      repository: GitRepository(path: f.bare)))
        await #expect(throws: CodeLookupError.self) { try await service.bundle(tool: "nosuch", commit: nil) }
        do {
            _ = try await service.bundle(tool: "hello", commit: "abc")
            Issue.record("a short commit was accepted")
        } catch let e as CodeLookupError {
            guard case .badCommit = e else { Issue.record("wrong error \(e)"); return }
        }
        do {
            _ = try await service.bundle(tool: "hello", commit: String(repeating: "a", count: 40))
            Issue.record("an unknown commit was accepted")
        } catch let e as CodeLookupError {
            guard case .notRecorded(let m) = e else { Issue.record("wrong error \(e)"); return }
            #expect(m.contains("not recorded at commit aaaa"))
        }
        // Recorded, but the repository does not have the commit (a restored backup, the wrong path).
        let ghost = String(repeating: "d", count: 40)
        _ = try await f.store.code.insertOne(CodeDocument(name: "hello", kind: .tool, commit: ghost, committed: Date(),
                                                          manifest: ToolManifest(name: "hello", description: "", entry: "./run.sh"),
                                                          path: "tools/hello"))
        do {
            _ = try await service.bundle(tool: "hello", commit: ghost)
            Issue.record("a commit missing from the repository was bundled")
        } catch let e as CodeLookupError {
            guard case .notInRepository(let m) = e else { Issue.record("wrong error \(e)"); return }
            #expect(m.contains("is not in the code repository \(f.bare)"))
        }
        do {
            _ = try await service.bundle(tool: "../../etc", commit: nil)
            Issue.record("a path was accepted as a tool name")
        } catch let e as CodeLookupError {
            guard case .unknownTool = e else { Issue.record("wrong error \(e)"); return }
        }
    }

    /// Trees the hook would refuse, written with plumbing straight into a repository without
    /// hooks (as if pushed before the hook existed): the builder refuses to pack them.
    @Test func pathTricksAreRefused() async throws {
        let dir = try TestEnvironment.scratchDirectory("tricks")
        let repo = GitRepository(path: dir + "/r.git")
        try await runCommand("git", ["init", "--quiet", "--bare", repo.path])
        let manifest = toolManifest("evil")
        let base: [PlumbEntry] = [.blob("tools/evil/talus-tool.json", manifest), .blob("tools/evil/run.sh", "#!/bin/sh\n", mode: "100755")]
        let cases: [(String, [PlumbEntry], file: String, message: String)] = [
            ("absolute symlink", [.blob("tools/evil/passwd", "/etc/passwd", mode: "120000")],
             "tools/evil/passwd", "is a symbolic link to the absolute path /etc/passwd"),
            ("symlink out", [.blob("tools/evil/sub/up", "../../../etc/passwd", mode: "120000")],
             "tools/evil/sub/up", "is a symbolic link to ../../../etc/passwd, which points outside tools/evil/"),
            ("dot-dot component", [.blob("tools/evil/../escape", "x")],
             "tools/evil/../escape", "the path has an empty, \".\" or \"..\" component"),
            ("submodule", [.submodule("tools/evil/vendor", String(repeating: "1", count: 40))],
             "tools/evil/vendor", "is a git submodule"),
        ]
        for (what, extra, file, message) in cases {
            let commit = try await plumbCommit(repo, base + extra)
            let snapshot = try await CodeSnapshot.load(repo, commit: commit)
            do {
                _ = try await BundleBuilder.build(tool: "evil", from: snapshot)
                Issue.record("\(what): bundled")
            } catch let e as BundleError {
                #expect(e.kind == .unsafe, "\(what)")
                #expect(e.description.hasPrefix("\(file) \(message)"), "\(what): \(e.description)")
            }
            // The hook's check refuses the same file for the same reason.
            let problems = RepositoryCheck.check(snapshot).problems
            #expect(problems.contains { $0.file == file && $0.message.hasPrefix(message) }, "\(what): \(problems)")
        }
        // A relative link that stays inside is fine.
        let ok = try await plumbCommit(repo, base + [.blob("tools/evil/sub/again", "../run.sh", mode: "120000")])
        let bundle = try await BundleBuilder.build(tool: "evil", from: try await CodeSnapshot.load(repo, commit: ok))
        #expect(try await tarListing(bundle.bytes).contains("tool/sub/again"))
    }

    @Test func longAndUnicodePathsSurviveEveryTar() async throws {
        let long = (0..<6).map { "directory-number-\($0)-with-a-long-name" }.joined(separator: "/") + "/file-ü.txt"
        let veryLong = String(repeating: "x", count: 180) + "/" + String(repeating: "y", count: 120) + ".txt"
        let dir = try TestEnvironment.scratchDirectory("long")
        let repo = GitRepository(path: dir + "/r.git")
        try await runCommand("git", ["init", "--quiet", "--bare", repo.path])
        let commit = try await plumbCommit(repo, [
            .blob("tools/deep/talus-tool.json", toolManifest("deep")), .blob("tools/deep/run.sh", "#!/bin/sh\n", mode: "100755"),
            .blob("tools/deep/" + long, "a\n"), .blob("tools/deep/" + veryLong, "b\n"),
            .blob("tools/deep/l", String(repeating: "../deep/", count: 0) + long, mode: "120000"),
        ])
        let bundle = try await BundleBuilder.build(tool: "deep", from: try await CodeSnapshot.load(repo, commit: commit))
        for tar in ["tar", "busybox"] {
            let listing = try await tarListing(bundle.bytes, tar: tar)
            #expect(listing.contains("tool/" + long), "\(tar)")
            #expect(listing.contains("tool/" + veryLong), "\(tar)")
        }
        let out = try TestEnvironment.scratchDirectory("long-out")
        try Data(bundle.bytes).write(to: URL(fileURLWithPath: out + "/b.tar.gz"))
        try await runCommand("/usr/bin/busybox", ["tar", "-xzf", out + "/b.tar.gz", "-C", out])
        #expect(try String(contentsOfFile: out + "/tool/" + veryLong, encoding: .utf8) == "b\n")
        #expect(try String(contentsOfFile: out + "/tool/l", encoding: .utf8) == "a\n")
    }
}

/// A file for ``plumbCommit(_:_:)``.
enum PlumbEntry {
    case blob(String, String, mode: String = "100644")
    case submodule(String, String)

    var path: String {
        switch self { case .blob(let p, _, _), .submodule(let p, _): p }
    }
}

/// Writes a commit containing exactly `entries` with `git hash-object` and `git mktree` (which,
/// unlike `update-index`, accepts names such as `..`), and points `main` at it.
func plumbCommit(_ repo: GitRepository, _ entries: [PlumbEntry]) async throws -> String {
    // Build the trees bottom-up: each directory's lines, then its tree object.
    func tree(_ prefix: [Substring], _ items: [(path: [Substring], entry: PlumbEntry)]) async throws -> String {
        var lines: [String] = []
        let direct = items.filter { $0.path.count == prefix.count + 1 }
        for item in direct {
            let name = item.path.last!
            switch item.entry {
            case .blob(_, let content, let mode):
                let oid = try await repo.git(["hash-object", "-w", "--stdin"], input: Array(content.utf8))
                lines.append("\(mode) blob \(String(decoding: oid.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))\t\(name)")
            case .submodule(_, let commit):
                lines.append("160000 commit \(commit)\t\(name)")
            }
        }
        let subdirs = Set(items.filter { $0.path.count > prefix.count + 1 }.map { $0.path[prefix.count] })
        for sub in subdirs.sorted() {
            let inner = items.filter { $0.path.count > prefix.count + 1 && $0.path[prefix.count] == sub }
            lines.append("040000 tree \(try await tree(prefix + [sub], inner))\t\(sub)")
        }
        let r = try await repo.git(["mktree", "--missing", "-z"], input: Array(lines.joined(separator: "\0").utf8) + [0])
        return String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
    let root = try await tree([], entries.map { ($0.path.split(separator: "/", omittingEmptySubsequences: false), $0) })
    let commit = try await runCommand("git", ["--git-dir=" + repo.path, "commit-tree", root, "-m", "plumbing"],
                                      environment: ["GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                                                    "GIT_COMMITTER_EMAIL": "t@t"])
    let oid = commit.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    _ = try await repo.git(["update-ref", "refs/heads/main", oid])
    return oid
}
