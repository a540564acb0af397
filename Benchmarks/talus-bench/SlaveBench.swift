// talus-bench slave sync|overhead|throughput: the slave against the plain tools, in the same run.
//
// sync: a random file (1 GiB by default) served by `python3 -m http.server` on loopback, laid
//   out as the API's image file URL, fetched through the slave's real path (ArtifactStore →
//   FileCache → APIDownloader: streamed, sha256 while streaming, fsync, temp file + rename),
//   next to `curl -o` of the same URL, and to `curl -o; sha256sum; sync FILE` (the same work
//   with the plain tools, serially). Best of N rounds each, alternating. Target: ≥ 0.8× curl.
// overhead: parts handed to a PartRun (the slave's part runner) on the real libvirtd with the
//   test guest and the static agent; measured from the hand-over to the domain running
//   (`PartRun.timeline.domainCreated`), i.e. part-started confirmed by RabbitMQ, cache lease,
//   qcow2 overlay, config ISO, domain XML and create. The guest's boot is excluded: each part is
//   cancelled as soon as its domain runs. Target: p50 < 1 s.
// throughput: the slave daemon itself (the TalusSlave `Slave` service: consumer, prefetch, parts,
//   acks) with 2 VM slots on the real RabbitMQ (a namespace of its own) and libvirtd, running
//   parts of a trivial tool (`exit 0`) in the test guest, next to a shell loop that boots the
//   same guest with the `qemu-system-x86_64` settings libvirt uses for a part (read off
//   /var/log/libvirt/qemu/<domain>.log), two at a time, each guest running a trivial `run.sh`
//   from a config ISO and powering itself off. Rounds alternate (2 guests in the loop, then 2
//   parts on the slave) so that both see the same load. Parts per minute. Target: ≥ 0.8× the loop.
//   KVM does not work on the development machine: pass `--domain-type qemu` there.

import AMQP
import ArgumentParser
import AsyncHTTPClient
import BSON
import Foundation
import Libvirt
import Logging
import ServiceLifecycle
import TalusCore
import TalusModel
import TalusSlave

struct SlaveBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slave",
        abstract: "The slave's image sync, per-part overhead and job throughput vs. the plain tools.",
        subcommands: [SlaveSyncBench.self, SlaveOverheadBench.self, SlaveThroughputBench.self])
}

/// Runs `body` and returns its wall time.
private func timed(_ body: () async throws -> Void) async rethrows -> Duration {
    let start = ContinuousClock.now
    try await body()
    return ContinuousClock.now - start
}

