// What the slave tests share: a part environment on the real libvirtd with the real test guest
// and agent, events on a queue of the test's own on the shared RabbitMQ, tool bundles made from
// shell scripts.

import AMQP
import BSON
import Foundation
import Libvirt
import Logging
import TalusCore
import TalusModel
import TalusTestSupport
@testable import TalusSlave

/// A tool bundle (tar.gz with `tool/run.sh` and its manifest) made in a scratch directory.
func makeBundle(script: String, in dir: String, name: String = "t") throws -> String {
    let src = dir + "/bundle-src-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: src + "/tool", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: src + "/components", withIntermediateDirectories: true)
    try script.write(toFile: src + "/tool/run.sh", atomically: true, encoding: .utf8)
    let manifest = #"{"name":"\#(name)","description":"test tool","entry":"sh ./run.sh","params":[]}"#
    try manifest.write(toFile: src + "/tool/talus-tool.json", atomically: true, encoding: .utf8)
    let out = src + ".tar.gz"
    let tar = Process()
    tar.executableURL = URL(fileURLWithPath: "/bin/tar")
    tar.arguments = ["-czf", out, "-C", src, "tool", "components"]
    try tar.run()
    tar.waitUntilExit()
    guard tar.terminationStatus == 0 else { throw TestSupportError("tar failed") }
    return out
}

/// Collects the events published on a queue of the test's own.
final class EventCollector: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var received: [EventMessage] = []
    private var task: Task<Void, Never>?

    init(connection: AMQPConnection, queue: String) async throws {
        let consumer = try await connection.consume(queue: queue, prefetch: 500)
        task = Task {
            do {
                for try await delivery in consumer {
                    if let event = try? TalusJSON.decoder().decode(EventMessage.self, from: Data(delivery.body)) {
                        self.lock.withLock { self.received.append(event) }
                    }
                    try? delivery.ack()
                }
            } catch {}
        }
    }

    var all: [EventMessage] { lock.withLock { received } }

    func events(run: String) -> [EventMessage] { all.filter { $0.source?.run == run } }

    /// Waits for the part-ended event of `run` and returns all of the run's events.
    func waitForEnd(run: String, timeout: Duration = .seconds(240)) async throws -> [EventMessage] {
        try await waitUntil("part-ended of run \(run)", timeout: timeout) {
            self.events(run: run).contains { if case .partEnded = $0.body { true } else { false } }
        }
        return events(run: run).sorted { $0.source!.seq < $1.source!.seq }
    }

    func stop() { task?.cancel() }
}

/// A part environment as a slave has one, on the real services.
final class PartHarness: @unchecked Sendable {
    // Immutable after init.
    let dir: String
    let guest: GuestArtifacts
    let cache: FileCache
    let artifacts: ArtifactStore
    let host: VMHost
    let amqp: AMQPConnection
    let eventsQueue: String
    let sink: AMQPEventSink
    let events: EventCollector
    let slaveID = UUID().uuidString.lowercased()
    let imageID = ObjectId()
    let imageSHA256: String
    let metrics = SlaveMetrics()

    static func make() async throws -> PartHarness { try await PartHarness() }

    private init() async throws {
        dir = try TestEnvironment.scratchDirectory("slv")
        guest = try await GuestArtifacts.shared()
        cache = try FileCache(root: dir + "/cache", maxBytes: 1 << 30)
        imageSHA256 = try await cache.add(ArtifactStore.imageKey(imageID), copying: guest.image)
        artifacts = ArtifactStore(cache: cache, downloader: nil)
        host = try await VMHost.open(uri: try TestEnvironment.libvirtURI(), domainType: .qemu)
        amqp = try await AMQPConnection.connect(try AMQPConfiguration(url: try TestEnvironment.amqpURL(), connectionName: "slave-tests"))
        eventsQueue = uniqueName("slave-events")
        try await amqp.declareQueue(AMQPQueue(eventsQueue, durable: false, autoDelete: false))
        sink = AMQPEventSink(connection: amqp, queue: eventsQueue)
        events = try await EventCollector(connection: amqp, queue: eventsQueue)
    }

    func environment(agent: String? = nil, limits: GuestLimits = GuestLimits(bootTimeout: .seconds(150))) -> PartEnvironment {
        var logger = Logger(label: "talus.slave.test")
        logger.logLevel = .debug
        return PartEnvironment(slaveID: slaveID, host: host, artifacts: artifacts, agentPath: agent ?? guest.agent,
                               runDir: dir + "/run", limits: limits, logger: logger, metrics: metrics)
    }

    /// A part running `script` as its tool (the bundle goes into the cache under a fresh commit).
    func part(script: String, timeoutS: Int = 300, params: BSONDocument = [:], idx: Int = 0, job: ObjectId = ObjectId()) async throws -> PartMessage {
        let commit = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let bundle = try makeBundle(script: script, in: dir)
        try await cache.add(try ArtifactStore.bundleKey(name: "t", commit: commit), copying: bundle)
        return PartMessage(job: job, idx: idx, attempt: 1,
                           image: PartImage(id: imageID, sha256: imageSHA256,
                                            chain: [ImageChainEntry(id: imageID, sha256: imageSHA256, size: 0, backing: nil)]),
                           tool: PartTool(name: "t", commit: commit, entry: "sh ./run.sh"), params: params,
                           vm: VMShape(cpus: 1, memoryMB: 256, timeoutS: timeoutS), network: .none, deadline: nil, debug: false)
    }

    func domainExists(_ name: String) async throws -> Bool {
        try await host.connection().domainIfExists(named: name) != nil
    }

    func close() async {
        events.stop()
        _ = try? await amqp.deleteQueue(eventsQueue)
        await amqp.close()
        _ = try? await host.destroyDomains(ownerPrefix: "part:\(slaveID):")
        await host.close()
    }
}

extension EventMessage {
    var report: ToolReport? { if case .report(let r) = body { r } else { nil } }
    var ended: (outcome: PartOutcome, reason: String?, exitCode: Int?, serialTail: String?)? {
        if case .partEnded(let o, let r, let c, let s) = body { (o, r, c, s) } else { nil }
    }
}
