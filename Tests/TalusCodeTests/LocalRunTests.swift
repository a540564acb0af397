import BSON
import Foundation
import Synchronization
import Testing
import TalusAgent
import TalusCode
import TalusCore
import TalusModel
import TalusTestSupport

/// Collects the events of a run (the callback runs on the run's thread).
final class EventLog: Sendable {
    let events = Mutex<[LocalRunEvent]>([])
    func add(_ e: LocalRunEvent) { events.withLock { $0.append(e) } }
    var all: [LocalRunEvent] { events.withLock { $0 } }
}

func runLocal(_ options: LocalRunOptions) async throws -> (LocalRunSummary, [LocalRunEvent]) {
    let run = try await LocalToolRun.prepare(options)
    let log = EventLog()
    let summary = try await blockingIO { try run.run(onEvent: { log.add($0) }) }
    return (summary, log.all)
}

@Suite struct LocalRunTests {
    static func template(_ path: String) throws -> String { try TestEnvironment.repositoryRoot() + "/code-template/" + path }

    @Test func toyfuzzFindsThePlantedCrash() async throws {
        let (summary, events) = try await runLocal(LocalRunOptions(toolDirectory: try Self.template("tools/toyfuzz")))
        #expect(summary.exitCode == 0)
        #expect(summary.progress == 8)
        let crash = try #require(summary.crashes.first)
        #expect(crash.signature == "toytarget: stack-buffer-overflow in copy_field")
        let sample = try #require(crash.file)
        #expect(sample.hasPrefix(summary.output + "/crash-"))
        #expect(try String(contentsOfFile: sample, encoding: .utf8).contains("len="))
        #expect(crash.data["report"].map { "\($0)" }?.contains("#0 copy_field") == true)
        let stats = try #require(summary.results.first { $0.kind == "stats" })
        #expect(stats.data["iterations"] == .int64(8) || stats.data["iterations"] == .int32(8))
        #expect(summary.warnings == [])
        // Events arrive in order: progress before the crash it found, the stats last.
        let reports = events.compactMap { if case .report(let r) = $0 { r } else { nil } }
        #expect(reports.last?.type == "result")
        #expect(reports.contains { $0.type == "crash" })
        #expect(events.contains { if case .output("stdout", let line) = $0 { line.contains("CRASH") } else { false } })
    }