struct SlaveSyncBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Image sync through the slave's cache and downloader vs. curl -o, same file, same server.")

    @OptionGroup var options: ImageBenchOptions

    @Option(help: "Size of the served file in MiB.")
    var sizeMB = 1024

    @Option(help: "Rounds of each (the best is reported).")
    var rounds = 3

    @Option(name: .customLong("batch-kib"), help: "The downloader's batch size in KiB (default: the slave's).")
    var batchKiB: Int?

    @Option(help: "The downloader's batches in flight (default: the slave's).")
    var depth: Int?

    func run() async throws {
        let dir = try options.scratch("slave-sync")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let imageID = ObjectId()
        let served = dir + "/www/api/v1/images/\(imageID.hex)"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        let file = served + "/file"
        _ = try await runCommand("/bin/sh", ["-c", "head -c \(sizeMB)M /dev/urandom > '\(file)'"], timeout: .seconds(600))
        let (digest, size) = try await blockingIO { try sha256OfFile(file) }

        // The server: python's http.server on a free loopback port, started through the shell (a
        // Foundation `Process` would reap the children of `runCommand` behind its back).
        let port = Int.random(in: 20000...60000)
        let started = try await runCommand("/bin/sh", ["-c", """
            python3 -m http.server --bind 127.0.0.1 --directory '\(dir)/www' \(port) >/dev/null 2>&1 </dev/null &
            echo $!
            """], timeout: .seconds(30))
        guard let serverPID = Int32(started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw ValidationError("could not start python3 -m http.server: \(started.stderr)")
        }
        defer { kill(serverPID, SIGKILL) }
        let base = "http://127.0.0.1:\(port)"
        let url = base + "/api/v1/images/\(imageID.hex)/file"
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            var probe = HTTPClientRequest(url: url)
            probe.method = .HEAD
            if let r = try? await client.execute(probe, timeout: .seconds(5)), r.status == .ok { break }
            guard ContinuousClock.now < deadline else {
                try? await client.shutdown()
                throw ValidationError("python3 -m http.server did not start on port \(port)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        var logger = Logger(label: "bench.slave.sync")
        logger.logLevel = .warning
        var downloader = APIDownloader(client: client, baseURL: base, token: nil, logger: logger)
        if let batchKiB { downloader.batchBytes = batchKiB << 10 }
        if let depth { downloader.maxBatchesInFlight = depth }
        var ours: [Duration] = []
        var curl: [Duration] = []
        var same: [Duration] = []
        do {
            for round in 1...rounds {
                // The slave: a fresh cache each round, the image acquired as a part would.
                let cacheDir = dir + "/cache-\(round)"
                let cache = try FileCache(root: cacheDir, maxBytes: Int64(sizeMB + 64) << 20)
                let store = ArtifactStore(cache: cache, downloader: downloader, logger: logger)
                let image = PartImage(id: imageID, sha256: digest,
                                      chain: [ImageChainEntry(id: imageID, sha256: digest, size: size, backing: nil)])
                var lease: ImageLease?
                ours.append(try await timed { lease = try await store.acquireImage(image, logger: logger) })
                let path = lease!.path
                let got = try await blockingIO { try sha256OfFile(path) }
                guard got.hex == digest else { throw ValidationError("the slave's copy has sha256 \(got.hex), expected \(digest)") }
                await lease!.release()
                try? FileManager.default.removeItem(atPath: cacheDir)

                // curl -o of the same URL.
                let out = dir + "/curl.out"
                curl.append(try await timed {
                    _ = try await runCommand("curl", ["-sf", "-o", out, url], timeout: .seconds(1800))
                })
                try? FileManager.default.removeItem(atPath: out)

                // The same work with the plain tools, one after the other: curl, sha256sum, fsync.
                same.append(try await timed {
                    _ = try await runCommand("/bin/sh", ["-c", "curl -sf -o '\(out)' '\(url)' && sha256sum '\(out)' >/dev/null && sync '\(out)'"],
                                             timeout: .seconds(1800))
                })
                try? FileManager.default.removeItem(atPath: out)
            }
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()

        let mb = Double(size) / 1e6
        let bestOurs = mb / ours.min()!.secondsDouble
        let bestCurl = mb / curl.min()!.secondsDouble
        let bestSame = mb / same.min()!.secondsDouble
        if options.json {
            let result: [String: Any] = [
                "size_bytes": size, "rounds": rounds, "slave_mb_s": bestOurs, "curl_mb_s": bestCurl,
                "ratio": bestOurs / bestCurl, "target_ratio": 0.8,
                "curl_sha256sum_sync_mb_s": bestSame, "ratio_vs_curl_sha256sum_sync": bestOurs / bestSame,
                "slave_s": ours.map(\.secondsDouble), "curl_s": curl.map(\.secondsDouble), "curl_sha256sum_sync_s": same.map(\.secondsDouble),
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "image sync, %.0f MB over loopback HTTP (python3 -m http.server), best of %d", mb, rounds))
            print(String(format: "  slave (cache + downloader, sha256, fsync, rename): %7.1f MB/s   rounds: %@ s", bestOurs,
                         ours.map { String(format: "%.2f", $0.secondsDouble) }.joined(separator: " ")))
            print(String(format: "  curl -o (no hash, no fsync):                        %7.1f MB/s   rounds: %@ s", bestCurl,
                         curl.map { String(format: "%.2f", $0.secondsDouble) }.joined(separator: " ")))
            print(String(format: "  curl -o; sha256sum; sync FILE (same work, serial):   %7.1f MB/s   rounds: %@ s", bestSame,
                         same.map { String(format: "%.2f", $0.secondsDouble) }.joined(separator: " ")))
            print(String(format: "  ratio slave/curl: %.2fx (target ≥ 0.8x); slave/(curl+sha256sum+sync): %.2fx",
                         bestOurs / bestCurl, bestOurs / bestSame))
        }
    }
}

struct SlaveOverheadBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overhead",
        abstract: "Per-part overhead of the slave's part runner: hand-over to domain running (boot excluded).")

    @OptionGroup var bench: PartBenchOptions

    @Option(help: "Parts to run, one after the other.")
    var parts = 10

    func run() async throws {
        let fixture = try await SlaveBenchFixture.make(bench, name: "slave-overhead")
        defer { fixture.remove() }
        let dir = fixture.dir
        var logger = Logger(label: "bench.slave.part")
        logger.logLevel = .warning
        let artifacts = ArtifactStore(cache: fixture.cache, downloader: nil, logger: logger)
        let host = try await VMHost.open(uri: bench.services.libvirtURI, domainType: fixture.domainType)
        let connection = try await AMQPConnection.connect(try AMQPConfiguration(url: fixture.amqpURL, connectionName: "talus-bench-slave"))
        let queue = "bench-slave-events-\(UInt32.random(in: 0...UInt32.max))"
        _ = try await connection.declareQueue(AMQPQueue(queue, durable: false, autoDelete: false))
        let sink = AMQPEventSink(connection: connection, queue: queue, logger: logger)
        let slaveID = UUID().uuidString.lowercased()
        let env = PartEnvironment(slaveID: slaveID, host: host, artifacts: artifacts, agentPath: fixture.agent, runDir: dir + "/run",
                                  limits: GuestLimits(cancelGrace: .milliseconds(200)), logger: logger)

        var overheads: [Duration] = []
        var failures: [String] = []
        do {
            for idx in 0..<parts {
                let part = fixture.part(job: ObjectId(), idx: idx)
                let handed = ContinuousClock.now
                let run = PartRun(part: part, env: env, sink: sink, received: handed)
                let execution = Task { await run.execute() }
                // Cancel as soon as the domain runs: the guest's boot is not the slave's overhead.
                while run.timeline.withLock({ $0.domainCreated }) == nil, run.timeline.withLock({ $0.ended }) == nil {
                    try await Task.sleep(for: .milliseconds(5))
                }
                run.cancel(reason: "benchmark: domain running")
                let result = await execution.value
                if let created = run.timeline.withLock({ $0.domainCreated }) {
                    overheads.append(created - handed)
                } else {
                    failures.append("part \(idx): \(result.outcome.rawValue) \(result.reason ?? "")")
                }
            }
        } catch {
            failures.append("\(error)")
        }
        _ = try? await host.destroyDomains(ownerPrefix: env.ownerPrefix)
        await host.close()
        _ = try? await connection.deleteQueue(queue)
        await connection.close()
        guard !overheads.isEmpty else { throw ValidationError("no part reached a running domain: \(failures.joined(separator: "; "))") }

        let ms = overheads.map { $0.secondsDouble * 1000 }.sorted()
        let p50 = percentile(ms, 50), p99 = percentile(ms, 99)
        if bench.services.json {
            let result: [String: Any] = [
                "parts": ms.count, "p50_ms": p50, "p99_ms": p99, "max_ms": ms.last!, "target_p50_ms": 1000,
                "failures": failures,
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print("slave overhead per part (hand-over to domain running, boot excluded), \(ms.count) parts, domain type \(host.domainType)")
            print(String(format: "  p50 %7.1f ms   p99 %7.1f ms   max %7.1f ms   (target p50 < 1000 ms)", p50, p99, ms.last!))
            for failure in failures { print("  failed: \(failure)") }
        }
    }
}

