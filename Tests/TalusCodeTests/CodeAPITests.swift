import BSON
import Foundation
import Mongo
import NIOHTTP1
import Testing
import TalusAPI
import TalusAPITestSupport
import TalusCode
import TalusCore
import TalusModel
import TalusTestSupport

/// The code repository through the real API (and the built `talus` CLI): bundles by name and
/// commit with tokens, the recorded head, tasks pinning commits, `talus code` and `talus tool`.
@Suite struct CodeAPITests {
    /// An API over the fixture's repository and database.
    static func api(_ f: CodeRepositoryFixture) async throws -> APITestServer {
        let cache = try TestEnvironment.scratchDirectory("bundle-cache")
        return try await APITestServer.start("codeapi") { config in
            config.database = f.databaseName
            config.codeRepository = f.bare
            config.bundleCache = cache
        }
    }

    @Test func bundlesAreServedByNameAndCommitToSlavesAndUsers() async throws {
        let f = try await CodeRepositoryFixture.make()
        let api = try await Self.api(f)
        do {
            let (_, slave) = try await api.makeUser(role: .slave)
            let (_, user) = try await api.makeUser(role: .user)
            let a = try #require(try await f.remoteCommit())
            let head = try await api.request(.GET, "/api/v1/code/head", token: user)
            #expect(head.status == 200)
            #expect(head.object?["commit"] as? String == a)
            #expect(head.object?["tools"] as? [String] == ["hello", "toyfuzz"])

            let bundle = try await api.request(.GET, "/api/v1/code/toyfuzz/bundle?commit=\(a)", token: slave)
            #expect(bundle.status == 200, "\(bundle.text)")
            #expect(bundle.header("Content-Type") == "application/gzip")
            #expect(bundle.header("X-Talus-Commit") == a)
            let sha = try #require(bundle.header("X-Talus-SHA256"))
            #expect(sha256Hex(bundle.body) == sha)
            #expect(bundle.header("ETag") == "\"\(sha)\"")
            #expect(try await tarListing(Array(bundle.body)).contains("components/toytarget/target.sh"))
            #expect(try await api.request(.GET, "/api/v1/code/toyfuzz/bundle", token: user).header("X-Talus-SHA256") == sha)
            let again = try await api.request(.GET, "/api/v1/code/toyfuzz/bundle?commit=\(a)", token: slave, headers: [("If-None-Match", "\"\(sha)\"")])
            #expect(again.status == 304)
            // Slaves fetch bundles but read nothing else; nobody gets in without a token.
            #expect(try await api.request(.GET, "/api/v1/code/toyfuzz/bundle?commit=\(a)", token: nil).status == 401)
            #expect(try await api.request(.GET, "/api/v1/code/head", token: slave).status == 403)
            #expect(try await api.request(.GET, "/api/v1/code", token: slave).status == 403)

            for (query, status, words) in [("commit=HEAD", 400, "full commit id"), ("commit=\(a.prefix(12))", 400, "full commit id"),
                                           ("commit=" + String(repeating: "0", count: 40), 404, "not recorded at commit"),
                                           ("commit=\(a.uppercased())", 400, "full commit id")] {
                let r = try await api.request(.GET, "/api/v1/code/toyfuzz/bundle?\(query)", token: user)
                #expect(r.status == status, "\(query): \(r.text)")
                #expect(r.header("Content-Type") == "application/problem+json")
                #expect((r.object?["detail"] as? String)?.contains(words) == true, "\(query): \(r.text)")
            }
            for path in ["/api/v1/code/nosuch/bundle", "/api/v1/code/toytarget/bundle", "/api/v1/code/..%2F..%2Fetc/bundle",
                         "/api/v1/code/%2Fetc%2Fpasswd/bundle"] {
                #expect(try await api.request(.GET, path, token: user).status == 404, "\(path)")
            }
        } catch {
            Issue.record(error)
        }
        await api.stop()
        await f.close()
    }

