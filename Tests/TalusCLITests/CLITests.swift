// The `talus` CLI as a subprocess against a live API: every resource's happy path (tables and
// --json parsed back), the exit codes, and the displays that follow the master's work (image
// import with VNC details, job watch) with the master simulated by writing its states directly.

import BSON
import Foundation
import Mongo
import TalusAPI
import TalusAPITestSupport
import TalusModel
import TalusTestSupport
import Testing

/// A logged-in CLI environment for one API.
struct CLIEnv {
    let api: APITestServer
    let home: String
    var env: [String: String] { ["HOME": home, "XDG_CONFIG_HOME": ""] }

    static func login(_ api: APITestServer, token: String? = nil) async throws -> CLIEnv {
        let home = try TestEnvironment.scratchDirectory("home")
        let cli = CLIEnv(api: api, home: home)
        let login = try await runTalus(["login", api.baseURL], env: cli.env, stdin: (token ?? api.adminToken) + "\n")
        #expect(login.status == 0, "\(login)")
        return cli
    }

    func run(_ args: [String], stdin: String? = nil) async throws -> CLIRun {
        try await runTalus(args, env: env, stdin: stdin)
    }

    /// Runs and expects exit 0, returning the run.
    func ok(_ args: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> CLIRun {
        let r = try await run(args)
        #expect(r.status == 0, "talus \(args.joined(separator: " ")): \(r)", sourceLocation: sourceLocation)
        return r
    }

    func start(_ args: [String]) throws -> RunningCLI { try RunningCLI(args, env: env) }

    var images: MongoCollection<BSONDocument> { api.database.collection("images") }
    var jobs: MongoCollection<BSONDocument> { api.database.collection("jobs") }
}

@Suite struct CLITests {
    @Test func loginStoresTheTokenPrivatelyAndExitCodesMeanWhatTheySay() async throws {
        let api = try await APITestServer.start("clilogin")
        do {
            let home = try TestEnvironment.scratchDirectory("home")
            let env = ["HOME": home]
            // Not logged in: usage (1), with what to do.
            let before = try await runTalus(["os", "list"], env: env)
            #expect(before.status == 1 && before.stderr.contains("talus login"))
            // A bad token is refused at login and nothing is saved.
            let refused = try await runTalus(["login", api.baseURL], env: env, stdin: "talus_wrong\n")
            #expect(refused.status == 2, "\(refused)")
            #expect(!FileManager.default.fileExists(atPath: home + "/.config/talus/config.json"))
            let login = try await runTalus(["login", api.baseURL], env: env, stdin: api.adminToken + "\n")
            #expect(login.status == 0 && login.stdout.contains("as root (admin)"), "\(login)")
            let path = home + "/.config/talus/config.json"
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            let saved = try #require(try JSONSerialization.jsonObject(with: FileManager.default.contents(atPath: path)!) as? [String: String])
            #expect(saved == ["url": api.baseURL, "token": api.adminToken])
            // Environment overrides the saved login.
            let wrongEnv = try await runTalus(["os", "list"], env: env.merging(["TALUS_TOKEN": "talus_nope"]) { $1 })
            #expect(wrongEnv.status == 2 && wrongEnv.stderr.contains("talus login"))
            let unreachable = try await runTalus(["os", "list"], env: env.merging(["TALUS_URL": "http://127.0.0.1:1"]) { $1 })
            #expect(unreachable.status == 3 && unreachable.stderr.contains("cannot reach"), "\(unreachable)")
            // Usage errors: 1; not found: 2; help: 0.
            #expect(try await runTalus(["job", "create"], env: env).status == 1)
            #expect(try await runTalus(["job", "frobnicate"], env: env).status == 1)
            let missing = try await runTalus(["image", "show", "nosuch"], env: env)
            #expect(missing.status == 2 && missing.stderr.contains("no image named nosuch"), "\(missing)")
            let help = try await runTalus(["--help"], env: env)
            #expect(help.status == 0 && help.stdout.contains("Exit codes"))
            // Slave tokens cannot use the CLI, and login says why.
            let (_, slave) = try await api.makeUser(role: .slave)
            let slaveLogin = try await runTalus(["login", api.baseURL], env: ["HOME": try TestEnvironment.scratchDirectory("home")], stdin: slave + "\n")
            #expect(slaveLogin.status == 2 && slaveLogin.stderr.contains("slave tokens"))
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func imageImportShowsProgressAndVNCThenWaitsForReady() async throws {
        let api = try await APITestServer.start("cliimport")
        do {
            let cli = try await CLIEnv.login(api)
            let os = try await cli.ok(["os", "create", "debian12", "--family", "linux", "--version", "12", "--json"])
            #expect(os.object?["name"] as? String == "debian12")
            let disk = cli.home + "/guest disk.qcow2"
            let bytes = Data((0..<(3 << 20)).map { _ in UInt8.random(in: 0...255) })
            FileManager.default.createFile(atPath: disk, contents: bytes)
            let importing = try cli.start(["image", "import", disk, "--os", "debian12", "--name", "guest", "--interval", "0.1"])
            // The master (simulated): the import VM comes up with VNC...
            let image = try await waitFor("the image to be requested") {
                try await cli.images.findOne(["name": "guest", "status.name": "import"])
            }
            let id = try #require(image["_id"]?.objectIdValue)
            let uploadId = try #require(image["request"]?["upload"]?.objectIdValue)
            let upload = try #require(try await api.database.collection("uploads", as: UploadDocument.self).findOne(["_id": .objectId(uploadId)]))
            #expect(upload.complete && upload.sha256 == sha256Hex(bytes))
            try await cli.images.updateOne(["_id": .objectId(id)], ["$set": [
                "status": ["name": "importing", "since": .datetime(bsonNow()),
                           "vnc": ["host": "192.0.2.10", "port": 5907, "password": "Xy12Ab34"]],
            ]])
            // ... the CLI shows it as soon as it is there ...
            try await waitUntil("the VNC details") { importing.stdout.contains("password: Xy12Ab34") }
            #expect(importing.stdout.contains("192.0.2.10:5907"))
            #expect(importing.process.isRunning)
            // ... and returns when the image is ready.
            try await cli.images.updateOne(["_id": .objectId(id)], ["$set": [
                "status": ["name": "ready", "since": .datetime(bsonNow())],
                "file": ["path": .string("\(id.hex).qcow2"), "format": "qcow2", "sha256": "ab12", "size": 4096],
            ]])
            let done = try await importing.finish()
            #expect(done.status == 0, "\(done)")
            #expect(done.stdout.contains("image guest is ready"))
            #expect(done.stderr.contains("uploading guest disk.qcow2") && done.stderr.contains("100%"), "\(done.stderr)")
            print("--- talus image import (stdout)\n\(done.stdout)--- (stderr)\n\(done.stderr)")

            // An import that fails ends with exit 4 and the master's reason; --json gives events.
            let broken = cli.home + "/broken.vmdk"
            FileManager.default.createFile(atPath: broken, contents: Data("not a disk".utf8))
            let failing = try cli.start(["image", "import", broken, "--os", "debian12", "--json", "--interval", "0.1"])
            let second = try await waitFor("the second image") { try await cli.images.findOne(["name": "broken", "status.name": "import"]) }
            try await cli.images.updateOne(["_id": second["_id"]!], ["$set": [
                "status": ["name": "error", "since": .datetime(bsonNow()), "reason": "qemu-img: not a disk image (format unknown)"],
            ]])
            let failed = try await failing.finish()
            #expect(failed.status == 4, "\(failed)")
            #expect(failed.stderr.contains("not a disk image"))
            let events = failed.jsonLines.compactMap { $0["event"] as? String }
            #expect(events.first == "uploaded" && events.contains("status"), "\(failed.stdout)")

            // List, show, derive, configure, delete.
            let list = try await cli.ok(["image", "list", "--json"])
            #expect(Set(list.array?.compactMap { $0["name"] as? String } ?? []) == ["guest", "broken"])
            let table = try await cli.ok(["image", "list"])
            #expect(table.stdout.contains("guest") && table.stdout.contains("ready") && table.stdout.contains("debian12"))
            let show = try await cli.ok(["image", "show", "guest"])
            #expect(show.stdout.contains("sha256:") && show.stdout.contains("ab12"))
            let child = try await cli.ok(["image", "create", "child", "--base", "guest", "--no-wait", "--json"])
            #expect((child.object?["status"] as? [String: Any])?["name"] as? String == "create")
            #expect(child.object?["base"] as? String == id.hex)
            let refused = try await cli.run(["image", "delete", "guest"])
            #expect(refused.status == 2 && refused.stderr.contains("child"), "\(refused)")
            #expect(try await cli.ok(["image", "delete", "child"]).stdout.contains("delete requested"))
            let configure = try await cli.ok(["image", "configure", "guest", "--no-wait"])
            #expect(configure.stdout.contains("configure requested"))
            #expect(try await cli.images.findOne(["_id": .objectId(id)])?["status"]?["name"]?.stringValue == "configure")
            // Ctrl-C while waiting leaves the work running and says how to follow it.
            let waiting = try cli.start(["image", "show", "guest", "--wait"])
            try await waitUntil("the CLI to wait") { waiting.stderr.contains("configure") }
            kill(waiting.pid, SIGINT)
            let interrupted = try await waiting.finish()
            #expect(interrupted.status == 130 && interrupted.stderr.contains("continues"), "\(interrupted)")
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func tasksJobsAndJobWatch() async throws {
        let api = try await APITestServer.start("clijobs")
        do {
            let cli = try await CLIEnv.login(api)
            let image = try await api.insertReadyImage(name: "guest", contents: Data("d".utf8), sha256: sha256Hex(Data("d".utf8)))
            let commit = String(repeating: "e", count: 40)
            try await api.database.collection("code", as: CodeDocument.self).insertOne(CodeDocument(
                name: "fuzz", kind: .tool, commit: commit, committed: Date(),
                manifest: ToolManifest(name: "fuzz", description: "a fuzzer", entry: "./run.sh", params: [
                    ToolParam(name: "corpus", type: .fileset, description: "seeds", required: true),
                    ToolParam(name: "iterations", type: .int, default: .int64(10)),
                ]), path: "tools/fuzz"))
            let codeList = try await cli.ok(["code", "list", "--json"])
            #expect(codeList.array?.first?["commit"] as? String == commit)
            let codeShow = try await cli.ok(["code", "show", "fuzz"])
            #expect(codeShow.stdout.contains("iterations") && codeShow.stdout.contains("fileset"))

            let task = try await cli.ok(["task", "create", "t1", "--tool", "fuzz", "--image", "guest", "--param", "corpus=seeds",
                                         "--limit", "3", "--json"])
            #expect(task.object?["tool_commit"] as? String == commit)
            #expect((task.object?["params"] as? [String: Any])?["corpus"] as? String == "seeds")
            #expect(try await cli.ok(["task", "list"]).stdout.contains("t1"))
            #expect(try await cli.ok(["task", "show", "t1", "--json"]).object?["image"] as? String == image.hex)
            let badParam = try await cli.run(["job", "create", "t1", "--param", "iterations=lots"])
            #expect(badParam.status == 2 && badParam.stderr.contains("iterations"), "\(badParam)")

            let job = try await cli.ok(["job", "create", "t1", "--priority", "70", "--param", "iterations=5", "--json"])
            let jobId = try #require(job.object?["_id"] as? String)
            #expect((job.object?["params"] as? [String: Any])?["iterations"] as? Int == 5)
            #expect(job.object?["priority"] as? Int == 70)
            #expect(try await cli.ok(["job", "list", "--json"]).array?.count == 1)
            #expect(try await cli.ok(["job", "show", jobId]).stdout.contains("0/3"))

            // job watch follows the (simulated) master until the job finishes.
            let watching = try cli.start(["job", "watch", jobId, "--interval", "0.1"])
            let oid = BSONValue.objectId(ObjectId(jobId)!)
            try await cli.jobs.updateOne(["_id": oid], ["$set": ["status.name": "running", "progress": 1,
                                                                 "parts": ["queued": 1, "running": 2, "done": 1, "failed": 0]]])
            try await waitUntil("the first progress line") { watching.stdout.contains("1/3") }
            try await cli.jobs.updateOne(["_id": oid], ["$set": ["progress": 2, "parts": ["queued": 0, "running": 1, "done": 2, "failed": 0]],
                                                         "$push": ["errors": ["idx": 4, "reason": "VM did not boot", "at": .datetime(bsonNow())]]])
            try await waitUntil("the second progress line") { watching.stdout.contains("2/3") }
            // Decided while a part is still stopping: the watch waits for it before its last line.
            try await cli.jobs.updateOne(["_id": oid], ["$set": ["status.name": "finished", "progress": 3,
                                                                 "parts": ["queued": 0, "running": 1, "done": 2, "failed": 0]]])
            try await waitUntil("the finished line with a part still running") { watching.stdout.contains("finished  parts q0 r1 d2") }
            #expect(watching.isRunning && !watching.stdout.contains("finished: 3/3"), "\(watching.stdout)")
            try await cli.jobs.updateOne(["_id": oid], ["$set": ["parts": ["queued": 0, "running": 0, "done": 3, "failed": 0]]])
            let watched = try await watching.finish()
            #expect(watched.status == 0, "\(watched)")
            #expect(watched.stdout.contains("finished: 3/3") && watched.stdout.contains("VM did not boot"))
            print("--- talus job watch\n\(watched.stdout)")

            // Cancel; a watch of a cancelled job ends with 4.
            let second = try await cli.ok(["job", "create", "t1", "--json"])
            let secondId = try #require(second.object?["_id"] as? String)
            #expect(try await cli.ok(["job", "cancel", secondId]).stdout.contains("cancel requested"))
            #expect(try await cli.jobs.findOne(["_id": .objectId(ObjectId(secondId)!)])?["status"]?["name"]?.stringValue == "cancel")
            try await cli.jobs.updateOne(["_id": .objectId(ObjectId(secondId)!)], ["$set": ["status.name": "cancelled"]])
            let watchCancelled = try await cli.run(["job", "watch", secondId, "--json"])
            #expect(watchCancelled.status == 4 && watchCancelled.jsonLines.last?["status"] as? String == "cancelled", "\(watchCancelled)")
            #expect(try await cli.run(["job", "cancel", secondId]).status == 2)
            #expect(try await cli.ok(["task", "delete", "t1"]).status == 0)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func resultsCrashesFilesFilesetsByteExact() async throws {
        let api = try await APITestServer.start("clifiles")
        do {
            let cli = try await CLIEnv.login(api)
            // Binary files: every byte value, and random bytes (invalid UTF-8 included).
            let a = cli.home + "/all-bytes.bin", b = cli.home + "/random.bin"
            let aBytes = Data((0..<70_000).map { UInt8($0 % 256) })
            let bBytes = Data((0..<300_000).map { _ in UInt8.random(in: 0...255) })
            FileManager.default.createFile(atPath: a, contents: aBytes)
            FileManager.default.createFile(atPath: b, contents: bBytes)
            let uploaded = try await cli.ok(["file", "upload", a, b, "--tag", "corpus", "--json"])
            let ids = try #require(uploaded.array?.compactMap { $0["_id"] as? String })
            #expect(ids.count == 2)
            #expect(try await cli.ok(["file", "list", "--json"]).array?.count == 2)
            let out = cli.home + "/back.bin"
            let got = try await cli.ok(["file", "get", ids[1], "-o", out, "--json"])
            #expect(got.object?["sha256"] as? String == sha256Hex(bBytes))
            #expect(FileManager.default.contents(atPath: out) == bBytes)

            let set = try await cli.ok(["fileset", "create", "seeds", ids[0], ids[1], "--json"])
            #expect((set.object?["files"] as? [Any])?.count == 2)
            #expect(try await cli.ok(["fileset", "list"]).stdout.contains("seeds"))
            #expect(try await cli.ok(["fileset", "show", "seeds"]).stdout.contains("all-bytes.bin"))
            #expect(try await cli.run(["file", "delete", ids[0]]).status == 2)  // in a fileset
            #expect(try await cli.ok(["fileset", "delete", "seeds"]).status == 0)

            // Results and crashes written by the (simulated) master.
            let job = ObjectId()
            let file = try #require(try await api.database.collection("files.files", as: StoredFileDocument.self).findOne(["_id": .objectId(ObjectId(ids[0])!)]))
            let result = ResultDocument(job: job, idx: 2, run: "run-1", tool: "fuzz", type: "coverage", data: ["edges": 1234], files: [file.ref])
            try await api.database.collection("results", as: ResultDocument.self).insertOne(result)
            let results = try await cli.ok(["result", "list", "--job", job.hex, "--json"])
            #expect(results.array?.first?["type"] as? String == "coverage")
            #expect(try await cli.ok(["result", "show", result.id.hex]).stdout.contains("edges"))
            // (CrashDocument has no public memberwise init: written as the master writes it.)
            let samples = try BSONEncoder().encodeValue([
                CrashSample(job: job, idx: 2, run: "run-1", data: ["pc": "0x4011"], file: file.ref),
                CrashSample(job: job, idx: 3, run: "run-2", data: [:]),
            ])
            let now = BSONValue.datetime(bsonNow())
            let crash = try BSONDecoder().decode(CrashDocument.self, from: [
                "_id": .objectId(ObjectId()), "schema": 1, "job": .objectId(job), "tool": "fuzz", "bucket": "SEGV in parse_header",
                "first_seen": now, "last_seen": now, "count": 7, "samples": samples, "created": now, "updated": now, "tags": [],
            ])
            try await api.database.collection("crashes", as: CrashDocument.self).insertOne(crash)
            #expect(try await cli.ok(["crash", "list", "--json"]).array?.first?["count"] as? Int == 7)
            #expect(try await cli.ok(["crash", "show", crash.id.hex]).stdout.contains("SEGV in parse_header"))
            let export = try await cli.ok(["crash", "export", crash.id.hex, "--dest", cli.home, "--json"])
            let exported = try #require(export.object?["files"] as? [String])
            #expect(exported.count == 1)
            #expect(FileManager.default.contents(atPath: exported[0]) == aBytes)
            let crashJSON = try #require(FileManager.default.contents(atPath: cli.home + "/crash-\(crash.id.hex)/crash.json"))
            #expect(String(decoding: crashJSON, as: UTF8.self).contains("parse_header"))
            #expect(try await cli.ok(["file", "delete", ids[0]]).stdout.contains("deleted"))
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func slavesTokensUsersAndOS() async throws {
        let api = try await APITestServer.start("cliadmin")
        do {
            let cli = try await CLIEnv.login(api)
            let now = BSONValue.datetime(bsonNow())
            let slave = try BSONDecoder().decode(SlaveDocument.self, from: [
                "_id": .objectId(ObjectId()), "schema": 1, "uuid": "u-1", "hostname": "hv1", "address": "10.0.0.5",
                "capacity": ["vms": 8, "memory_mb": 32768], "running": [], "last_heartbeat": now, "version": "1.0",
                "status": ["name": "online", "since": now], "created": now, "updated": now, "tags": [],
            ])
            try await api.database.collection("slaves", as: SlaveDocument.self).insertOne(slave)
            #expect(try await cli.ok(["slave", "list", "--json"]).array?.first?["hostname"] as? String == "hv1")
            #expect(try await cli.ok(["slave", "show", "hv1"]).stdout.contains("8 VMs"))
            #expect(try await cli.ok(["slave", "drain", "hv1"]).stdout.contains("drain requested"))
            let drained = try await api.database.collection("slaves").findOne(["_id": .objectId(slave.id)])
            #expect(drained?["status"]?["name"]?.stringValue == "drain")

            let user = try await cli.ok(["user", "create", "alice", "--role", "user", "--json"])
            #expect(user.object?["role"] as? String == "user")
            #expect(try await cli.ok(["user", "list"]).stdout.contains("alice"))
            let token = try await cli.ok(["token", "create", "alice-laptop", "--user", "alice", "--json"])
            let secret = try #require(token.object?["token"] as? String)
            // Alice logs in elsewhere and cannot do admin things: exit 2 with a reason.
            let alice = try await CLIEnv.login(api, token: secret)
            let denied = try await alice.run(["user", "list"])
            #expect(denied.status == 2 && denied.stderr.contains("admin"), "\(denied)")
            #expect(try await alice.ok(["user", "show", "me"]).stdout.contains("alice"))
            let tokens = try await cli.ok(["token", "list", "--json"])
            #expect(tokens.array?.allSatisfy { $0["token"] == nil && $0["prefix"] != nil } == true)
            let tokenId = try #require(token.object?["_id"] as? String)
            #expect(try await cli.ok(["token", "revoke", tokenId]).status == 0)
            #expect(try await alice.run(["os", "list"]).status == 2)
            #expect(try await cli.ok(["user", "update", "alice", "--disable", "--json"]).object?["disabled"] as? Bool == true)
            #expect(try await cli.ok(["user", "delete", "alice"]).status == 0)

            #expect(try await cli.ok(["os", "create", "win10-x64", "--family", "windows", "--arch", "x86_64"]).status == 0)
            #expect(try await cli.ok(["os", "list"]).stdout.contains("win10-x64"))
            #expect(try await cli.ok(["os", "show", "win10-x64", "--json"]).object?["family"] as? String == "windows")
            #expect(try await cli.ok(["os", "delete", "win10-x64"]).status == 0)
            #expect(try await cli.ok(["os", "list", "--json"]).array?.isEmpty == true)
        } catch { await api.stop(); throw error }
        await api.stop()
    }
}