/// The options of the part benchmarks: the services, and the broker.
struct PartBenchOptions: ParsableArguments {
    @OptionGroup var services: ImageBenchOptions

    @Option(help: "AMQP URL (default: $TALUS_TEST_AMQP_URL).")
    var amqp: String?
}

/// What the part benchmarks share: the test guest and the static agent (built or cached by the
/// images/ scripts), a scratch directory, a slave cache holding the guest as an image and a
/// trivial tool bundle (`tool/run.sh` exits 0), and the broker.
struct SlaveBenchFixture {
    let dir: String
    let guest: String
    let agent: String
    let amqpURL: String
    let domainType: DomainTypeSetting
    let cache: FileCache
    let imageID = ObjectId()
    let imageSHA256: String
    let commit = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()

    static func make(_ bench: PartBenchOptions, name: String) async throws -> SlaveBenchFixture {
        let options = bench.services
        guard let amqpURL = bench.amqp ?? options.environment["TALUS_TEST_AMQP_URL"] else {
            throw ValidationError("no RabbitMQ: pass --amqp or source the dev env.sh (TALUS_TEST_AMQP_URL)")
        }
        guard let domainType = DomainTypeSetting(rawValue: options.domainType) else {
            throw ValidationError("--domain-type must be one of auto, kvm, qemu")
        }
        let root = try ImageBenchOptions.repositoryRoot()
        func lastLine(_ script: String) async throws -> String {
            let out = try await runCommand(root + "/images/" + script, [], timeout: .seconds(1800))
            guard let path = out.stdout.split(separator: "\n").last.map(String.init) else {
                throw ValidationError("\(script) printed no path")
            }
            return path
        }
        let guest = try await lastLine("build-test-guest.sh")
        let agent = try await lastLine("build-agent.sh")
        let dir = try options.scratch(name)
        do {
            return try await SlaveBenchFixture(dir: dir, guest: guest, agent: agent, amqpURL: amqpURL, domainType: domainType)
        } catch {
            try? FileManager.default.removeItem(atPath: dir)
            throw error
        }
    }