    @Test func aTaskPinnedToACommitKeepsItsBundleAfterANewPush() async throws {
        let f = try await CodeRepositoryFixture.make()
        let api = try await Self.api(f)
        do {
            let (_, user) = try await api.makeUser(role: .user)
            let image = try await api.insertReadyImage(contents: Data("d".utf8), sha256: sha256Hex(Data("d".utf8)))
            let a = try #require(try await f.remoteCommit())
            let taskA = try await api.request(.POST, "/api/v1/tasks", token: user, json: ["name": "fuzz-a", "tool": "toyfuzz", "image": image.hex])
            #expect(taskA.status == 201, "\(taskA.text)")
            #expect(taskA.object?["tool_commit"] as? String == a)
            let shaA = try #require(try await api.request(.GET, "/api/v1/code/toyfuzz/bundle?commit=\(a)", token: user).header("X-Talus-SHA256"))

            // B changes the fuzzer and deletes hello.
            let fuzz = try String(contentsOfFile: f.clone + "/tools/toyfuzz/fuzz.sh", encoding: .utf8)
            try f.write("tools/toyfuzz/fuzz.sh", fuzz.replacingOccurrences(of: "toyfuzz: ", with: "toyfuzz B: "), executable: true)
            try await f.git(["rm", "-r", "--quiet", "tools/hello"])
            let (ok, output) = try await f.commitAndPush("B")
            #expect(ok, "\(output)")
            let b = try await f.head()

            // The task still names A, and A's bundle is still A's, byte for byte.
            let task = try await api.request(.GET, "/api/v1/tasks/\(try #require(taskA.object?["_id"] as? String))", token: user)
            #expect(task.object?["tool_commit"] as? String == a)
            let bundleA = try await api.request(.GET, "/api/v1/code/toyfuzz/bundle?commit=\(a)", token: user)
            #expect(bundleA.header("X-Talus-SHA256") == shaA && sha256Hex(bundleA.body) == shaA)
            let newest = try await api.request(.GET, "/api/v1/code/toyfuzz/bundle", token: user)
            #expect(newest.header("X-Talus-Commit") == b)
            #expect(newest.header("X-Talus-SHA256") != shaA)
            // New tasks pin B; hello is gone from main but can still be pinned at A explicitly.
            let taskB = try await api.request(.POST, "/api/v1/tasks", token: user, json: ["name": "fuzz-b", "tool": "toyfuzz", "image": image.hex])
            #expect(taskB.object?["tool_commit"] as? String == b)
            let gone = try await api.request(.POST, "/api/v1/tasks", token: user, json: ["name": "hello-b", "tool": "hello", "image": image.hex])
            #expect(gone.status == 422)
            #expect((gone.object?["detail"] as? String)?.contains("not on the main branch any more; it was last recorded at \(a)") == true, "\(gone.text)")
            let pinned = try await api.request(.POST, "/api/v1/tasks", token: user, json: [
                "name": "hello-a", "tool": "hello", "tool_commit": a, "image": image.hex, "params": ["name": "Talus"]])
            #expect(pinned.status == 201, "\(pinned.text)")
            let unrecorded = try await api.request(.POST, "/api/v1/tasks", token: user, json: [
                "name": "hello-x", "tool": "hello", "tool_commit": String(repeating: "b", count: 40), "image": image.hex])
            #expect(unrecorded.status == 422)
            #expect(unrecorded.problemFields == ["tool_commit"])
        } catch {
            Issue.record(error)
        }
        await api.stop()
        await f.close()
    }

    /// A tree with a path trick, recorded as if pushed before the hook existed: the endpoint
    /// refuses it with a clear message instead of packing it.
    @Test func theEndpointRefusesTreesWithPathTricks() async throws {
        let f = try await CodeRepositoryFixture.make()
        let api = try await Self.api(f)
        do {
            let repo = GitRepository(path: f.bare)
            let manifest = toolManifest("evil")
            let cases: [([PlumbEntry], String)] = [
                ([.blob("tools/evil/data", "/etc/passwd", mode: "120000")], "tools/evil/data is a symbolic link to the absolute path /etc/passwd"),
                ([.blob("tools/evil/data", "../../../../etc/passwd", mode: "120000")], "tools/evil/data is a symbolic link to ../../../../etc/passwd, which points outside tools/evil/"),
                ([.blob("tools/evil/../../escape", "x")], "tools/evil/../../escape the path has an empty"),
            ]
            for (extra, message) in cases {
                let commit = try await plumbCommit(repo, [.blob("tools/evil/talus-tool.json", manifest), .blob("tools/evil/run.sh", "#!/bin/sh\n", mode: "100755")] + extra)
                _ = try await f.store.code.insertOne(CodeDocument(name: "evil", kind: .tool, commit: commit, committed: Date(),
                                                                  manifest: try JSONDecoder().decode(ToolManifest.self, from: Data(manifest.utf8)),
                                                                  path: "tools/evil"))
                let r = try await api.request(.GET, "/api/v1/code/evil/bundle?commit=\(commit)", token: api.adminToken)
                #expect(r.status == 422, "\(r.text)")
                #expect((r.object?["detail"] as? String)?.contains(message) == true, "\(r.text)")
                #expect(r.header("X-Talus-SHA256") == nil)
            }
        } catch {
            Issue.record(error)
        }
        await api.stop()
        await f.close()
    }

