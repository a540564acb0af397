// The `talus-slave` executable against a private RabbitMQ (the daemon uses the real queue names),
// the real libvirtd and the real test guest: consuming with acks after the end, heartbeats,
// cancel-job and drain control, SIGTERM drain with requeue, a restart after kill -9.

import AMQP
import BSON
import Foundation
import TalusCore
import TalusModel
import TalusTestSupport
import Testing
@testable import TalusSlave

/// One private broker for the daemon tests of this process, with every event collected.
actor DaemonBroker {
    static let shared = DaemonBroker()
    private var started: (broker: PrivateRabbitMQ, connection: AMQPConnection, events: EventCollector)?

    func get() async throws -> (broker: PrivateRabbitMQ, connection: AMQPConnection, events: EventCollector) {
        if let started { return started }
        let broker = try PrivateRabbitMQ()
        try await broker.start()
        let connection = try await AMQPConnection.connect(try AMQPConfiguration(url: broker.url, connectionName: "daemon-tests"))
        try await connection.declareQueue(SlaveTopology.events)
        let events = try await EventCollector(connection: connection, queue: AMQPNames.eventsQueue)
        started = (broker, connection, events)
        return started!
    }
}

/// A `talus-slave` process with its own id, queue, cache and run directories.
final class SlaveProcess: @unchecked Sendable {
    // Set in init and start(); used from one test at a time.
    let dir: String
    let queue = uniqueName("q")
    let imageID = ObjectId()
    let imageSHA256: String
    let guest: GuestArtifacts
    let cache: FileCache
    let broker: PrivateRabbitMQ
    let connection: AMQPConnection
    let events: EventCollector
    var process: TestProcess?
    var id: String { (try? String(contentsOfFile: dir + "/slave-id", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "" }

    init() async throws {
        dir = try TestEnvironment.scratchDirectory("sd")
        guest = try await GuestArtifacts.shared()
        (broker, connection, events) = try await DaemonBroker.shared.get()
        cache = try FileCache(root: dir + "/cache", maxBytes: 1 << 30)
        imageSHA256 = try await cache.add(ArtifactStore.imageKey(imageID), copying: guest.image)
    }

    func start(vms: Int = 2, grace: String = "60s") async throws {
        let yaml = """
            slave:
              id_file: \(dir)/slave-id
              queues: \(queue)
              vms: \(vms)
              memory_mb: 4096
            amqp:
              url: \(broker.url)
            api:
              url: http://127.0.0.1:1
            cache:
              dir: \(dir)/cache
            run:
              dir: \(dir)/run
            agent:
              path: \(guest.agent)
            libvirt:
              uri: \(try TestEnvironment.libvirtURI())
              domain_type: qemu
            guest:
              boot_timeout: 150s
            heartbeat:
              interval: 1s
            shutdown:
              grace: \(grace)
            metrics:
              listen: ""
            log:
              level: debug
            """
        try yaml.write(toFile: dir + "/slave.yaml", atomically: true, encoding: .utf8)
        let p = try TestProcess(try TestEnvironment.executable("talus-slave"), ["--config", dir + "/slave.yaml"],
                                logPath: dir + "/slave-\(Date().timeIntervalSince1970).log")
        process = p
        try await waitUntil("talus-slave to come online", timeout: .seconds(60)) {
            guard p.isRunning else { throw TestSupportError("talus-slave exited: \(p.logTail())") }
            return self.events.all.contains { if case .slaveOnline(let info) = $0.body { info.uuid == self.id } else { false } }
        }
    }

    /// A part of `job` running `script`.
    func part(_ script: String, job: ObjectId, idx: Int, timeoutS: Int = 300) async throws -> PartMessage {
        let commit = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await cache.add(try ArtifactStore.bundleKey(name: "t", commit: commit), copying: try makeBundle(script: script, in: dir))
        return PartMessage(job: job, idx: idx, attempt: 1,
                           image: PartImage(id: imageID, sha256: imageSHA256, chain: []),
                           tool: PartTool(name: "t", commit: commit, entry: "sh ./run.sh"), params: [:],
                           vm: VMShape(cpus: 1, memoryMB: 256, timeoutS: timeoutS), network: .none, deadline: nil, debug: false)
    }

    func publish(_ part: PartMessage) async throws {
        let body = try TalusJSON.encoder().encode(part)
        try await connection.publish(AMQPMessage(body: Array(body)), exchange: AMQPNames.partsExchange, routingKey: queue, mandatory: true).wait()
    }

    func control(_ message: ControlMessage) async throws {
        let body = try TalusJSON.encoder().encode(message)
        try await connection.publish(AMQPMessage(body: Array(body)), exchange: AMQPNames.controlExchange, routingKey: "").wait()
    }

    /// Part events of `job` from this slave.
    func partEvents(_ job: ObjectId) -> [EventMessage] {
        events.all.filter { $0.source?.job == job }
    }

    func ended(_ job: ObjectId) -> [EventMessage] {
        partEvents(job).filter { $0.ended != nil }
    }

    func waitForEnded(_ job: ObjectId, count: Int, timeout: Duration = .seconds(300)) async throws -> [EventMessage] {
        try await waitUntil("\(count) parts of \(job.hex) to end", timeout: timeout) { self.ended(job).count >= count }
        return ended(job)
    }

    /// Waits until the tools of `count` parts of `job` print `marker`.
    func waitForToolOutput(_ job: ObjectId, _ marker: String, count: Int, timeout: Duration = .seconds(240)) async throws {
        try await waitUntil("\(count) tools of \(job.hex) to print \(marker)", timeout: timeout) {
            Set(self.partEvents(job).filter { if case .log(_, let m)? = $0.report { m.contains(marker) } else { false } }.map { $0.source!.run }).count >= count
        }
    }

    func ownedDomains() async throws -> [String] {
        let c = try await LibvirtTestConnection.shared()
        return try await c.listDomains(ownerPrefix: "part:\(id):").map(\.domain.name)
    }

    func queueDepth() async throws -> UInt32 {
        try await connection.inspectQueue(AMQPNames.partsQueue(queue)).messageCount
    }

    func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(120)) async {
        await process?.stop(signal: signal, timeout: timeout)
    }
}

import Libvirt

enum LibvirtTestConnection {
    static func shared() async throws -> LibvirtConnection { try await LibvirtConnection(uri: try TestEnvironment.libvirtURI()) }
}

@Suite("talus-slave daemon", .serialized, .timeLimit(.minutes(15)))
struct SlaveDaemonTests {
    @Test func takesPartsInParallelAcksAfterTheEndSendsHeartbeatsAndStopsCleanly() async throws {
        let s = try await SlaveProcess()
        try await s.start(vms: 2)
        let job = ObjectId()
        for idx in 0..<3 { try await s.publish(try await s.part("echo part-\(idx)-ran", job: job, idx: idx)) }
        // Two VMs at once: the third part waits in the queue, unacked parts are not there.
        try await waitUntil("two parts started and one waiting", timeout: .seconds(60)) {
            Set(s.partEvents(job).filter { $0.body == .partStarted }.map(\.source!.idx)).count == 2
        }
        #expect(try await s.queueDepth() == 1)
        let ended = try await s.waitForEnded(job, count: 3)
        #expect(ended.allSatisfy { $0.ended?.outcome == .success })
        #expect(Set(ended.map(\.source!.idx)) == [0, 1, 2])
        try await waitUntil("the queue to be empty") { try await s.queueDepth() == 0 }

        // Heartbeats carry the capacity; while parts ran they listed them.
        let beats = s.events.all.compactMap { if case .heartbeat(let i) = $0.body, i.uuid == s.id { i } else { nil } }
        #expect(beats.count >= 2)
        #expect(beats.allSatisfy { $0.capacity.vms == 2 && $0.capacity.memoryMB == 4096 })
        #expect(beats.contains { $0.running.count == 2 })

        await s.stop()
        #expect(s.process?.process.terminationStatus == 0, "\(s.process?.logTail() ?? "")")
        #expect(s.events.all.contains { if case .slaveOffline(let i) = $0.body { i.uuid == s.id } else { false } })
    }