    private init(dir: String, guest: String, agent: String, amqpURL: String, domainType: DomainTypeSetting) async throws {
        self.dir = dir; self.guest = guest; self.agent = agent; self.amqpURL = amqpURL; self.domainType = domainType
        cache = try FileCache(root: dir + "/cache", maxBytes: 1 << 30)
        imageSHA256 = try await cache.add(ArtifactStore.imageKey(imageID), copying: guest)
        try await cache.add(try ArtifactStore.bundleKey(name: "bench", commit: commit), copying: try await Self.makeBundle(in: dir))
    }

    /// A part of the trivial tool in the test guest.
    func part(job: ObjectId, idx: Int, timeoutS: Int = 300) -> PartMessage {
        PartMessage(job: job, idx: idx, attempt: 1,
                    image: PartImage(id: imageID, sha256: imageSHA256,
                                     chain: [ImageChainEntry(id: imageID, sha256: imageSHA256, size: 0, backing: nil)]),
                    tool: PartTool(name: "bench", commit: commit, entry: "sh ./run.sh"), params: [:],
                    vm: VMShape(cpus: 1, memoryMB: 256, timeoutS: timeoutS), network: .none, deadline: nil, debug: false)
    }

    func remove() { try? FileManager.default.removeItem(atPath: dir) }

    /// A trivial tool bundle (`tool/run.sh` exits 0) as the slave receives one.
    private static func makeBundle(in dir: String) async throws -> String {
        let src = dir + "/bundle"
        try FileManager.default.createDirectory(atPath: src + "/tool", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: src + "/components", withIntermediateDirectories: true)
        try "exit 0\n".write(toFile: src + "/tool/run.sh", atomically: true, encoding: .utf8)
        try #"{"name":"bench","description":"benchmark tool","entry":"sh ./run.sh","params":[]}"#
            .write(toFile: src + "/tool/talus-tool.json", atomically: true, encoding: .utf8)
        let out = dir + "/bundle.tar.gz"
        _ = try await runCommand("tar", ["-czf", out, "-C", src, "tool", "components"], timeout: .seconds(60))
        return out
    }
}

