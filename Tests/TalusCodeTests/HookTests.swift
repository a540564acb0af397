import BSON
import Foundation
import Mongo
import Testing
import TalusCode
import TalusCore
import TalusModel
import TalusTestSupport

/// The hooks through real pushes: `talus-code init` creates a bare repository whose hooks run the
/// built `talus-code`, and the tests push to it with git, against a SecantusDB database.
@Suite struct HookTests {
    @Test func initRecordsTheTemplate() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let main = try #require(try await f.remoteCommit())
        let records = try await f.records(at: main)
        #expect(records.map { "\($0.kind.rawValue):\($0.name)" } == ["component:toytarget", "tool:hello", "tool:toyfuzz"])
        let toyfuzz = try #require(records.first { $0.name == "toyfuzz" })
        #expect(toyfuzz.path == "tools/toyfuzz")
        #expect(toyfuzz.manifest.components == ["toytarget"])
        #expect(toyfuzz.manifest.params.map(\.name) == ["iterations", "seed", "target"])
        #expect(try await f.store.head()?.commit == main)
        #expect(f.initOutput.contains("recorded at \(main.prefix(12))"))
        // The hooks are installed and run the built binary.
        let hook = try String(contentsOfFile: f.bare + "/hooks/pre-receive", encoding: .utf8)
        #expect(hook.contains(f.talusCode) && hook.contains("hook pre-receive"))
    }

    @Test func aValidToolIsRecordedAtThePushedCommit() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        try f.write("tools/scan/talus-tool.json", toolManifest("scan", params: #"[{"name":"depth","type":"int","default":3,"description":"how deep"}]"#))
        try f.write("tools/scan/run.sh", "#!/bin/sh\necho scanning\n", executable: true)
        let (ok, output) = try await f.commitAndPush("add scan")
        #expect(ok, "\(output)")
        let commit = try await f.head()
        #expect(try await f.remoteCommit() == commit)
        #expect(output.contains("checked tools/scan"))
        let scan = try #require(try await f.store.find(name: "scan", commit: commit))
        #expect(scan.commit.count == 40)
        #expect(scan.manifest.params == [ToolParam(name: "depth", type: .int, description: "how deep", default: .int64(3))])
        let committed = try await GitRepository(path: f.bare).commitDate(commit)
        #expect(scan.committed == committed)
        // Every tool present at the commit is recorded there (history per commit).
        #expect(try await f.records(at: commit).count == 4)
        #expect(try await f.store.newest(name: "scan")?.commit == commit)
        // Recording the same commit again changes nothing (unique (name, kind, commit)).
        let before = try await f.allRecords().count
        _ = try await runCommand(f.talusCode, ["record", "--repository", f.bare], environment: f.env)
        #expect(try await f.allRecords().count == before)
    }

    @Test func anInvalidManifestIsRejectedWithTheFileNamedAndNothingRecorded() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let before = try await f.allRecords()
        let mainBefore = try await f.remoteCommit()
        try f.write("tools/bad/talus-tool.json", """
            {"name": "bad", "description": "broken", "entry": "./run.sh",
             "params": [{"name": "count", "type": "integer"}, {"name": "n", "type": "int", "default": "five"}],
             "paramz": []}
            """)
        try f.write("tools/bad/run.sh", "#!/bin/sh\n", executable: true)
        let (ok, output) = try await f.commitAndPush("add a broken tool")
        #expect(!ok)
        #expect(output.contains("push to main rejected"))
        #expect(output.contains("tools/bad/talus-tool.json: params[0].type: \"integer\" is not one of"))
        #expect(output.contains("tools/bad/talus-tool.json: params[1].default: must be an integer"))
        #expect(output.contains("tools/bad/talus-tool.json: paramz: unknown key \"paramz\""))
        #expect(output.contains("pre-receive hook declined"))
        #expect(try await f.remoteCommit() == mainBefore)
        #expect(try await f.allRecords() == before)
    }

    @Test func repositoryRulesAreEnforced() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let before = try await f.allRecords().count
        // Entry file not executable, unknown component, name not matching its directory.
        try f.write("tools/one/talus-tool.json", toolManifest("one", components: #"["nosuch"]"#))
        try f.write("tools/one/run.sh", "#!/bin/sh\n", executable: false)
        try f.write("tools/two/talus-tool.json", toolManifest("deux"))
        try f.write("tools/two/run.sh", "#!/bin/sh\n", executable: true)
        try f.write("tools/Hello/talus-tool.json", toolManifest("Hello"))
        try f.write("tools/Hello/run.sh", "#!/bin/sh\n", executable: true)
        var (ok, output) = try await f.commitAndPush("several problems")
        #expect(!ok)
        #expect(output.contains("tools/one/run.sh: the entry file is not executable"))
        #expect(output.contains("tools/one/talus-tool.json: component \"nosuch\" does not exist in this commit"))
        #expect(output.contains("tools/two/talus-tool.json: name \"deux\" does not match its directory \"two\""))
        #expect(output.contains("tools/Hello/: the name \"Hello\" is also used by tools/hello"))
        // A symbolic link out of the tool directory, and an absolute one.
        try await f.git(["reset", "--quiet", "--hard", "origin/main"])
        try f.write("tools/links/talus-tool.json", toolManifest("links"))
        try f.write("tools/links/run.sh", "#!/bin/sh\n", executable: true)
        try FileManager.default.createSymbolicLink(atPath: f.clone + "/tools/links/up", withDestinationPath: "../../components/toytarget/target.sh")
        try FileManager.default.createSymbolicLink(atPath: f.clone + "/tools/links/abs", withDestinationPath: "/etc/passwd")
        try FileManager.default.createSymbolicLink(atPath: f.clone + "/tools/links/ok", withDestinationPath: "run.sh")
        (ok, output) = try await f.commitAndPush("links")
        #expect(!ok)
        #expect(output.contains("tools/links/up: is a symbolic link to ../../components/toytarget/target.sh, which points outside tools/links/"))
        #expect(output.contains("tools/links/abs: is a symbolic link to the absolute path /etc/passwd"))
        #expect(!output.contains("tools/links/ok:"))
        #expect(try await f.allRecords().count == before)
    }

    @Test func renamingAToolRecordsTheNewNameOnly() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let first = try #require(try await f.remoteCommit())
        // A rename that forgets the manifest's name is refused...
        try await f.git(["mv", "tools/hello", "tools/greet"])
        var (ok, output) = try await f.commitAndPush("rename hello to greet")
        #expect(!ok)
        #expect(output.contains("tools/greet/talus-tool.json: name \"hello\" does not match its directory \"greet\""))
        // ...and accepted once the manifest follows.
        let manifest = try String(contentsOfFile: f.clone + "/tools/greet/talus-tool.json", encoding: .utf8)
        try f.write("tools/greet/talus-tool.json", manifest.replacingOccurrences(of: "\"name\": \"hello\"", with: "\"name\": \"greet\""))
        try await f.git(["add", "--all"])
        try await f.git(["commit", "--quiet", "--amend", "--no-edit"])
        (ok, output) = try await f.push()
        #expect(ok, "\(output)")
        let second = try await f.head()
        #expect(try await f.records(at: second).map(\.name) == ["toytarget", "greet", "toyfuzz"])
        #expect(try await f.store.newest(name: "greet")?.commit == second)
        // hello is not on main any more, but its recording at the first commit stays pinnable.
        #expect(try await f.store.newest(name: "hello") == nil)
        #expect(try await f.store.latestRecorded(name: "hello")?.commit == first)
    }

    @Test func deletingAToolIsAcceptedButDeletingAUsedComponentIsNot() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        try await f.git(["rm", "-r", "--quiet", "tools/hello"])
        var (ok, output) = try await f.commitAndPush("delete hello")
        #expect(ok, "\(output)")
        let commit = try await f.head()
        #expect(try await f.records(at: commit).map(\.name) == ["toytarget", "toyfuzz"])
        #expect(try await f.store.head()?.tools == ["toyfuzz"])

        let before = try await f.allRecords().count
        try await f.git(["rm", "-r", "--quiet", "components/toytarget"])
        (ok, output) = try await f.commitAndPush("delete toytarget")
        #expect(!ok)
        #expect(output.contains("tools/toyfuzz/talus-tool.json: component \"toytarget\" does not exist in this commit"))
        #expect(try await f.allRecords().count == before)
    }

    @Test func otherBranchesAreAcceptedUncheckedAndNeverRecorded() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let before = try await f.allRecords()
        try f.write("tools/wip/talus-tool.json", "{ not json yet")
        var (ok, output) = try await f.commitAndPush("work in progress", to: "feature/wip")
        #expect(ok, "\(output)")
        #expect(try await f.remoteCommit("refs/heads/feature/wip") == (try await f.head()))
        #expect(try await f.allRecords() == before)
        // Deleting that branch is fine; deleting main is not.
        (ok, output) = try await f.push(":refs/heads/feature/wip")
        #expect(ok, "\(output)")
        #expect(try await f.remoteCommit("refs/heads/feature/wip") == nil)
        (ok, output) = try await f.push(":refs/heads/main")
        #expect(!ok)
        #expect(output.contains("deleting main is refused"))
        #expect(try await f.remoteCommit() != nil)
        // Merging the branch into main with the manifest still broken is checked like any push.
        (ok, output) = try await f.push()
        #expect(!ok)
        #expect(output.contains("tools/wip/talus-tool.json: not valid JSON: line 1, column 3"))
    }

    @Test func pathsWithSpacesAreHandled() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        try f.write("tools/hello/inputs/my input file.txt", "hello\n")
        try f.write("tools/hello/talus-tool.json",
                    try String(contentsOfFile: f.clone + "/tools/hello/talus-tool.json", encoding: .utf8)
                        .replacingOccurrences(of: "The smallest", with: "Still the smallest"))
        var (ok, output) = try await f.commitAndPush("a file with spaces")
        #expect(ok, "\(output)")
        let commit = try await f.head()
        #expect(try await f.store.find(name: "hello", commit: commit)?.manifest.description.hasPrefix("Still") == true)
        let bundle = try await BundleBuilder.build(tool: "hello", from: try await CodeSnapshot.load(GitRepository(path: f.bare), commit: commit))
        #expect(try await tarListing(bundle.bytes).contains("tool/inputs/my input file.txt"))

        try f.write("tools/my tool/talus-tool.json", toolManifest("mytool"))
        try f.write("tools/my tool/run.sh", "#!/bin/sh\n", executable: true)
        (ok, output) = try await f.commitAndPush("a directory with spaces")
        #expect(!ok)
        #expect(output.contains("tools/my tool/: \"my tool\" is not a valid tool directory name"))
    }

    @Test func forcePushMovesTheRecordedHeadBack() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let first = try #require(try await f.remoteCommit())
        try f.write("tools/extra/talus-tool.json", toolManifest("extra"))
        try f.write("tools/extra/run.sh", "#!/bin/sh\n", executable: true)
        var (ok, output) = try await f.commitAndPush("extra")
        #expect(ok, "\(output)")
        #expect(try await f.store.newest(name: "extra") != nil)
        try await f.git(["reset", "--quiet", "--hard", first])
        try f.write("tools/hello/notes.txt", "rewritten history\n")
        (ok, output) = try await f.commitAndPush("rewrite", force: true)
        #expect(ok, "\(output)")
        let rewritten = try await f.head()
        #expect(try await f.store.head()?.commit == rewritten)
        #expect(try await f.store.newest(name: "extra") == nil)
        #expect(try await f.store.newest(name: "hello")?.commit == rewritten)
        // The dropped commit stays in the repository (a task may have pinned it), even after gc.
        let dropped = try #require(try await f.store.latestRecorded(name: "extra")?.commit)
        try await runCommand("git", ["--git-dir=" + f.bare, "gc", "--quiet", "--prune=now"], environment: f.env)
        let bundle = try await BundleBuilder.build(tool: "extra", from: try await CodeSnapshot.load(GitRepository(path: f.bare), commit: dropped))
        #expect(try await tarListing(bundle.bytes).contains("tool/run.sh"))
        // Those keep-alive refs are not the pusher's to change.
        (ok, output) = try await f.push(":refs/talus/recorded/\(dropped)")
        #expect(!ok)
        #expect(output.contains("refs/talus/recorded/\(dropped) is refused"))
        #expect(try await f.remoteCommit("refs/talus/recorded/\(dropped)") == dropped)
    }
}

/// `tar -tzf` of a bundle.
func tarListing(_ bytes: [UInt8], tar: String = "tar") async throws -> [String] {
    let dir = try TestEnvironment.scratchDirectory("tar")
    try Data(bytes).write(to: URL(fileURLWithPath: dir + "/b.tar.gz"))
    let args = tar == "tar" ? ["-tzf", dir + "/b.tar.gz"] : ["tar", "-tzf", dir + "/b.tar.gz"]
    let r = try await runCommand(tar == "tar" ? "tar" : "/usr/bin/busybox", args)
    return r.stdout.split(separator: "\n").map(String.init)
}