    @Test func codeListAndShowThroughTheCLI() async throws {
        let f = try await CodeRepositoryFixture.make()
        let api = try await Self.api(f)
        do {
            let env = ["TALUS_URL": api.baseURL, "TALUS_TOKEN": api.adminToken, "HOME": f.dir]
            let a = try #require(try await f.remoteCommit())
            try await f.git(["rm", "-r", "--quiet", "tools/hello"])
            let (ok, output) = try await f.commitAndPush("remove hello")
            #expect(ok, "\(output)")
            let b = try await f.head()

            let list = try await runTalus(["code", "list"], env: env)
            #expect(list.status == 0, "\(list)")
            #expect(list.stdout.contains("toyfuzz") && list.stdout.contains("iterations,seed,target") && !list.stdout.contains("hello"), "\(list)")
            let all = try await runTalus(["code", "list", "--all", "--json"], env: env)
            #expect(Set((all.array ?? []).compactMap { $0["name"] as? String }) == ["hello", "toyfuzz", "toytarget"], "\(all)")

            let show = try await runTalus(["code", "show", "toyfuzz"], env: env)
            #expect(show.status == 0, "\(show)")
            #expect(show.stdout.contains("commit:") && show.stdout.contains(b) && show.stdout.contains(a))
            #expect(show.stdout.contains("seed") && show.stdout.contains("component") && show.stdout.contains("toytarget"))
            let old = try await runTalus(["code", "show", "hello", "--commit", String(a.prefix(10)), "--json"], env: env)
            #expect(old.object?["commit"] as? String == a, "\(old)")
            #expect((old.object?["commits"] as? [[String: Any]])?.count == 1)
            let missing = try await runTalus(["code", "show", "toyfuzz", "--commit", "0000000"], env: env)
            #expect(missing.status == 2 && missing.stderr.contains("not recorded at a commit 0000000"), "\(missing)")
        } catch {
            Issue.record(error)
        }
        await api.stop()
        await f.close()
    }

    /// `talus tool run-local` as a user runs it: the built CLI, human output and JSON lines.
    @Test func runLocalReportsTheToyfuzzCrash() async throws {
        let root = try TestEnvironment.repositoryRoot() + "/code-template"
        let work = try TestEnvironment.scratchDirectory("runlocal")
        let human = try await runTalus(["tool", "run-local", root + "/tools/toyfuzz", "--work", work], env: [:])
        #expect(human.status == 0, "\(human)")
        #expect(human.stdout.contains("talus: running toyfuzz with {\"iterations\": 8, \"seed\": 10, \"target\": \"toytarget\"} and components toytarget"), "\(human)")
        #expect(human.stdout.contains("crash toytarget: stack-buffer-overflow in copy_field sample: crash-3.txt"), "\(human)")
        #expect(human.stdout.contains("[stdout] iteration 3: input 0, new line len=8: CRASH"), "\(human)")
        #expect(human.stdout.contains("progress: 8"))
        #expect(human.stdout.contains("    \(work)/output/crash-3.txt"))
        #expect(try String(contentsOfFile: work + "/output/crash-3.txt", encoding: .utf8).contains("len=8"))

        let json = try await runTalus(["tool", "run-local", root + "/tools/toyfuzz", "--param", "iterations=4", "--param", "seed=3", "--json"], env: [:])
        #expect(json.status == 0, "\(json)")
        let lines = json.jsonLines
        #expect(lines.first?["type"] as? String == "start")
        #expect(lines.filter { $0["type"] as? String == "progress" }.count == 4)
        let crash = try #require(lines.first { $0["type"] as? String == "crash" })
        #expect(crash["file"] as? String == "crash-2.txt")
        let summary = try #require(lines.last)
        #expect(summary["type"] as? String == "summary" && summary["progress"] as? Int == 4 && summary["exit_code"] as? Int == 0)

        // Problems a push would be refused for stop the run; the tool's status is the CLI's.
        let bad = try await runTalus(["tool", "run-local", root + "/tools/toyfuzz", "--param", "iterations=many"], env: [:])
        #expect(bad.status == 1 && bad.stderr.contains("parameter \"iterations\" must be an integer (got many)"), "\(bad)")
        let dir = try TestEnvironment.scratchDirectory("failing") + "/failing"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try toolManifest("failing").write(toFile: dir + "/talus-tool.json", atomically: true, encoding: .utf8)
        try "#!/bin/sh\nexit 7\n".write(toFile: dir + "/run.sh", atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir + "/run.sh")
        let failing = try await runTalus(["tool", "run-local", dir], env: [:])
        #expect(failing.status == 7, "\(failing)")
        #expect(failing.stdout.contains("failing: the tool exited with status 7"))
    }
}