struct SlaveThroughputBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "throughput",
        abstract: "Parts per minute of the slave daemon (2 VM slots, trivial tool) vs. a shell loop booting the same guest twice in parallel.")

    @OptionGroup var bench: PartBenchOptions

    @Option(help: "Rounds; each boots 2 guests at once in the loop, then runs 2 parts at once on the slave (alternating, so that both see the same load).")
    var rounds = 4

    @Option(help: "The slave's log level (its log goes to stderr).")
    var slaveLogLevel: Logger.Level = .warning

    func run() async throws {
        let fixture = try await SlaveBenchFixture.make(bench, name: "slave-throughput")
        defer { fixture.remove() }
        let host = try await VMHost.open(uri: bench.services.libvirtURI, domainType: fixture.domainType)
        let domainType = host.domainType
        await host.close()
        let loop = try await ReferenceLoop(fixture, domainType: domainType)
        let slave = try await BenchSlave.start(fixture, libvirtURI: bench.services.libvirtURI, logLevel: slaveLogLevel)
        var slaveWall = Duration.zero, loopWall = Duration.zero
        var partTimes: [Duration] = [], boots: [Duration] = [], failures: [String] = []
        do {
            for _ in 1...rounds {
                let l = try await loop.bootPair()
                loopWall += l.wall
                boots += l.boots
                let r = try await slave.runParts(2)
                slaveWall += r.wall
                partTimes += r.parts
                failures += r.failures
            }
        } catch {
            await slave.stop()
            throw error
        }
        await slave.stop()

        let parts = 2 * rounds
        let slavePPM = Double(parts) / slaveWall.secondsDouble * 60
        let loopPPM = Double(parts) / loopWall.secondsDouble * 60
        let mean = { (d: [Duration]) in d.isEmpty ? .nan : d.map(\.secondsDouble).reduce(0, +) / Double(d.count) }
        if bench.services.json {
            let result: [String: Any] = [
                "parts": parts, "rounds": rounds, "domain_type": "\(domainType)",
                "slave_s": slaveWall.secondsDouble, "slave_parts_per_min": slavePPM, "slave_mean_part_s": mean(partTimes),
                "slave_failures": failures,
                "loop_s": loopWall.secondsDouble, "loop_parts_per_min": loopPPM, "loop_mean_boot_s": mean(boots),
                "ratio": slavePPM / loopPPM, "target_ratio": 0.8,
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print("job throughput, \(parts) parts of a trivial tool, 2 at a time, \(rounds) rounds alternating, domain type \(domainType)")
            print(String(format: "  slave (2 VM slots, RabbitMQ, libvirt, agent):   %6.1f parts/min   wall %6.1f s   mean part (started → ended) %5.1f s",
                         slavePPM, slaveWall.secondsDouble, mean(partTimes)))
            print(String(format: "  shell loop (qemu-system-x86_64, 2 at a time):   %6.1f parts/min   wall %6.1f s   mean boot → poweroff       %5.1f s",
                         loopPPM, loopWall.secondsDouble, mean(boots)))
            print(String(format: "  ratio slave/loop: %.2fx (target ≥ 0.8x)", slavePPM / loopPPM))
            for failure in failures { print("  failed: \(failure)") }
        }
    }
}

/// The slave daemon in this process (the TalusSlave `Slave` service in a service group, as
/// talus-slave runs it) on an AMQP namespace of its own, with the fixture's cache.
private final class BenchSlave {
    let fixture: SlaveBenchFixture
    let names: AMQPNames
    let queue = "throughput"
    let connection: AMQPConnection
    let consumer: AMQPConsumer
    var events: AMQPConsumer.AsyncIterator
    let group: ServiceGroup
    let running: Task<Void, any Error>
    var online = false

