import BSON
import Foundation
import Testing
import TalusAgent
import TalusModel
import TalusTestSupport

/// Runs the real `talus-agent` binary on the host against a unix socket that plays the slave's
/// side of the channel, with a real tool bundle (tar.gz) and config.json.
final class AgentHarness: @unchecked Sendable {
    let dir: String
    let socketPath: String
    let listener: Int32
    var connection: Int32 = -1
    var decoder = FrameDecoder()
    var agent: TestProcess?

    init(tool script: String, params: BSONDocument = [:], token: String = "tok-123") throws {
        dir = try TestEnvironment.scratchDirectory("agent")
        socketPath = dir + "/agent.sock"
        let toolDir = dir + "/src/tool"
        try FileManager.default.createDirectory(atPath: toolDir, withIntermediateDirectories: true)
        try script.write(toFile: toolDir + "/run.sh", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/cfg", withIntermediateDirectories: true)
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/bin/tar")
        tar.arguments = ["-czf", dir + "/cfg/tool.tar.gz", "-C", dir + "/src", "tool"]
        try tar.run(); tar.waitUntilExit()
        let config = GuestConfig(job: ObjectId(), idx: 2, attempt: 1, run: "run-x", tool: PartTool(name: "t", commit: "c"),
                                 entry: "sh ./run.sh", params: params, token: token, heartbeatSeconds: 1, maxFileBytes: 1 << 20)
        try TalusJSON.encoder().encode(config).write(to: URL(fileURLWithPath: dir + "/cfg/config.json"))

        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in socketPath.utf8.enumerated() { raw[i] = b } }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        listen(listener, 1)
    }

    func start() throws {
        agent = try TestProcess(try TestEnvironment.executable("talus-agent"),
                                ["--config", dir + "/cfg/config.json", "--port", "unix:" + socketPath, "--work", dir + "/work"],
                                logPath: dir + "/agent.log")
        connection = accept(listener, nil, nil)
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ frame: GuestFrame) throws {
        let bytes = try FrameEncoder.encode(frame)
        _ = bytes.withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
    }

    /// Frames received until `stop` says so, or the deadline passes.
    func receive(timeout: Duration = .seconds(30), until stop: (GuestFrame) -> Bool) async throws -> [GuestFrame] {
        var frames: [GuestFrame] = []
        var done = false
        try await waitUntil("frames from the agent", timeout: timeout, interval: .milliseconds(1)) {
            var buffer = [UInt8](repeating: 0, count: 65536)
            let n = read(connection, &buffer, buffer.count)
            if n > 0 { decoder.append(buffer[0..<n]) }
            while let item = decoder.next() {
                if case .frame(let f) = item {
                    frames.append(f)
                    if stop(f) { done = true }
                }
            }
            return done
        }
        return frames
    }

    deinit {
        close(listener)
        if connection >= 0 { close(connection) }
    }
}