    @Test func parametersAreMergedOverDefaultsAndChecked() async throws {
        let (summary, events) = try await runLocal(LocalRunOptions(toolDirectory: try Self.template("tools/hello"), params: ["name": "Talus"]))
        #expect(summary.exitCode == 0 && summary.progress == 1)
        #expect(summary.results == [.init(kind: "hello", data: ["greeting": "hello, Talus"], files: [])])
        #expect(events.contains(.output(stream: "stdout", line: "hello, Talus")))
        // The same seed gives the same run: iterations and seed come from --param.
        let (a, _) = try await runLocal(LocalRunOptions(toolDirectory: try Self.template("tools/toyfuzz"), params: ["iterations": 3, "seed": 7]))
        let (b, _) = try await runLocal(LocalRunOptions(toolDirectory: try Self.template("tools/toyfuzz"), params: ["iterations": 3, "seed": 7]))
        // (BSON documents compare in order; JSON decoding does not keep it.)
        func unordered(_ s: LocalRunSummary) -> [[String: BSONValue]] { s.results.map { Dictionary(uniqueKeysWithValues: $0.data.map { ($0.key, $0.value) }) } }
        #expect(a.progress == 3 && unordered(a) == unordered(b) && a.crashes.map(\.signature) == b.crashes.map(\.signature), "\(a) \(b)")

        await #expect { try await LocalToolRun.prepare(LocalRunOptions(toolDirectory: try Self.template("tools/hello"), params: ["nmae": "x"])) } throws: {
            "\($0)".contains("unknown parameter \"nmae\" (hello declares: name)")
        }
        await #expect { try await LocalToolRun.prepare(LocalRunOptions(toolDirectory: try Self.template("tools/toyfuzz"), params: ["iterations": "many"])) } throws: {
            "\($0)".contains("parameter \"iterations\" must be of type int")
        }
    }

    @Test func theToolsExitStatusTimeoutAndWarningsAreReported() async throws {
        let dir = try TestEnvironment.scratchDirectory("local")
        func tool(_ name: String, _ script: String, manifest: String? = nil) throws -> String {
            let path = dir + "/tools/" + name
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            try (manifest ?? toolManifest(name)).write(toFile: path + "/talus-tool.json", atomically: true, encoding: .utf8)
            try script.write(toFile: path + "/run.sh", atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path + "/run.sh")
            return path
        }
        let failing = try tool("failing", """
            #!/bin/sh
            echo '{"type":"crash","signature":"x","file":"missing.bin"}' >> "$TALUS_EVENTS"
            echo 'not json' >> "$TALUS_EVENTS"
            echo "env: $TALUS_TOOL $TALUS_IDX $HOME"
            exit 3
            """)
        let (summary, events) = try await runLocal(LocalRunOptions(toolDirectory: failing))
        #expect(summary.exitCode == 3)
        #expect(summary.reason == "the tool exited with status 3")
        #expect(summary.crashes == [.init(signature: "x", data: [:], file: nil)])
        #expect(summary.warnings == ["file missing.bin not found in TALUS_OUTPUT", "malformed event line ignored: not json"])
        #expect(events.contains(.output(stream: "stdout", line: "env: failing 0 \(summary.workDirectory)")))

        let slow = try tool("slow", "#!/bin/sh\nsleep 30\n")
        let start = ContinuousClock.now
        let (stopped, _) = try await runLocal(LocalRunOptions(toolDirectory: slow, timeout: .milliseconds(500)))
        #expect(stopped.exitCode == 124)
        #expect(ContinuousClock.now - start < .seconds(15))

        let lonely = try tool("lonely", "#!/bin/sh\n", manifest: toolManifest("lonely", components: #"["nowhere"]"#))
        await #expect { try await LocalToolRun.prepare(LocalRunOptions(toolDirectory: lonely)) } throws: {
            "\($0)".contains("talus-tool.json: component \"nowhere\" does not exist")
        }
    }

    @Test func theTemplateScriptsBehaveTheSameUnderEveryShell() async throws {
        var outcomes: [String: String] = [:]
        for shell in [["/bin/dash"], ["/bin/bash", "--posix"], ["/usr/bin/busybox", "sh"]] {
            let dir = try TestEnvironment.scratchDirectory("shell")
            try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
            try #"{"iterations": 12, "seed": 3, "target": "toytarget"}"#.write(toFile: dir + "/params.json", atomically: true, encoding: .utf8)
            #expect(FileManager.default.createFile(atPath: dir + "/events", contents: nil))
            let env = ["TALUS_PARAMS": dir + "/params.json", "TALUS_EVENTS": dir + "/events", "TALUS_OUTPUT": dir + "/out",
                       "TALUS_COMPONENTS": try Self.template("components"), "TMPDIR": dir]
            let r = try await runCommand(shell[0], Array(shell.dropFirst()) + ["./fuzz.sh"], workingDirectory: try Self.template("tools/toyfuzz"),
                                         environment: env)
            #expect(r.stdout.contains("CRASH"), "\(shell)")
            let events = try String(contentsOfFile: dir + "/events", encoding: .utf8)
            #expect(events.contains(#""type":"crash""#), "\(shell)")
            for line in events.split(separator: "\n") { _ = try ToolEvent.parse(line) }
            outcomes[shell.joined(separator: " ")] = events
            let hello = try await runCommand(shell[0], Array(shell.dropFirst()) + ["./run.sh"], workingDirectory: try Self.template("tools/hello"),
                                             environment: env)
            #expect(hello.stdout == "hello, world\n", "\(shell)")
        }
        #expect(Set(outcomes.values).count == 1, "the shells disagree: \(outcomes)")
    }
}