    @Test func cancelJobStopsEveryVMWithinSecondsAndLaterPartsEndWithoutBooting() async throws {
        let s = try await SlaveProcess()
        try await s.start(vms: 2)
        let job = ObjectId()
        for idx in 0..<2 { try await s.publish(try await s.part("echo waiting-for-cancel; sleep 3600", job: job, idx: idx)) }
        try await s.waitForToolOutput(job, "waiting-for-cancel", count: 2)
        #expect(try await s.ownedDomains().count == 2)
        let cancelledAt = ContinuousClock.now
        try await s.control(ControlMessage(.cancelJob, job: job))
        try await waitUntil("every VM of the job gone", timeout: .seconds(10)) { try await s.ownedDomains().isEmpty }
        let took = ContinuousClock.now - cancelledAt
        let ended = try await s.waitForEnded(job, count: 2, timeout: .seconds(15))
        #expect(ended.allSatisfy { $0.ended?.outcome == .cancelled })
        // A part of the cancelled job that arrives later ends at once, without a VM.
        let lateAt = ContinuousClock.now
        try await s.publish(try await s.part("echo should-never-run", job: job, idx: 2))
        let all = try await s.waitForEnded(job, count: 3, timeout: .seconds(15))
        #expect(ContinuousClock.now - lateAt < .seconds(5))
        #expect(all.first { $0.source?.idx == 2 }?.ended?.outcome == .cancelled)
        #expect(!s.partEvents(job).contains { if case .log(_, let m)? = $0.report { m.contains("should-never-run") } else { false } })
        try await waitUntil("the queue to be empty") { try await s.queueDepth() == 0 }
        print("cancel-job: every VM gone after \(took)")
        await s.stop()
    }

