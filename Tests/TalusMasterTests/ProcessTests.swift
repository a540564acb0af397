// The `talus-master` executable: killed with SIGKILL in the middle of a job and restarted, a
// standby taking over the lease within the lease time, SIGTERM releasing it at once, and the
// systemd notifications.

import AMQP
import BSON
import Foundation
import Mongo
import TalusCore
@testable import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

/// A `talus-master` subprocess with its own ops port and a systemd notify socket.
final class MasterProcess: @unchecked Sendable {
    let process: TestProcess
    let port: Int
    let notify: NotifySocket

    init(_ fixture: MasterFixture, name: String) throws {
        port = try freeLoopbackPort()
        let path = try fixture.writeConfig(extra: ["metrics.listen": "127.0.0.1:\(port)", "log.level": "info"])
        notify = try NotifySocket()
        process = try TestProcess(
            try TestEnvironment.executable("talus-master"), ["--config", path],
            environment: ["NOTIFY_SOCKET": notify.path],
            logPath: try TestEnvironment.scratchDirectory("master-\(name)") + "/master.log")
        fixture.register(process)
    }

    /// The role `/healthz` reports (nil while not answering).
    func role() async -> String? {
        guard let (_, body) = try? await httpGet(port: port, path: "/healthz"),
              let report = try? JSONDecoder().decode(HealthReport.self, from: Data(body.utf8)) else { return nil }
        return report.checks["role"]
    }

    func waitForRole(_ role: String, timeout: Duration = .seconds(60)) async throws {
        try await waitUntil("talus-master \(role) (log: \(process.logTail(1500)))", timeout: timeout, interval: .milliseconds(100)) {
            guard process.isRunning else { throw TestSupportError("talus-master exited: \(process.logTail())") }
            return await self.role() == role
        }
    }
}

/// A unix datagram socket standing in for systemd's NOTIFY_SOCKET.
final class NotifySocket: @unchecked Sendable {
    let path: String
    let fd: Int32

    init() throws {
        path = try TestEnvironment.scratchDirectory("notify") + "/notify.sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw TestSupportError("cannot bind \(path)") }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    private var received: [String] = []

    /// Every message received so far.
    func messages() -> [String] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            received.append(String(decoding: buffer[0..<n], as: UTF8.self))
        }
        return received
    }

    deinit { close(fd) }
}

@Suite(.serialized) struct ProcessTests {
    @Test func sigkilledMidJobAndRestartedKeepsExactTotals() async throws {
        try await MasterFixture.with("sigkill", overrides: ["master.lease_seconds": "4"]) { f in
            var slaves: [TestSlave] = []
            for i in 0..<3 {
                slaves.append(try await f.slave("s\(i)", capacity: 2, behavior: .init(duplicateEvents: true, work: .milliseconds(80))))
            }
            let first = try MasterProcess(f, name: "first")
            try await first.waitForRole("leader")
            #expect(first.notify.messages().contains { $0.contains("READY=1") && $0.contains("STATUS=leader") })
            let id = try await f.insertJob(limit: 40)
            try await waitUntil("progress under way", timeout: .seconds(90)) { try await f.job(id).progress >= 10 }
            await first.process.stop(signal: SIGKILL)
            let down = try await f.insertJob(limit: 4, name: "inserted-while-down")
            let second = try MasterProcess(f, name: "second")
            // The killed master's lease expires after at most the lease time (4 s here).
            try await second.waitForRole("leader", timeout: .seconds(30))
            let job = try await f.waitForStatus(id, .finished)
            #expect(job.progress == 40)
            #expect(try await f.waitForStatus(down, .finished).progress == 4)
            try await f.settled(id)
            // Every finished run counted once and stored its one result once. A SIGKILL between
            // publishing a chunk of parts and recording them can leave those parts unrecorded:
            // they still run (recorded when they start), so a few more parts than needed may
            // finish — never counted beyond the limit.
            let runs = try await f.database.collection("runs", as: RunDocument.self).find(["job": .objectId(id), "state": "finished"])
            let results = try await f.database.collection("results", as: ResultDocument.self).find(["job": .objectId(id)])
            #expect(Set(results.map(\.run)).count == results.count, "no result stored twice")
            #expect(Set(results.map(\.run)) == Set(runs.map(\.id)))
            #expect(runs.count >= 40 && runs.count <= 40 + 10, "\(runs.count) runs finished")
            #expect(try await f.parts(of: id).filter { $0.status.name == .done }.count == runs.count)
        }
    }

    @Test func aStandbyTakesOverWithinTheLeaseTimeAfterSigkill() async throws {
        try await MasterFixture.with("standby", overrides: ["master.lease_seconds": "4"]) { f in
            let first = try MasterProcess(f, name: "leader")
            try await first.waitForRole("leader")
            let second = try MasterProcess(f, name: "standby")
            try await second.waitForRole("standby")
            #expect(second.notify.messages().contains { $0.contains("READY=1") && $0.contains("STATUS=standby") })
            // The standby does not work: a job is run by the leader only.
            _ = try await f.slave()
            let id = try await f.insertJob(limit: 2)
            _ = try await f.waitForStatus(id, .finished)

            let clock = ContinuousClock()
            await first.process.stop(signal: SIGKILL)
            let killed = clock.now
            try await second.waitForRole("leader", timeout: .seconds(15))
            let takeover = clock.now - killed
            // The lease expires at most 4 s after the kill; the standby polls every 0.67 s and
            // then starts its components (slack for a loaded machine).
            #expect(takeover < .seconds(4) + .seconds(4), "took over after \(takeover)")
            #expect(second.notify.messages().contains { $0.contains("STATUS=leader") })
            let next = try await f.insertJob(limit: 2)
            #expect(try await f.waitForStatus(next, .finished).progress == 2)
        }
    }

    @Test func sigtermReleasesTheLeaseSoTheStandbyTakesOverAtOnce() async throws {
        try await MasterFixture.with("sigterm", overrides: ["master.lease_seconds": "30"]) { f in
            let first = try MasterProcess(f, name: "leader")
            try await first.waitForRole("leader")
            let second = try MasterProcess(f, name: "standby")
            try await second.waitForRole("standby")
            let clock = ContinuousClock()
            let start = clock.now
            await first.process.stop(signal: SIGTERM)
            #expect(!first.process.isRunning)
            #expect(first.process.process.terminationStatus == 0)
            #expect(first.notify.messages().contains { $0.contains("STOPPING=1") })
            try await second.waitForRole("leader", timeout: .seconds(20))
            #expect(clock.now - start < .seconds(15), "long before the 30 s lease would expire")
        }
    }
}
