// End to end (issue 7, item 4): the built talus-api, talus-master, two talus-slave processes,
// talus-code and the talus CLI against the shared SecantusDB, RabbitMQ and libvirtd, with real
// QEMU (TCG) guests. One cluster for the whole scenario, to keep the number of VM boots small:
//   1. a code repository pushed with plain git, the test guest imported through the CLI, a toyfuzz
//      job with limit 6 that finishes with progress 6, results and one crash bucket whose samples
//      are byte-exact what toyfuzz writes;
//   2. kill -9 of a slave while its part runs: the part is redelivered to the other slave, the job
//      finishes exactly at its limit, and no domain of the killed slave remains after its restart;
//   3. cancel of a running job: every VM of the job is gone within 10 s, the job is `cancelled`.
// Hanging tools, bad guest frames and corrupted cached images are covered at the slave level
// (TalusSlaveTests: PartRunnerTests, GuestSessionTests, FileCacheTests).

import BSON
import Foundation
import Mongo
import TalusCore
import TalusModel
import TalusTestSupport
import Testing

@Suite("end to end", .serialized, .timeLimit(.minutes(30)))
struct EndToEndTests {
    /// The toyfuzz parameters of the job: seed 1 finds the planted crash in the first iteration.
    static let fuzzParams = ["iterations": 3, "seed": 1]

    @Test func importRunKillAndCancelThroughTheRealDaemons() async throws {
        let started = ContinuousClock.now
        let cluster = try await Cluster.start()
        note("cluster up (API, master, two slaves online) in \(seconds(ContinuousClock.now - started))")
        var passed = false
        defer { if !passed { note("FAILED: daemon logs\n\(cluster.logTails())") } }
        do {
            let image = try await setUpCodeAndImage(cluster)
            try await fuzzJobFinishesWithResultsAndAByteExactCrash(cluster, image: image)
            try await killedSlaveLosesNothing(cluster, image: image)
            try await cancelStopsEveryVMWithinTenSeconds(cluster, image: image)
            passed = true
        } catch {
            note("FAILED: \(error)\n\(cluster.logTails())")
            await cluster.shutDown(keepFiles: true)
            throw error
        }
        await cluster.shutDown(keepFiles: false)
        note("whole scenario: \(seconds(ContinuousClock.now - started))")
    }

    // MARK: Code repository and image