    static func start(_ fixture: SlaveBenchFixture, libvirtURI: String, logLevel: Logger.Level) async throws -> BenchSlave {
        let names = AMQPNames(namespace: "bench\(UInt32.random(in: 0...UInt32.max))")
        let settings = Settings(values: [
            "slave.id_file": fixture.dir + "/slave-id", "slave.queues": "throughput", "slave.vms": "2", "slave.memory_mb": "4096",
            "amqp.url": fixture.amqpURL, "amqp.namespace": names.namespace, "api.url": "http://127.0.0.1:1",
            "cache.dir": fixture.dir + "/cache", "run.dir": fixture.dir + "/run", "agent.path": fixture.agent,
            "libvirt.uri": libvirtURI, "libvirt.domain_type": fixture.domainType.rawValue,
            "metrics.listen": "", "log.level": logLevel.rawValue,
        ])
        var logger = Logger(label: "bench.slave.daemon")
        logger.logLevel = logLevel
        let slave = Slave(configuration: try SlaveConfiguration(settings: settings), logger: logger)
        let connection = try await AMQPConnection.connect(try AMQPConfiguration(url: fixture.amqpURL, connectionName: "talus-bench-throughput"))
        do {
            _ = try await connection.declareQueue(SlaveTopology.events(names: names))
            let consumer = try await connection.consume(queue: names.eventsQueue, prefetch: 100)
            return BenchSlave(fixture, names: names, connection: connection, consumer: consumer,
                              group: ServiceGroup(configuration: .init(services: [slave], logger: logger)))
        } catch {
            await connection.close()
            throw error
        }
    }

    private init(_ fixture: SlaveBenchFixture, names: AMQPNames, connection: AMQPConnection, consumer: AMQPConsumer, group: ServiceGroup) {
        self.fixture = fixture
        self.names = names
        self.connection = connection
        self.consumer = consumer
        events = consumer.makeAsyncIterator()
        self.group = group
        running = Task { try await group.run() }
    }

    /// Publishes `count` parts at once (after the slave came online) and waits for their ends.
    func runParts(_ count: Int) async throws -> (wall: Duration, parts: [Duration], failures: [String]) {
        let job = ObjectId()
        var started: [Int: ContinuousClock.Instant] = [:]
        var durations: [Duration] = [], failures: [String] = []
        var ended = 0
        var publishedAt: ContinuousClock.Instant?
        func publish() async throws {
            publishedAt = .now
            for idx in 0..<count {
                let body = try TalusJSON.encoder().encode(fixture.part(job: job, idx: idx))
                try await connection.publish(AMQPMessage(body: Array(body)), exchange: names.partsExchange,
                                             routingKey: queue, mandatory: true).wait()
            }
        }
        if online { try await publish() }
        while let delivery = try await events.next() {
            try? delivery.ack()
            guard let event = try? TalusJSON.decoder().decode(EventMessage.self, from: Data(delivery.body)) else { continue }
            switch event.body {
            case .slaveOnline where !online:
                online = true
                try await publish()
            case .partStarted:
                if let source = event.source, source.job == job { started[source.idx] = .now }
            case .partEnded(let outcome, let reason, _, _):
                guard let source = event.source, source.job == job else { continue }
                ended += 1
                if let start = started[source.idx] { durations.append(.now - start) }
                if outcome != .success { failures.append("part \(source.idx): \(outcome.rawValue) \(reason ?? "")") }
            default:
                break
            }
            if ended == count, let publishedAt { return (.now - publishedAt, durations, failures) }
        }
        throw ValidationError("the slave's events stopped before its parts ended")
    }

    /// Stops the slave the way SIGTERM does, and removes its queues and exchanges.
    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        try? await consumer.cancel()
        _ = try? await connection.deleteQueue(names.eventsQueue)
        _ = try? await connection.deleteQueue(names.partsQueue(queue))
        for exchange in [names.partsExchange, names.controlExchange] { try? await connection.deleteExchange(exchange) }
        await connection.close()
    }
}

/// The reference: the test guest booted by `qemu-system-x86_64` directly, the way libvirt starts
/// it for a part (same machine, accelerator, CPU, memory and devices, read off
/// /var/log/libvirt/qemu/<domain>.log; libvirt's descriptor passing replaced by paths, the VNC
/// server on a unix socket instead of a loopback port), with a fresh qcow2 overlay each boot and
/// a config ISO whose `run.sh` exits 0, after which the guest powers itself off.
private struct ReferenceLoop {
    let dir: String
    let guest: String
    let accel: String

