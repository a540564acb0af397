// Parts in real VMs: the real test guest under libvirtd/QEMU (TCG), the real static agent on the
// config ISO, a tool bundle made here, events on RabbitMQ. Few VMs, booted concurrently.

import AMQP
import BSON
import Crypto
import Foundation
import Libvirt
import TalusCore
import TalusModel
import TalusTestSupport
import Testing
@testable import TalusSlave

/// A `talus-agent` stand-in for a hostile guest: the boot hook runs it like the agent; it writes
/// garbage, a hello with a wrong token, an oversized frame and a malformed one, then exits.
private let hostileAgent = #"""
    #!/bin/sh
    port=/dev/virtio-ports/org.talus.agent.0
    echo "hostile agent writing to $port"
    printf 'no magic here, just bytes\n' > $port
    printf 'TAL1\000\000\000\056{"type":"hello","token":"guessed","agent":"x"}' > $port
    printf 'TAL1\177\377\377\377AAAA' > $port
    printf 'TAL1\000\000\000\012{"type":1}' > $port
    echo "hostile agent done"
    """#

@Suite("Parts in real VMs", .timeLimit(.minutes(10)))
struct PartRunnerTests {
    @Test func aToolRunsInARealGuestWhileAHostileGuestFailsBeside() async throws {
        let h = try await PartHarness.make()
        defer { Task { await h.close() } }
        let good = PartRun(part: try await h.part(script: #"""
            echo "hello from the tool: $(cat "$TALUS_PARAMS" | tr -d '\n ')"
            printf 'crash\000input\377' > "$TALUS_OUTPUT/crash.bin"
            echo '{"type":"progress","amount":2}' >> "$TALUS_EVENTS"
            echo '{"type":"result","kind":"stats","data":{"execs":7}}' >> "$TALUS_EVENTS"
            echo '{"type":"crash","signature":"SEGV at toy+0x10","file":"crash.bin"}' >> "$TALUS_EVENTS"
            echo '{"type":"progress"}' >> "$TALUS_EVENTS"
            """#, params: ["seed": 42]), env: h.environment(), sink: h.sink)
        let hostileScript = h.dir + "/hostile-agent"
        try hostileAgent.write(toFile: hostileScript, atomically: true, encoding: .utf8)
        chmod(hostileScript, 0o755)
        let hostile = PartRun(part: try await h.part(script: "exit 0", idx: 1), env: h.environment(agent: hostileScript), sink: h.sink)

        async let goodResult = good.execute()
        async let hostileResult = hostile.execute()
        let (g, b) = await (goodResult, hostileResult)

        // The good part.
        #expect(g.outcome == .success, "\(g)")
        #expect(g.exitCode == 0 && g.reported)
        let events = try await h.events.waitForEnd(run: good.run)
        #expect(events.map { $0.source!.seq } == Array(1...events.count), "seq 1, 2, 3, … without gaps")
        #expect(events.first?.body == .partStarted)
        #expect(events.last?.ended?.outcome == .success)
        #expect(events.allSatisfy { $0.slave == h.slaveID && $0.source?.job == good.part.job && $0.source?.attempt == 1 })
        let reports = events.compactMap(\.report)
        #expect(reports.reduce(0) { if case .progress(let n) = $1 { $0 + n } else { $0 } } == 3)
        let sample = Data("crash".utf8) + Data([0]) + Data("input".utf8) + Data([0xFF])
        let chunks = reports.compactMap { if case .file(let c) = $0 { c } else { nil } }
        #expect(chunks.map(\.data).reduce(Data(), +) == sample)
        #expect(chunks.last?.sha256 == hexString(SHA256.hash(data: sample)) && chunks.last?.size == Int64(sample.count))
        let crashAt = reports.firstIndex(of: .crash(signature: "SEGV at toy+0x10", data: [:], file: "crash.bin"))
        let fileAt = reports.firstIndex { if case .file = $0 { true } else { false } }
        #expect(crashAt != nil && fileAt != nil && fileAt! < crashAt!)
        #expect(reports.contains { if case .result("stats", let d, _) = $0 { d["execs"]?.intValue == 7 } else { false } })
        #expect(reports.contains { if case .log("stdout", let m) = $0 { m.contains("hello from the tool") && m.contains("42") } else { false } })
        let timeline = good.timeline.withLock { $0 }
        #expect(timeline.domainCreated != nil && timeline.hello != nil)

        // The hostile part: failed with a reason that names what it did; nothing it sent relayed.
        #expect(b.outcome == .failure)
        let reason = try #require(b.reason)
        #expect(reason.contains("before the guest agent connected"), "\(reason)")
        #expect(reason.contains("bad_token") && reason.contains("oversized") && reason.contains("malformed") && reason.contains("garbage"), "\(reason)")
        #expect(b.serialTail?.contains("hostile agent done") == true, "\(b.serialTail ?? "no serial tail")")
        let hostileEvents = try await h.events.waitForEnd(run: hostile.run)
        #expect(hostileEvents.map(\.body.type) == ["part-started", "part-ended"])

        // Both VMs are gone, their files removed, the cache unpinned.
        for run in [good, hostile] {
            #expect(try await !h.domainExists(run.domain))
            #expect(!FileManager.default.fileExists(atPath: run.paths.directory))
        }
        #expect(await h.cache.pinCount(ArtifactStore.imageKey(h.imageID)) == 0)
    }

    @Test func aHangingToolHitsItsDeadlineAndACancelledOneStopsWithinSeconds() async throws {
        let h = try await PartHarness.make()
        defer { Task { await h.close() } }
        let hanging = PartRun(part: try await h.part(script: "echo tool-is-hanging; sleep 3600", timeoutS: 90), env: h.environment(), sink: h.sink)
        let victim = PartRun(part: try await h.part(script: "echo ready-to-be-cancelled; sleep 3600", idx: 1), env: h.environment(), sink: h.sink)
        async let hangingResult = hanging.execute()
        let victimTask = Task { await victim.execute() }

        // Cancel the victim once its tool runs (its output arrived as a log event).
        try await waitUntil("the victim's tool to run", timeout: .seconds(180)) {
            h.events.events(run: victim.run).contains { if case .log(_, let m)? = $0.report { m.contains("ready-to-be-cancelled") } else { false } }
        }
        let cancelledAt = ContinuousClock.now
        victim.cancel(reason: "the job was cancelled")
        let v = await victimTask.value
        let took = ContinuousClock.now - cancelledAt
        #expect(v.outcome == .cancelled && v.reason == "the job was cancelled")
        #expect(took < .seconds(10), "cancel took \(took)")
        #expect(try await !h.domainExists(victim.domain))

        let r = await hangingResult
        #expect(r.outcome == .failure)
        #expect(r.reason?.contains("deadline of 90 s") == true, "\(r.reason ?? "")")
        #expect(r.serialTail?.contains("tool-is-hanging") == true, "\(r.serialTail ?? "no serial tail")")
        let ended = try await h.events.waitForEnd(run: hanging.run).last?.ended
        #expect(ended?.serialTail?.contains("tool-is-hanging") == true)
        #expect(try await !h.domainExists(hanging.domain))
    }

    @Test func aPartThatCannotBeSetUpFailsWithAReason() async throws {
        let h = try await PartHarness.make()
        defer { Task { await h.close() } }
        var part = try await h.part(script: "exit 0")
        part.image = PartImage(id: ObjectId(), sha256: String(repeating: "a", count: 64), chain: [])
        let run = PartRun(part: part, env: h.environment(), sink: h.sink)
        let result = await run.execute()
        #expect(result.outcome == .failure && result.reported)
        #expect(result.reason?.contains("is not cached") == true, "\(result.reason ?? "")")
        let events = try await h.events.waitForEnd(run: run.run)
        #expect(events.map(\.body.type) == ["part-started", "part-ended"])
    }
}