    @Test func drainStopsTakingPartsAndSigtermRequeuesWhatDidNotFinish() async throws {
        let s = try await SlaveProcess()
        try await s.start(vms: 1, grace: "3s")
        try await s.control(ControlMessage(.drainSlave, slave: s.id))
        try await waitUntil("a heartbeat saying draining") {
            s.events.all.contains { if case .heartbeat(let i) = $0.body { i.uuid == s.id && i.draining } else { false } }
        }
        let job = ObjectId()
        try await s.publish(try await s.part("echo long-part; sleep 3600", job: job, idx: 0))
        try await s.publish(try await s.part("echo second; sleep 3600", job: job, idx: 1))
        try await waitUntil("the parts to wait in the queue") { try await s.queueDepth() == 2 }
        #expect(s.partEvents(job).isEmpty, "a draining slave takes no parts")
        try await s.control(ControlMessage(.undrainSlave, slave: s.id))
        try await s.waitForToolOutput(job, "long-part", count: 1)
        #expect(try await s.queueDepth() == 1, "one VM slot: the second part waits")

        // SIGTERM: no new parts; after the grace the running part is cancelled and requeued.
        await s.stop()
        #expect(s.process?.process.terminationStatus == 0, "\(s.process?.logTail() ?? "")")
        #expect(s.ended(job).map { $0.ended?.outcome } == [.cancelled])
        #expect(try await s.queueDepth() == 2, "both parts are back in the queue")
        #expect(try await s.ownedDomains().isEmpty)
        #expect(s.events.all.contains { if case .slaveOffline(let i) = $0.body { i.uuid == s.id } else { false } })
    }

    @Test func killedSlaveLeavesNoVMAndItsPartRunsAgainAfterARestart() async throws {
        let s = try await SlaveProcess()
        try await s.start(vms: 1)
        let job = ObjectId()
        try await s.publish(try await s.part("echo first-try; sleep 3600", job: job, idx: 0))
        try await s.waitForToolOutput(job, "first-try", count: 1)
        let firstRun = try #require(s.partEvents(job).first?.source?.run)
        await s.stop(signal: SIGKILL)
        // libvirt destroys the killed slave's auto-destroy domains with its connection.
        try await waitUntil("the killed slave's VM to be gone", timeout: .seconds(20)) { try await s.ownedDomains().isEmpty }
        try await waitUntil("the part to be back in the queue") { try await s.queueDepth() == 1 }
        #expect(s.ended(job).isEmpty)

        try await s.start(vms: 1)
        try await waitUntil("the part to run again under a new run", timeout: .seconds(240)) {
            s.partEvents(job).contains { $0.body == .partStarted && $0.source?.run != firstRun }
        }
        try await s.control(ControlMessage(.cancelJob, job: job))
        _ = try await s.waitForEnded(job, count: 1, timeout: .seconds(30))
        #expect(!FileManager.default.fileExists(atPath: s.dir + "/run/" + firstRun), "the old run directory was cleaned up")
        await s.stop()
    }
}