    init(_ fixture: SlaveBenchFixture, domainType: DomainType) async throws {
        dir = fixture.dir + "/loop"
        guest = fixture.guest
        accel = domainType == .kvm ? "kvm" : "tcg"
        try FileManager.default.createDirectory(atPath: dir + "/cfg", withIntermediateDirectories: true)
        try "exit 0\n".write(toFile: dir + "/cfg/run.sh", atomically: true, encoding: .utf8)
        try await ConfigISO.build(dir + "/config.iso", files: ["run.sh": dir + "/cfg/run.sh"], maxBytes: 1 << 20)
    }

    /// Boots two guests at once and waits until both powered off.
    func bootPair() async throws -> (wall: Duration, boots: [Duration]) {
        let script = """
            set -e
            boot() {
                lane=$1; d='\(dir)'
                rm -f "$d/ov-$lane.qcow2" "$d/serial-$lane.log"
                qemu-img create -q -f qcow2 -b '\(guest)' -F qcow2 "$d/ov-$lane.qcow2"
                start=$(date +%s.%N)
                timeout 300 qemu-system-x86_64 -name guest=bench-loop-$lane,debug-threads=on \\
                  -machine pc,usb=off,dump-guest-core=off -accel \(accel) -cpu qemu64 -m 256 -overcommit mem-lock=off \\
                  -smp 1,sockets=1,cores=1,threads=1 -no-user-config -nodefaults -rtc base=utc -boot strict=on \\
                  -device piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2 \\
                  -device virtio-serial-pci,id=virtio-serial0,bus=pci.0,addr=0x3 \\
                  -blockdev driver=file,filename="$d/ov-$lane.qcow2",node-name=disk-storage,discard=unmap \\
                  -blockdev node-name=disk-format,driver=qcow2,file=disk-storage \\
                  -device virtio-blk-pci,bus=pci.0,addr=0x4,drive=disk-format,id=virtio-disk0,bootindex=1 \\
                  -blockdev driver=file,filename="$d/config.iso",node-name=cd-storage,read-only=on \\
                  -blockdev node-name=cd-format,read-only=on,driver=raw,file=cd-storage \\
                  -device ide-cd,bus=ide.1,unit=0,drive=cd-format,id=ide0-1-0 \\
                  -chardev file,id=charserial0,path="$d/serial-$lane.log",append=on \\
                  -device isa-serial,chardev=charserial0,id=serial0,index=0 \\
                  -chardev socket,id=charchannel0,path="$d/channel-$lane.sock",server=on,wait=off \\
                  -device virtserialport,bus=virtio-serial0.0,nr=1,chardev=charchannel0,id=channel0,name=org.talus.agent.0 \\
                  -audiodev none,id=audio1 -vnc unix:"$d/vnc-$lane.sock",audiodev=audio1 \\
                  -device cirrus-vga,id=video0,bus=pci.0,addr=0x2 \\
                  -object rng-random,id=objrng0,filename=/dev/urandom \\
                  -device virtio-rng-pci,rng=objrng0,id=rng0,bus=pci.0,addr=0x5 \\
                  -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \\
                  -msg timestamp=on </dev/null >"$d/qemu-$lane.log" 2>&1
                end=$(date +%s.%N)
                grep -q 'TALUS-GUEST poweroff reason=run.sh-exited' "$d/serial-$lane.log" ||
                    { echo "guest $lane did not run run.sh and power off" >&2; tail -5 "$d/serial-$lane.log" "$d/qemu-$lane.log" >&2; exit 1; }
                echo "boot $start $end"
            }
            boot 1 > '\(dir)/boot-1.out' & a=$!
            boot 2 > '\(dir)/boot-2.out' & b=$!
            wait $a; wait $b
            cat '\(dir)/boot-1.out' '\(dir)/boot-2.out'
            """
        let start = ContinuousClock.now
        let out = try await runCommand("/bin/sh", ["-c", script], timeout: .seconds(900))
        let wall = ContinuousClock.now - start
        let boots = out.stdout.split(separator: "\n").compactMap { line -> Duration? in
            let f = line.split(separator: " ")
            guard f.count == 3, f[0] == "boot", let a = Double(f[1]), let b = Double(f[2]) else { return nil }
            return .milliseconds(Int((b - a) * 1000))
        }
        return (wall, boots)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
