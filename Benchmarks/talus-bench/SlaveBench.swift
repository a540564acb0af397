// talus-bench slave sync|overhead: the slave's building blocks against the plain tools, in the
// same run.
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

import AMQP
import ArgumentParser
import AsyncHTTPClient
import BSON
import Foundation
import Logging
import TalusCore
import TalusModel
import TalusSlave

struct SlaveBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slave",
        abstract: "The slave's image sync and per-part overhead vs. the plain tools.",
        subcommands: [SlaveSyncBench.self, SlaveOverheadBench.self])
}

/// Runs `body` and returns its wall time.
private func timed(_ body: () async throws -> Void) async rethrows -> Duration {
    let start = ContinuousClock.now
    try await body()
    return ContinuousClock.now - start
}

private func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

struct SlaveSyncBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Image sync through the slave's cache and downloader vs. curl -o, same file, same server.")

    @OptionGroup var options: ImageBenchOptions

    @Option(help: "Size of the served file in MiB.")
    var sizeMB = 1024

    @Option(help: "Rounds of each (the best is reported).")
    var rounds = 3

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
        let downloader = APIDownloader(client: client, baseURL: base, token: nil, logger: logger)
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
        let bestOurs = mb / seconds(ours.min()!)
        let bestCurl = mb / seconds(curl.min()!)
        let bestSame = mb / seconds(same.min()!)
        if options.json {
            let result: [String: Any] = [
                "size_bytes": size, "rounds": rounds, "slave_mb_s": bestOurs, "curl_mb_s": bestCurl,
                "ratio": bestOurs / bestCurl, "target_ratio": 0.8,
                "curl_sha256sum_sync_mb_s": bestSame, "ratio_vs_curl_sha256sum_sync": bestOurs / bestSame,
                "slave_s": ours.map(seconds), "curl_s": curl.map(seconds), "curl_sha256sum_sync_s": same.map(seconds),
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "image sync, %.0f MB over loopback HTTP (python3 -m http.server), best of %d", mb, rounds))
            print(String(format: "  slave (cache + downloader, sha256, fsync, rename): %7.1f MB/s   rounds: %@ s", bestOurs,
                         ours.map { String(format: "%.2f", seconds($0)) }.joined(separator: " ")))
            print(String(format: "  curl -o (no hash, no fsync):                        %7.1f MB/s   rounds: %@ s", bestCurl,
                         curl.map { String(format: "%.2f", seconds($0)) }.joined(separator: " ")))
            print(String(format: "  curl -o; sha256sum; sync FILE (same work, serial):   %7.1f MB/s   rounds: %@ s", bestSame,
                         same.map { String(format: "%.2f", seconds($0)) }.joined(separator: " ")))
            print(String(format: "  ratio slave/curl: %.2fx (target ≥ 0.8x); slave/(curl+sha256sum+sync): %.2fx",
                         bestOurs / bestCurl, bestOurs / bestSame))
        }
    }
}

struct SlaveOverheadBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overhead",
        abstract: "Per-part overhead of the slave's part runner: hand-over to domain running (boot excluded).")

    @OptionGroup var options: ImageBenchOptions

    @Option(help: "AMQP URL for the part events (default: $TALUS_TEST_AMQP_URL).")
    var amqp: String?

    @Option(help: "Parts to run, one after the other.")
    var parts = 10

    func run() async throws {
        guard let amqpURL = amqp ?? options.environment["TALUS_TEST_AMQP_URL"] else {
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

        let dir = try options.scratch("slave-overhead")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var logger = Logger(label: "bench.slave.part")
        logger.logLevel = .warning
        let cache = try FileCache(root: dir + "/cache", maxBytes: 1 << 30)
        let imageID = ObjectId()
        let imageSHA = try await cache.add(ArtifactStore.imageKey(imageID), copying: guest)
        let commit = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await cache.add(try ArtifactStore.bundleKey(name: "bench", commit: commit), copying: try makeBundle(in: dir))
        let artifacts = ArtifactStore(cache: cache, downloader: nil, logger: logger)
        let host = try await VMHost.open(uri: options.libvirtURI, domainType: domainType)
        let connection = try await AMQPConnection.connect(try AMQPConfiguration(url: amqpURL, connectionName: "talus-bench-slave"))
        let queue = "bench-slave-events-\(UInt32.random(in: 0...UInt32.max))"
        _ = try await connection.declareQueue(AMQPQueue(queue, durable: false, autoDelete: false))
        let sink = AMQPEventSink(connection: connection, queue: queue, logger: logger)
        let slaveID = UUID().uuidString.lowercased()
        let env = PartEnvironment(slaveID: slaveID, host: host, artifacts: artifacts, agentPath: agent, runDir: dir + "/run",
                                  limits: GuestLimits(cancelGrace: .milliseconds(200)), logger: logger)

        var overheads: [Duration] = []
        var failures: [String] = []
        do {
            for idx in 0..<parts {
                let part = PartMessage(job: ObjectId(), idx: idx, attempt: 1,
                                       image: PartImage(id: imageID, sha256: imageSHA,
                                                        chain: [ImageChainEntry(id: imageID, sha256: imageSHA, size: 0, backing: nil)]),
                                       tool: PartTool(name: "bench", commit: commit, entry: "sh ./run.sh"), params: [:],
                                       vm: VMShape(cpus: 1, memoryMB: 256, timeoutS: 300), network: .none, deadline: nil, debug: false)
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

        let ms = overheads.map { seconds($0) * 1000 }.sorted()
        let p50 = percentile(ms, 50), p99 = percentile(ms, 99)
        if options.json {
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

    /// A trivial tool bundle (`tool/run.sh` exits 0) as the slave receives one.
    private func makeBundle(in dir: String) async throws -> String {
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