@Suite struct AgentTests {
    @Test func runsTheToolAndStreamsItsEventsAndFiles() async throws {
        let h = try AgentHarness(tool: """
            echo "starting with $(cat "$TALUS_PARAMS")"
            printf 'crash-input\\000\\377' > "$TALUS_OUTPUT/sample.bin"
            echo '{"type":"progress","amount":1}' >> "$TALUS_EVENTS"
            echo '{"type":"progress"}' >> "$TALUS_EVENTS"
            echo 'not json' >> "$TALUS_EVENTS"
            echo '{"type":"result","kind":"stats","data":{"execs":42}}' >> "$TALUS_EVENTS"
            echo '{"type":"crash","signature":"SEGV in parse","file":"sample.bin"}' >> "$TALUS_EVENTS"
            printf '{"type":"log","message":"no newline at end"}' >> "$TALUS_EVENTS"
            echo "to stderr" >&2
            exit 0
            """, params: ["iterations": 5])
        try h.start()
        let frames = try await h.receive { if case .finished = $0 { true } else { false } }
        #expect(frames.first == .hello(token: "tok-123", agent: agentVersion))
        #expect(frames.contains(.started))
        let progress = frames.reduce(0) { if case .report(.progress(let n)) = $1 { $0 + n } else { $0 } }
        #expect(progress == 2)
        #expect(frames.contains { if case .report(.result("stats", let data, [])) = $0 { data["execs"]?.intValue == 42 } else { false } })
        let chunks = frames.compactMap { if case .report(.file(let c)) = $0 { c } else { nil } }
        #expect(chunks.map(\.name) == ["sample.bin"])
        #expect(chunks.first?.data == Data("crash-input".utf8) + Data([0, 255]))
        #expect(chunks.last?.last == true && chunks.last?.size == 13)
        #expect(frames.contains(.report(.crash(signature: "SEGV in parse", data: [:], file: "sample.bin"))))
        #expect(frames.contains(.report(.log(level: "info", message: "no newline at end"))))
        #expect(frames.contains { if case .report(.log("warning", let m)) = $0 { m.contains("malformed") } else { false } })
        #expect(frames.contains(.report(.log(level: "stderr", message: "to stderr"))))
        #expect(frames.contains { if case .report(.log("stdout", let m)) = $0 { m.contains("iterations") } else { false } })
        #expect(frames.last == .finished(exitCode: 0, reason: nil))
        // The crash's sample arrives before the crash that names it.
        let fileIndex = frames.firstIndex { if case .report(.file) = $0 { true } else { false } }!
        let crashIndex = frames.firstIndex { if case .report(.crash) = $0 { true } else { false } }!
        #expect(fileIndex < crashIndex)
        try await waitUntil("agent exits 0") { h.agent?.isRunning == false }
        #expect(h.agent?.process.terminationStatus == 0)
    }

    @Test func cancelStopsAHangingToolAndItsChildren() async throws {
        let h = try AgentHarness(tool: "sleep 300 & sleep 300\n")
        try h.start()
        _ = try await h.receive { $0 == .started }
        try h.send(.welcome)
        // Heartbeats keep coming while the tool hangs.
        _ = try await h.receive(timeout: .seconds(10)) { $0 == .heartbeat }
        try h.send(.cancel(reason: "job cancelled"))
        let frames = try await h.receive { if case .finished = $0 { true } else { false } }
        guard case .finished(let code, let reason) = frames.last else { Issue.record("no finished"); return }
        #expect(code == -1)
        #expect(reason?.contains("job cancelled") == true)
        try await waitUntil("agent exits") { h.agent?.isRunning == false }
    }

    @Test func failingToolReportsItsStatusAndFloodsAreBounded() async throws {
        let h = try AgentHarness(tool: """
            i=0; while [ $i -lt 3000 ]; do echo "line $i"; echo '{"type":"progress"}' >> "$TALUS_EVENTS"; i=$((i+1)); done
            exit 3
            """)
        try h.start()
        let frames = try await h.receive(timeout: .seconds(60)) { if case .finished = $0 { true } else { false } }
        #expect(frames.last == .finished(exitCode: 3, reason: "the tool exited with status 3"))
        let progress = frames.reduce(0) { if case .report(.progress(let n)) = $1 { $0 + n } else { $0 } }
        #expect(progress == 3000)
        let progressFrames = frames.filter { if case .report(.progress) = $0 { true } else { false } }.count
        #expect(progressFrames < 3000, "bursts are coalesced")
        let logs = frames.filter { if case .report(.log("stdout", _)) = $0 { true } else { false } }.count
        #expect(logs < 3000, "output is rate limited")
        #expect(frames.contains { if case .report(.log("warning", let m)) = $0 { m.contains("not relayed") } else { false } })
    }

    @Test func badConfigExitsWithAMessage() async throws {
        let dir = try TestEnvironment.scratchDirectory("agent-bad")
        try "{".write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        let p = try TestProcess(try TestEnvironment.executable("talus-agent"),
                                ["--config", dir + "/config.json", "--port", "unix:" + dir + "/none.sock"], logPath: dir + "/log")
        try await waitUntil("agent exits") { !p.isRunning }
        #expect(p.process.terminationStatus == 2)
        #expect(p.logTail().contains("cannot read"))
    }
}
