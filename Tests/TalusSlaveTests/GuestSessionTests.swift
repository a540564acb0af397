// The guest protocol server against a peer on a unix socket that plays a guest — a well-behaved
// agent and a hostile one (garbage, wrong tokens, oversized and out-of-order frames, floods,
// silence). No VM: these are the corners a real agent never reaches.

import Crypto
import Foundation
import Logging
import Synchronization
import TalusCore
import TalusModel
import TalusTestSupport
import Testing
@testable import TalusSlave

/// A listening unix socket whose one accepted connection plays the guest.
final class GuestPeer: @unchecked Sendable {
    // `connection` is set once by `accept()` before any other use; the rest is immutable.
    let path: String
    private let listener: Int32
    private var connection: Int32 = -1
    private var decoder = FrameDecoder()

    init() throws {
        let dir = try TestEnvironment.scratchDirectory("peer")
        path = dir + "/agent.sock"
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, listen(listener, 1) == 0 else { throw TestSupportError("cannot listen on \(path)") }
    }

    /// Accepts the session's connection (waits up to 10 s).
    func accept() async throws {
        try await waitUntil("the session to connect", timeout: .seconds(10)) {
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            return poll(&p, 1, 0) == 1
        }
        connection = Glibc.accept(listener, nil, nil)
        _ = fcntl(connection, F_SETFL, fcntl(connection, F_GETFL) | O_NONBLOCK)
    }

    func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(connection, $0.baseAddress, $0.count) }
            if n > 0 { offset += n } else { usleep(1000) }
        }
    }

    func send(_ frame: GuestFrame) throws { write(try FrameEncoder.encode(frame)) }

    /// Frames the session sent to the guest, read until `stop` matches or the deadline passes.
    func receive(until stop: @escaping (GuestFrame) -> Bool) async throws -> [GuestFrame] {
        var frames: [GuestFrame] = []
        var done = false
        try await waitUntil("frames from the slave", timeout: .seconds(10), interval: .milliseconds(5)) {
            var buffer = [UInt8](repeating: 0, count: 65536)
            let n = Glibc.read(connection, &buffer, buffer.count)
            if n > 0 { decoder.append(buffer[0..<n]) }
            while let item = decoder.next() {
                if case .frame(let f) = item { frames.append(f); if stop(f) { done = true } }
            }
            return done
        }
        return frames
    }

    func closeConnection() { if connection >= 0 { Glibc.close(connection); connection = -1 } }

    deinit {
        Glibc.close(listener)
        if connection >= 0 { Glibc.close(connection) }
        unlink(path)
    }
}

/// A list shared between tasks.
final class Shared<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ item: T) { items.withLock { $0.append(item) } }
    var all: [T] { items.withLock { $0 } }
}

/// A session under test with what it signalled and relayed.
final class SessionUnderTest: Sendable {
    let session: GuestSession
    let signals = Shared<PartSignal>()
    let relayed = Shared<ToolReport>()
    let task: Task<Void, Never>
    let relay: Task<Void, Never>

    init(token: String = "secret-token", limits: GuestLimits = GuestLimits(), path: String) {
        var logger = Logger(label: "test.session")
        logger.logLevel = .critical
        let session = GuestSession(token: token, limits: limits, logger: logger)
        self.session = session
        let signals = self.signals
        let relayed = self.relayed
        task = Task { await session.run(socketPath: path, signal: { s in signals.append(s) }) }
        relay = Task {
            for await report in session.reports {
                relayed.append(report)
                session.relayed(report)
            }
        }
    }

    func waitFor(_ signal: PartSignal, timeout: Duration = .seconds(10)) async throws {
        try await waitUntil("signal \(signal)", timeout: timeout) { self.signals.all.contains(signal) }
    }

    func finish() async {
        task.cancel()
        await task.value
        await relay.value
    }
}

