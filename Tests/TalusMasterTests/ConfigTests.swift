// The master's configuration: defaults, strict values naming the key, unknown keys, the
// reference page, and the executable's behaviour with a bad file.

import Foundation
import TalusCore
@testable import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

@Suite struct ConfigTests {
    @Test func defaults() throws {
        let config = try MasterConfig(settings: Settings(values: [:]))
        #expect(config.database == "talus")
        #expect(config.amqpNamespace == "talus")
        #expect(config.lease == .seconds(15))
        #expect(config.jobWindow == 4)
        #expect(config.partAttempts == 3)
        #expect(config.maxErrors == 50)
        #expect(config.crashSamples == 10)
        #expect(config.offlineAfter == .seconds(30))
        #expect(config.metricsHost == "127.0.0.1" && config.metricsPort == 9101)
        #expect(config.logLevel == .info)
    }

    @Test func badValuesNameTheirKey() {
        for (key, value) in [
            ("master.lease_seconds", "soon"), ("jobs.window", "-1"), ("slaves.offline_after", "often"),
            ("metrics.listen", "9101"), ("log.level", "loud"), ("mongo.uri", "http://x"), ("amqp.namespace", "a b"),
            ("mongo.database", "a.b"),
        ] {
            #expect(throws: SettingsError.self, "\(key)") {
                do {
                    _ = try MasterConfig(settings: Settings(values: [key: value]))
                } catch let error as SettingsError {
                    #expect(error.key == key, "\(error)")
                    throw error
                }
            }
        }
    }

    @Test func unknownKeysAreRefused() async throws {
        let path = try TestEnvironment.scratchDirectory("cfg") + "/master.yaml"
        try "jobs:\n  windw: 3\n".write(toFile: path, atomically: true, encoding: .utf8)
        await #expect {
            _ = try await MasterConfig.load(path: path, required: true, environment: [:])
        } throws: { error in
            let e = error as? SettingsError
            return e?.key == "jobs.windw" && e?.problem.contains("jobs.window") == true
        }
    }

    @Test func environmentOverridesTheFile() async throws {
        let path = try TestEnvironment.scratchDirectory("cfg") + "/master.yaml"
        try "jobs:\n  window: 3\nmetrics:\n  listen: \"[::1]:9200\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let config = try await MasterConfig.load(path: path, required: true, environment: ["TALUS_JOBS_WINDOW": "7"])
        #expect(config.jobWindow == 7)
        #expect(config.metricsHost == "::1" && config.metricsPort == 9200)
    }

    @Test func referenceDocumentsEveryKey() {
        let reference = MasterConfig.reference()
        for key in MasterConfig.keys {
            #expect(reference.contains("`\(key.name)`"), "\(key.name)")
            #expect(!key.doc.isEmpty, "\(key.name)")
        }
        #expect(reference.contains("TALUS_AMQP_URL"))
    }

    @Test func executablePrintsTheReferenceAndRefusesABadFile() async throws {
        let binary = try TestEnvironment.executable("talus-master")
        let reference = try await runCommand(binary, ["config-reference"], timeout: .seconds(60))
        #expect(reference.stdout.contains("`jobs.part_attempts`"))
        let path = try TestEnvironment.scratchDirectory("cfg") + "/master.yaml"
        try "jobs:\n  part_attempts: lots\n".write(toFile: path, atomically: true, encoding: .utf8)
        let bad = try await runCommand(binary, ["--config", path], timeout: .seconds(60), check: false)
        #expect(bad.status == 78)
        #expect(bad.stderr.contains("jobs.part_attempts"))
        let missing = try await runCommand(binary, ["--config", path + ".nope"], timeout: .seconds(60), check: false)
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("does not exist"))
    }
}

@Suite struct StatusGuardTests {
    @Test func requestsFromTheObservedStateAreAccepted() {
        #expect(StatusGuard.judge(JobState.self, written: "run", observed: nil) == .accept(.run))
        #expect(StatusGuard.judge(JobState.self, written: "cancel", observed: nil) == .accept(.cancel))
        #expect(StatusGuard.judge(JobState.self, written: "cancel", observed: "running") == .accept(.cancel))
        #expect(StatusGuard.judge(JobState.self, written: "running", observed: "running") == .accept(.running))
    }

    @Test func everythingElseIsRefusedKeepingTheObservedState() {
        guard case .refuse(let restore, let reason) = StatusGuard.judge(JobState.self, written: "import", observed: "running") else {
            Issue.record("accepted an unknown status"); return
        }
        #expect(restore == .running)
        #expect(reason.contains("unknown status \"import\"") && reason.contains("cancel"))
        guard case .refuse(let restore2, let reason2) = StatusGuard.judge(JobState.self, written: "finished", observed: "running") else {
            Issue.record("accepted a master-only state written by a user"); return
        }
        #expect(restore2 == .running)
        #expect(reason2.contains("running → finished"))
        guard case .refuse(let restore3, _) = StatusGuard.judge(JobState.self, written: "run", observed: "finished") else {
            Issue.record("accepted a request out of a terminal state"); return
        }
        #expect(restore3 == .finished)
        guard case .refuse(nil, let reason4) = StatusGuard.judge(JobState.self, written: "running", observed: nil) else {
            Issue.record("accepted a job created running"); return
        }
        #expect(reason4.contains("created in status running"))
        guard case .refuse(.running, _) = StatusGuard.judge(JobState.self, written: nil, observed: "running") else {
            Issue.record("accepted a removed status"); return
        }
    }
}