    /// Creates the code repository, pushes the template tools (and a test tool that sleeps), and
    /// imports the test guest through the CLI. Returns the image id.
    func setUpCodeAndImage(_ c: Cluster) async throws -> String {
        let root = try TestEnvironment.repositoryRoot()
        let talusCode = try TestEnvironment.executable("talus-code")
        let emptyTemplate = c.dir + "/empty-template"
        try FileManager.default.createDirectory(atPath: emptyTemplate + "/tools", withIntermediateDirectories: true)
        try await runCommand(talusCode, ["init", "--config", c.dir + "/code.yaml", c.dir + "/code.git", "--template", emptyTemplate],
                             timeout: .seconds(120))
        let gitEnv = ["HOME": c.home, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "E2E", "GIT_AUTHOR_EMAIL": "e2e@example.org",
                      "GIT_COMMITTER_NAME": "E2E", "GIT_COMMITTER_EMAIL": "e2e@example.org"]
        let work = c.dir + "/work"
        func git(_ args: [String]) async throws -> CommandResult {
            try await runCommand("git", args, workingDirectory: work, environment: gitEnv, timeout: .seconds(120))
        }
        try await runCommand("git", ["clone", "--quiet", c.dir + "/code.git", work], environment: gitEnv, timeout: .seconds(120))
        for sub in ["tools", "components"] {
            try await runCommand("cp", ["-R", root + "/code-template/" + sub, work + "/"], timeout: .seconds(30))
        }
        // A tool that says it sleeps, sleeps, then reports one progress unit: parts that run long
        // enough to be killed or cancelled.
        let sleeper = work + "/tools/e2e-sleep"
        try FileManager.default.createDirectory(atPath: sleeper, withIntermediateDirectories: true)
        try """
            {
              "name": "e2e-sleep",
              "description": "End-to-end test tool: sleeps, then reports one progress unit and a result.",
              "entry": "./run.sh",
              "params": [{"name": "seconds", "type": "int", "default": 10, "description": "How long to sleep."}],
              "timeout": 7200
            }
            """.write(toFile: sleeper + "/talus-tool.json", atomically: true, encoding: .utf8)
        try """
            #!/bin/sh
            set -eu
            s=$(sed -n 's/.*"seconds"[[:space:]]*:[[:space:]]*\\([0-9][0-9]*\\).*/\\1/p' "$TALUS_PARAMS" | head -n 1)
            echo "e2e-sleep: sleeping ${s:-10}s"
            sleep "${s:-10}"
            printf '{"type":"progress","amount":1}\\n' >> "$TALUS_EVENTS"
            printf '{"type":"result","kind":"slept","data":{"seconds":%s}}\\n' "${s:-10}" >> "$TALUS_EVENTS"

            """.write(toFile: sleeper + "/run.sh", atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: sleeper + "/run.sh")
        try await git(["add", "--all"])
        try await git(["commit", "--quiet", "-m", "tools: hello, toyfuzz, toytarget, e2e-sleep"])
        let push = try await git(["push", "origin", "HEAD:refs/heads/main"])
        #expect((push.stdout + push.stderr).contains("recorded"), "the post-receive hook records the tools: \(push)")
        let code = try await c.json(["code", "list"], as: [CodeDocument].self)
        #expect(Set(code.map(\.name)).isSuperset(of: ["hello", "toyfuzz", "toytarget", "e2e-sleep"]), "\(code.map(\.name))")

        // The test guest, powering itself off 3 s after it is up when booted without a config
        // ISO: the import session ends by itself.
        try await c.ok(["os", "create", "e2e-linux", "--family", "linux", "--json"])
        let disk = c.dir + "/e2e-guest.qcow2"
        try FileManager.default.copyItem(atPath: c.guest.image, toPath: disk)
        try await runCommand(root + "/images/set-poweroff-after.sh", [disk, "3"], timeout: .seconds(120))
        let importStarted = ContinuousClock.now
        let imported = try await c.cli(["image", "import", disk, "--os", "e2e-linux", "--name", "e2e-guest", "--cpus", "1",
                                        "--memory-mb", "256", "--json"], timeout: .seconds(420))
        let importTook = ContinuousClock.now - importStarted
        note("phase import (upload, boot, guest powers off, commit, ready): \(seconds(importTook))")
        try #require(imported.status == 0, "talus image import: \(imported)")
        let events = imported.jsonLines.compactMap { $0["event"] as? String ?? $0["type"] as? String }
        #expect(events.contains("vnc"), "the import printed the VNC details: \(imported.stdout)")
        let shown = try await c.json(["image", "show", "e2e-guest"], as: ImageDocument.self)
        #expect(shown.status.name == .ready, "\(shown.status)")
        #expect(shown.file?.sha256?.count == 64)
        #expect(try await c.libvirt.listDomains(ownerPrefix: "image:").filter { $0.owner.hasSuffix("@" + c.database) }.isEmpty,
                "the import VM is gone")
        return shown.id.hex
    }

    // MARK: 1. A toyfuzz job

    func fuzzJobFinishesWithResultsAndAByteExactCrash(_ c: Cluster, image: String) async throws {
        var args = ["task", "create", "toy", "--tool", "toyfuzz", "--image", image, "--limit", "6",
                    "--cpus", "1", "--memory-mb", "256", "--timeout", "600", "--json"]
        for (k, v) in Self.fuzzParams { args += ["--param", "\(k)=\(v)"] }
        try await c.ok(args)
        let jobStarted = ContinuousClock.now
        let job = try await c.json(["job", "create", "toy", "--limit", "6", "--name", "toy-1"], as: JobDocument.self)
        let id = job.id.hex
        let finished = try await waitForJob(c, id, timeout: .seconds(600))
        note("phase job (toyfuzz, limit 6, 2 slaves × 1 VM): \(seconds(ContinuousClock.now - jobStarted)); parts \(finished.parts)")
        #expect(finished.status.name == .finished, "\(finished.status)")
        #expect(finished.progress == 6)
        // The job ends as soon as its progress reaches the limit; the runs end right after.
        try await waitUntil("every run of the toyfuzz job to end", timeout: .seconds(120)) {
            try await runs(c, job: finished.id).allSatisfy { $0.state != .running }
        }
        let fuzzRuns = try await runs(c, job: finished.id)
        // A run still going when the limit was reached ends `cancelled` with what it reported.
        #expect(fuzzRuns.filter { [.finished, .cancelled].contains($0.state) }.map(\.progress).reduce(0, +) >= 6,
                "\(fuzzRuns.map { ($0.idx, $0.state, $0.progress, $0.reason ?? "") })")

        let results = try await c.json(["result", "list", "--job", id, "--all"], as: [ResultDocument].self)
        #expect(!results.isEmpty, "toyfuzz reports a stats result per finished part")
        #expect(results.allSatisfy { $0.tool == "toyfuzz" })
        #expect(results.contains { $0.data["iterations"]?.intValue == 3 && $0.data["seed"]?.intValue == 1 }, "\(results.map(\.data))")

        let crashes = try await c.json(["crash", "list", "--job", id, "--all"], as: [CrashDocument].self)
        try #require(crashes.count == 1, "one bucket for the one planted bug: \(crashes.map(\.bucket))")
        let crash = crashes[0]
        #expect(crash.bucket.contains("stack-buffer-overflow"), "\(crash.bucket)")
        #expect(!crash.samples.isEmpty)

        // The samples, exported by the CLI, are byte for byte what toyfuzz writes for these
        // parameters (it is deterministic): run it here with the same contract.
        let expected = try await localToyfuzzCrash(c)
        let export = c.dir + "/crash-export"
        try await c.ok(["crash", "export", crash.id.hex, "--dest", export])
        let files = try exportedSamples(export)
        #expect(files.count == crash.samples.count, "\(files)")
        for file in files {
            #expect(FileManager.default.contents(atPath: file) == expected, "sample \(file) differs from toyfuzz's crash input")
        }
        try await waitUntil("every VM of the toyfuzz job gone", timeout: .seconds(60)) { try await c.partDomains(containing: id).isEmpty }
    }

    /// Runs toyfuzz on this machine with the job's parameters and returns its crash input.
    func localToyfuzzCrash(_ c: Cluster) async throws -> Data {
        let root = try TestEnvironment.repositoryRoot()
        let run = c.dir + "/toyfuzz-local"
        try FileManager.default.createDirectory(atPath: run + "/out", withIntermediateDirectories: true)
        let params = Self.fuzzParams.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ")
        try "{\(params), \"target\": \"toytarget\"}".write(toFile: run + "/params.json", atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: run + "/events", contents: nil)
        try await runCommand("/bin/sh", ["./fuzz.sh"], workingDirectory: root + "/code-template/tools/toyfuzz",
                             environment: ["TALUS_PARAMS": run + "/params.json", "TALUS_EVENTS": run + "/events",
                                           "TALUS_OUTPUT": run + "/out", "TALUS_COMPONENTS": root + "/code-template/components"],
                             timeout: .seconds(60))
        let samples = try FileManager.default.contentsOfDirectory(atPath: run + "/out").filter { $0.hasPrefix("crash-") }
        try #require(samples.count == 1, "toyfuzz wrote one crash sample locally: \(samples)")
        return try #require(FileManager.default.contents(atPath: run + "/out/" + samples[0]))
    }

    /// The sample files of a crash export (everything but crash.json), recursively.
    func exportedSamples(_ dir: String) throws -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: dir) else { return [] }
        var files: [String] = []
        while let path = walker.nextObject() as? String {
            var isDir: ObjCBool = false
            let full = dir + "/" + path
            if FileManager.default.fileExists(atPath: full, isDirectory: &isDir), !isDir.boolValue,
               !path.hasSuffix("crash.json") {
                files.append(full)
            }
        }
        return files.sorted()
    }

    // MARK: 2. kill -9 of a slave

    func killedSlaveLosesNothing(_ c: Cluster, image: String) async throws {
        let phase = ContinuousClock.now
        try await c.ok(["task", "create", "sleep", "--tool", "e2e-sleep", "--image", image, "--param", "seconds=8",
                        "--limit", "2", "--cpus", "1", "--memory-mb", "256", "--timeout", "600", "--json"])
        let job = try await c.json(["job", "create", "sleep", "--name", "sleep-kill"], as: JobDocument.self)
        let id = job.id.hex
        // One part per slave (one VM slot each): wait until the victim's tool is running.
        let victim = c.slaves[1], survivor = c.slaves[0]
        let killedRun = try await waitFor("the tool of a part on \(victim.name) to run", timeout: .seconds(300), interval: .milliseconds(200)) {
            try c.checkDaemons()
            return try await sleepingRuns(c, job: job.id).first { $0.slave == victim.id }
        }
        #expect(try await c.domains(of: victim).count == 1)
        victim.process.map { kill($0.pid, SIGKILL) }
        try await waitUntil("\(victim.name) to die") { victim.process?.isRunning == false }
        note("killed \(victim.name) (-9) while part \(killedRun.idx) ran (run \(killedRun.id))")

        // RabbitMQ redelivers the unacked part; the survivor runs it under a new run.
        let rerun = try await waitFor("part \(killedRun.idx) to run again on \(survivor.name)", timeout: .seconds(300),
                                      interval: .milliseconds(200)) {
            try c.checkDaemons()
            return try await runs(c, job: job.id).first { $0.idx == killedRun.idx && $0.id != killedRun.id && $0.slave == survivor.id }
        }
        note("part \(killedRun.idx) redelivered to \(survivor.name) (run \(rerun.id))")

        // The killed slave comes back: none of its domains remain.
        try victim.start()
        try await c.waitOnline(victim)
        #expect(try await c.domains(of: victim).isEmpty, "no orphan domain of the killed slave")

        let finished = try await waitForJob(c, id, timeout: .seconds(400))
        note("phase kill -9 (job limit 2 with a redelivery): \(seconds(ContinuousClock.now - phase))")
        #expect(finished.status.name == .finished, "\(finished.status)")
        #expect(finished.progress == 2, "progress exactly at the limit")
        // The job ends the moment its progress reaches the limit, so the last run may end as
        // cancelled after it reported its unit: count every run that did not fail or get lost.
        try await waitUntil("every run of the job to end", timeout: .seconds(120)) {
            try await runs(c, job: job.id).allSatisfy { $0.state != .running || $0.id == killedRun.id }
        }
        let all = try await runs(c, job: job.id)
        // A failed run shows why (its reason and serial tail): once the cluster stops, its run
        // directory is gone.
        let table = all.map {
            "\($0.idx) \($0.slave == victim.id ? victim.name : survivor.name) \($0.state) progress \($0.progress)"
                + ($0.state == .failed ? " reason \($0.reason ?? "-") serial …\(String(($0.serialTail ?? "").suffix(600)))" : "")
        }
        note("runs of the kill job: \(table)")
        #expect(all.filter { [.finished, .cancelled].contains($0.state) }.map(\.progress).reduce(0, +) == 2, "\(table)")
        let killed = all.first { $0.id == killedRun.id }
        #expect(killed?.progress == 0 && killed?.state != .finished, "the killed run counts nothing: \(table)")
        // The redelivered part ends on the survivor (a failed attempt there may be retried first).
        #expect(all.contains { $0.idx == killedRun.idx && $0.id != killedRun.id && $0.slave == survivor.id
                               && $0.state == .finished && $0.progress == 1 },
                "the redelivered part (first rerun \(rerun.id)) ran to its end on \(survivor.name): \(table)")
        try await waitUntil("no domain of either slave left", timeout: .seconds(60)) { try await c.partDomains().isEmpty }
    }

    // MARK: 3. Cancel

    func cancelStopsEveryVMWithinTenSeconds(_ c: Cluster, image: String) async throws {
        let phase = ContinuousClock.now
        let job = try await c.json(["job", "create", "sleep", "--name", "sleep-cancel", "--param", "seconds=3600"], as: JobDocument.self)
        let id = job.id.hex
        try await waitUntil("both parts' tools to run", timeout: .seconds(300), interval: .milliseconds(200)) {
            try c.checkDaemons()
            return Set(try await sleepingRuns(c, job: job.id).map(\.slave)).count == 2
        }
        let vms = try await c.partDomains(containing: id)
        #expect(vms.count == 2, "\(vms)")
        let cancelled = ContinuousClock.now
        try await c.ok(["job", "cancel", id])
        try await waitUntil("every VM of the cancelled job gone", timeout: .seconds(10), interval: .milliseconds(100)) {
            try await c.partDomains(containing: id).isEmpty
        }
        let took = ContinuousClock.now - cancelled
        note("phase cancel: every VM gone \(seconds(took)) after talus job cancel (whole phase \(seconds(ContinuousClock.now - phase)))")
        #expect(took < .seconds(10))
        let end = try await waitForJob(c, id, timeout: .seconds(60))
        #expect(end.status.name == .cancelled, "\(end.status)")
        #expect(end.progress == 0)
    }

    // MARK: Helpers

    /// Polls `talus job show` until the job is in a terminal state.
    func waitForJob(_ c: Cluster, _ id: String, timeout: Duration) async throws -> JobDocument {
        try await waitFor("job \(id) to end", timeout: timeout, interval: .seconds(1)) {
            try c.checkDaemons()
            let job = try await c.job(id)
            return job.status.name.isTerminal ? job : nil
        }
    }

    func runs(_ c: Cluster, job: ObjectId) async throws -> [RunDocument] {
        try await c.db.collection("runs", as: RunDocument.self).find(["job": .objectId(job)])
    }

    /// Runs of `job` whose tool said it is sleeping (the guest is up and the tool runs).
    func sleepingRuns(_ c: Cluster, job: ObjectId) async throws -> [RunDocument] {
        try await runs(c, job: job).filter { $0.state == .running && $0.logs.contains { $0.message.contains("e2e-sleep: sleeping") } }
    }
}