@Suite("Guest protocol server")
struct GuestSessionTests {
    @Test func wellBehavedAgentIsWelcomedAndItsReportsRelayedInOrder() async throws {
        let peer = try GuestPeer()
        let s = SessionUnderTest(path: peer.path)
        try await peer.accept()
        try peer.send(.hello(token: "secret-token", agent: "talus-agent/1"))
        let reply = try await peer.receive { $0 == .welcome }
        #expect(reply == [.welcome])
        try await s.waitFor(.guestHello(agent: "talus-agent/1"))
        let sample = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try peer.send(.started)
        try peer.send(.report(.progress(amount: 2)))
        try peer.send(.report(.file(FileChunk(name: "crashes/a.bin", offset: 0, data: sample.prefix(200_000), last: false))))
        try peer.send(.report(.file(FileChunk(name: "crashes/a.bin", offset: 200_000, data: sample.dropFirst(200_000), last: true, size: 300_000))))
        try peer.send(.report(.crash(signature: "SEGV in parse", data: ["pc": "0x41"], file: "crashes/a.bin")))
        try peer.send(.report(.result(kind: "stats", data: ["execs": 9], files: ["crashes/a.bin", "never-sent.txt"])))
        try peer.send(.heartbeat)
        try peer.send(.report(.log(level: "info", message: "bye")))
        try peer.send(.finished(exitCode: 0, reason: nil))
        try await s.waitFor(.guestFinished(exitCode: 0, reason: nil))
        try await s.waitFor(.toolStarted)
        await s.finish()

        let reports = s.relayed.all
        #expect(reports.first == .progress(amount: 2))
        let chunks = reports.compactMap { if case .file(let c) = $0 { c } else { nil } }
        #expect(chunks.count == 2)
        #expect(chunks.last?.sha256 == hexString(SHA256.hash(data: sample)))
        #expect(chunks.last?.size == 300_000)
        #expect(chunks.map(\.data).reduce(Data(), +) == sample)
        let crash = reports.firstIndex { if case .crash = $0 { true } else { false } }
        let lastChunk = reports.lastIndex { if case .file = $0 { true } else { false } }
        #expect(crash != nil && lastChunk != nil && lastChunk! < crash!)
        #expect(reports.contains(.crash(signature: "SEGV in parse", data: ["pc": "0x41"], file: "crashes/a.bin")))
        #expect(reports.contains(.result(kind: "stats", data: ["execs": 9], files: ["crashes/a.bin"])))
        #expect(reports.contains { if case .log("warning", let m) = $0 { m.contains("never-sent.txt") } else { false } })
        #expect(reports.last == .log(level: "info", message: "bye"))
        #expect(s.session.errorSummary == nil)
    }

    @Test func hostilePeerIsCountedDroppedAndNeverRelayedBeforeAValidHello() async throws {
        let peer = try GuestPeer()
        let s = SessionUnderTest(limits: GuestLimits(maxFrameBytes: 4096), path: peer.path)
        try await peer.accept()
        peer.write(Array("garbage before anything\n".utf8))
        try peer.send(.hello(token: "guessed", agent: "evil"))
        try peer.send(.report(.progress(amount: 1000)))                       // before a valid hello
        peer.write(FrameEncoder.magic + [0x7F, 0xFF, 0xFF, 0xFF] + Array(repeating: 0x41, count: 100))  // oversized
        let junk = Array(#"{"type":"progress","amount":"lots"}"#.utf8)
        peer.write(FrameEncoder.magic + [0, 0, 0, UInt8(junk.count)] + junk)   // malformed
        try peer.send(.hello(token: "secret-token", agent: "talus-agent/1"))
        _ = try await peer.receive { $0 == .welcome }
        try peer.send(.welcome)                                               // a host frame from the guest
        try peer.send(.report(.file(FileChunk(name: "x", offset: 10, data: Data([1]), last: true))))  // no start
        try peer.send(.report(.progress(amount: 1)))
        try peer.send(.finished(exitCode: 3, reason: "the tool exited with status 3"))
        try await s.waitFor(.guestFinished(exitCode: 3, reason: "the tool exited with status 3"))
        try peer.send(.report(.progress(amount: 5)))                          // after finished
        try await waitUntil("the late frame to be counted") { s.session.errors[.outOfOrder] == 3 }
        await s.finish()

        #expect(s.relayed.all == [.progress(amount: 1)])
        let errors = s.session.errors
        #expect(errors[.badToken] == 1)
        #expect(errors[.unauthenticated] == 1)
        #expect(errors[.oversized] == 1)
        #expect(errors[.malformed] == 1)
        #expect((errors[.garbage] ?? 0) >= 2)
        #expect(errors[.outOfOrder] == 3)
        #expect(s.session.errorSummary?.contains("1 bad_token") == true)
    }

    @Test func floodOfBadFramesEndsThePart() async throws {
        let peer = try GuestPeer()
        let s = SessionUnderTest(limits: GuestLimits(maxProtocolErrors: 25), path: peer.path)
        try await peer.accept()
        for i in 0..<40 { try peer.send(.hello(token: "guess-\(i)", agent: "evil")) }
        try await s.waitFor(.protocolFlood)
        await s.finish()
        #expect(s.relayed.all.isEmpty)
        #expect((s.session.errors[.badToken] ?? 0) >= 25)
    }

    @Test func filesOverTheLimitsOrWithABadChecksumAreDropped() async throws {
        let peer = try GuestPeer()
        let s = SessionUnderTest(limits: GuestLimits(maxFileBytes: 1000, maxPartFileBytes: 1500), path: peer.path)
        try await peer.accept()
        try peer.send(.hello(token: "secret-token", agent: "a"))
        try peer.send(.report(.file(FileChunk(name: "big", offset: 0, data: Data(count: 1001), last: true))))
        try peer.send(.report(.file(FileChunk(name: "ok", offset: 0, data: Data(count: 900), last: true))))
        try peer.send(.report(.file(FileChunk(name: "over-part", offset: 0, data: Data(count: 700), last: true))))
        try peer.send(.report(.file(FileChunk(name: "bad-sum", offset: 0, data: Data([1, 2]), last: true, sha256: String(repeating: "0", count: 64)))))
        try peer.send(.report(.crash(signature: "boom", data: [:], file: "big")))
        try peer.send(.finished(exitCode: 0, reason: nil))
        try await s.waitFor(.guestFinished(exitCode: 0, reason: nil))
        await s.finish()
        let reports = s.relayed.all
        let complete = reports.compactMap { if case .file(let c) = $0, c.last { c.name } else { nil } }
        #expect(complete == ["ok"])
        #expect(reports.contains(.crash(signature: "boom", data: [:], file: nil)), "the crash is kept without its sample")
        #expect(s.session.errors[.fileRejected] == 3)
    }

    @Test func silentAgentAndMissingHelloAreNoticed() async throws {
        let silent = try GuestPeer()
        let s1 = SessionUnderTest(limits: GuestLimits(heartbeatTimeout: .seconds(1)), path: silent.path)
        try await silent.accept()
        try silent.send(.hello(token: "secret-token", agent: "a"))
        try await s1.waitFor(.guestSilent, timeout: .seconds(5))

        let mute = try GuestPeer()
        let s2 = SessionUnderTest(limits: GuestLimits(bootTimeout: .seconds(1)), path: mute.path)
        try await mute.accept()
        try await s2.waitFor(.bootTimeout, timeout: .seconds(5))

        // A guest that goes away shows as the channel closing.
        mute.closeConnection()
        try await s2.waitFor(.channelClosed)
        await s1.finish()
        await s2.finish()
    }

    @Test func cancelIsSentToTheGuest() async throws {
        let peer = try GuestPeer()
        let s = SessionUnderTest(path: peer.path)
        try await peer.accept()
        try peer.send(.hello(token: "secret-token", agent: "a"))
        _ = try await peer.receive { $0 == .welcome }
        s.session.send(.cancel(reason: "job cancelled"))
        let frames = try await peer.receive { if case .cancel = $0 { true } else { false } }
        #expect(frames.last == .cancel(reason: "job cancelled"))
        await s.finish()
    }

    @Test func aMissingSocketIsReported() async throws {
        let dir = try TestEnvironment.scratchDirectory("nosock")
        let s = SessionUnderTest(path: dir + "/none.sock")
        try await waitUntil("channel failure", timeout: .seconds(20)) {
            s.signals.all.contains { if case .channelFailed = $0 { true } else { false } }
        }
        await s.finish()
    }
}
