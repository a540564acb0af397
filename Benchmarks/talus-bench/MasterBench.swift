// `talus-bench master …`: the master's figures (issue 3 §4), each next to its reference
// measured in the same run:
//   dispatch  parts dispatched per second for a job of 10,000 parts (publish with confirms),
//             next to raw confirmed publishes and raw part-document inserts;
//   ingest    events ingested per second (progress + results, with duplicates dropped), next
//             to the raw bulk writes the same events need;
//   latency   write-to-reconcile latency p50/p99 next to the raw change-stream latency, and a
//             job's run → running reaction;
//   memory    resident memory of a `talus-master` process with 10,000 parts in flight, after
//             they finished, and after 10,000 more.

import AMQP
import ArgumentParser
import BSON
import Foundation
import Logging
import Mongo
import Synchronization
import TalusCore
import TalusMaster
import TalusModel

struct MasterBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "master", abstract: "Benchmarks of talus-master (dispatch, ingest, latency, memory).",
        subcommands: [Dispatch.self, Ingest.self, Latency.self, Memory.self, All.self])

    struct Options: ParsableArguments {
        @Option(help: "MongoDB URI (default: $TALUS_TEST_MONGO_URI).")
        var mongo: String?
        @Option(help: "AMQP URL (default: $TALUS_TEST_AMQP_URL).")
        var amqp: String?

        func urls() throws -> (String, String) {
            let env = ProcessInfo.processInfo.environment
            guard let mongo = mongo ?? env["TALUS_TEST_MONGO_URI"], let amqp = amqp ?? env["TALUS_TEST_AMQP_URL"] else {
                throw ValidationError("give --mongo and --amqp, or source the env.sh of provisioning/dev/services.sh")
            }
            return (mongo, amqp)
        }
    }

    struct Dispatch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Parts dispatched per second for one job.")
        @OptionGroup var options: Options
        @Option(help: "Parts in the job.") var parts = 10_000
        func run() async throws { try await BenchEnvironment(options).dispatch(parts: parts) }
    }

    struct Ingest: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Events ingested per second.")
        @OptionGroup var options: Options
        @Option(help: "Runs whose events are ingested.") var runs = 200
        @Option(help: "Progress and result events per run.") var perRun = 25
        func run() async throws { try await BenchEnvironment(options).ingest(runs: runs, perRun: perRun) }
    }

    struct Latency: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write-to-reconcile latency next to the raw change stream.")
        @OptionGroup var options: Options
        @Option(help: "Writes measured.") var samples = 200
        func run() async throws { try await BenchEnvironment(options).latency(samples: samples) }
    }

    struct Memory: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resident memory of talus-master with parts in flight.")
        @OptionGroup var options: Options
        @Option(help: "Parts in flight per round.") var parts = 10_000
        @Option(help: "Rounds of parts (growth is measured after the first).") var rounds = 3
        func run() async throws { try await BenchEnvironment(options).memory(parts: parts, rounds: rounds) }
    }

    struct All: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every master benchmark with the defaults.")
        @OptionGroup var options: Options
        func run() async throws {
            let env = try BenchEnvironment(options)
            try await env.dispatch(parts: 10_000)
            try await env.ingest(runs: 200, perRun: 25)
            try await env.latency(samples: 200)
            try await env.memory(parts: 10_000)
        }
    }
}

/// Where the benchmarks run: the services, and a fresh database and AMQP namespace per figure.
struct BenchEnvironment {
    let mongoURI: String
    let amqpURL: String
    let logger = Logger(label: "talus.bench")

    init(_ options: MasterBench.Options) throws {
        (mongoURI, amqpURL) = try options.urls()
        Observability.bootstrap(level: .error)
    }

    /// A database and namespace with a task, a tool and a ready image; dropped by `cleanUp`.
    struct Scene {
        let name: String
        let client: MongoClient
        let database: MongoDatabase
        let names: AMQPNames
        let task: TaskDocument
        let image: ImageDocument
        let values: [String: String]

        func config(_ extra: [String: String] = [:]) throws -> MasterConfig {
            try MasterConfig(settings: Settings(values: values.merging(extra) { $1 }))
        }

        func job(limit: Int, status: JobState = .run) -> JobDocument {
            var job = JobDocument(name: "bench", task: task.id, image: image.id, tool: task.tool, toolCommit: task.toolCommit,
                                  limit: limit, status: Status(status))
            if status != .run { job.observed = status }
            return job
        }

        func amqp(_ name: String) async throws -> AMQPConnection {
            try await AMQPConnection.connect(try AMQPConfiguration(url: values["amqp.url"]!, connectionName: name),
                                             topology: MasterTopology.slave(names))
        }

        /// Waits until the part documents `1...parts` of `job` exist: polls for the last one by
        /// its id (a polled count would load the database being measured), then counts once.
        func partsRecorded(_ job: ObjectId, _ parts: Int) async throws {
            let collection = database.collection("parts")
            try await BenchEnvironment.waitUntil("part \(parts) recorded") {
                try await collection.findOne(["_id": .string(PartDocument.id(job: job, idx: parts))],
                                             options: FindOptions(projection: ["_id": 1])) != nil
            }
            try await BenchEnvironment.waitUntil("\(parts) parts recorded") {
                try await collection.countDocuments(["job": .objectId(job)]) >= parts
            }
        }

        func cleanUp() async {
            try? await database.drop()
            if let c = try? await amqp("cleanup") {
                for q in [names.partsQueue("default"), names.eventsQueue, names.deadLetterQueue] { _ = try? await c.deleteQueue(q) }
                for e in [names.partsExchange, names.controlExchange, names.deadLetterExchange] { try? await c.deleteExchange(e) }
                await c.close()
            }
            await client.close()
        }
    }

    func scene(_ name: String) async throws -> Scene {
        let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let client = try MongoClient(uri: mongoURI)
        let database = client.database("bench_\(name)_\(suffix)")
        let image = ImageDocument(name: "guest", os: ObjectId(),
                                  file: ImageFile(path: "g.qcow2", sha256: String(repeating: "ab", count: 32), size: 1 << 20),
                                  status: ImageStatus(.ready))
        let commit = String(repeating: "0123456789", count: 4)
        let task = TaskDocument(name: "bench", tool: "toy", toolCommit: commit, image: image.id)
        try await database.collection("images", as: ImageDocument.self).insertOne(image)
        try await database.collection("tasks", as: TaskDocument.self).insertOne(task)
        try await database.collection("code", as: CodeDocument.self).insertOne(CodeDocument(
            name: "toy", kind: .tool, commit: commit, committed: bsonNow(),
            manifest: ToolManifest(name: "toy", description: "", entry: "./run"), path: "tools/toy"))
        let namespace = "bench-\(name)-\(suffix)"
        return Scene(
            name: name, client: client, database: database, names: AMQPNames(namespace: namespace), task: task, image: image,
            values: [
                "mongo.uri": mongoURI, "mongo.database": database.name, "amqp.url": amqpURL, "amqp.namespace": namespace,
                "metrics.listen": "127.0.0.1:0", "log.level": "error", "master.lease_seconds": "5",
            ])
    }

    static func report(_ title: String, _ rows: [(String, String)]) {
        print("\n## \(title)")
        for (k, v) in rows { print("  \(k.padding(toLength: 46, withPad: " ", startingAt: 0)) \(v)") }
    }

    static func rate(_ n: Int, _ d: Duration) -> String {
        let s = d.secondsDouble
        return String(format: "%.0f/s (%d in %.2f s)", Double(n) / s, n, s)
    }

    static func millis(_ d: Duration) -> String {
        String(format: "%.1f ms", d.secondsDouble * 1000)
    }

    static func percentile(_ values: [Duration], _ p: Double) -> Duration {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .zero }
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
    }

    static func waitUntil(_ what: String, timeout: Duration = .seconds(600), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw ValidationError("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Runs a master in this process while `body` runs.
    func withMaster<R>(_ config: MasterConfig, extra: [@Sendable (MasterService.MasterContext) -> any DocumentReconciler] = [],
                       observer: WorkQueue.Observer? = nil, _ body: (MasterService) async throws -> R) async throws -> R {
        let service = MasterService(config: config, logger: logger, extraReconcilers: extra, observer: observer)
        let task = Task { try await service.run() }
        defer { task.cancel() }
        try await Self.waitUntil("the master leads", timeout: .seconds(60)) { service.role == .leader }
        let result = try await body(service)
        task.cancel()
        _ = try? await task.value
        return result
    }

    // MARK: dispatch

    func dispatch(parts: Int) async throws {
        let scene = try await scene("dispatch")
        defer { Task { await scene.cleanUp() } }
        let clock = ContinuousClock()
        // Reference 1: raw confirmed publishes of part-sized messages, pipelined the same way.
        let amqp = try await scene.amqp("bench-raw")
        let rawQueue = "\(scene.names.namespace).raw"
        try await amqp.declareQueue(AMQPQueue(rawQueue, autoDelete: false))
        let sample = PartMessage(job: ObjectId(), idx: 1, attempt: 1, image: PartImage(id: ObjectId(), sha256: String(repeating: "a", count: 64), chain: []),
                                 tool: PartTool(name: "toy", commit: scene.task.toolCommit), params: [:], vm: VMShape(), network: .none,
                                 deadline: nil, debug: false)
        let body = Array(try TalusJSON.encoder().encode(sample))
        var start = clock.now
        var confirmations: [PublishConfirmation] = []
        for _ in 0..<parts { confirmations.append(try await amqp.publish(AMQPMessage(body: body), exchange: "", routingKey: rawQueue)) }
        try await confirmations.waitForAll().get()
        let rawPublish = clock.now - start
        _ = try await amqp.deleteQueue(rawQueue)
        // Reference 2: raw inserts of the part documents, 500 per bulk write.
        let rawParts = scene.database.collection("rawparts")
        start = clock.now
        let job = ObjectId()
        for chunk in stride(from: 1, through: parts, by: 500) {
            let docs: [WriteModel] = try (chunk..<min(parts + 1, chunk + 500)).map {
                .insertOne(try BSONEncoder().encode(PartDocument(job: job, idx: $0)))
            }
            try await rawParts.bulkWrite(docs)
        }
        let rawInsert = clock.now - start
        await amqp.close()

        // The master: a job whose window holds every part (no slaves).
        let measured = try await withMaster(try scene.config(["jobs.window": String(parts)])) { _ in
            let job = scene.job(limit: parts)
            let start = clock.now
            try await scene.database.collection("jobs", as: JobDocument.self).insertOne(job)
            try await scene.partsRecorded(job.id, parts)
            let took = clock.now - start
            let check = try await scene.amqp("bench-check")
            let queued = try await check.inspectQueue(scene.names.partsQueue("default")).messageCount
            await check.close()
            return (took, queued)
        }
        Self.report("master: parts dispatched (publish with confirms, then part documents)", [
            ("talus-master, job of \(parts) parts", Self.rate(parts, measured.0)),
            ("  messages in the queue afterwards", "\(measured.1)"),
            ("reference: raw confirmed publishes", Self.rate(parts, rawPublish)),
            ("reference: raw part inserts (bulk 500)", Self.rate(parts, rawInsert)),
            ("target", "≥ 2000/s"),
        ])
    }

    // MARK: ingest

    func ingest(runs: Int, perRun: Int) async throws {
        let scene = try await scene("ingest")
        defer { Task { await scene.cleanUp() } }
        let clock = ContinuousClock()
        let job = scene.job(limit: -1, status: .running)
        try await scene.database.collection("jobs", as: JobDocument.self).insertOne(job)
        // Every run: part-started, perRun × (progress, result), part-ended; 1 in 10 events twice.
        var events: [[UInt8]] = []
        var unique = 0
        let encoder = TalusJSON.encoder()
        for r in 0..<runs {
            let run = UUID().uuidString
            var seq = 0
            func add(_ body: EventBody) throws {
                seq += 1
                let bytes = Array(try encoder.encode(EventMessage(
                    slave: "bench", source: EventSource(job: job.id, idx: r + 1, attempt: 1, run: run, seq: seq), body: body)))
                events.append(bytes)
                unique += 1
                if seq % 10 == 0 { events.append(bytes) }
            }
            try add(.partStarted)
            for i in 0..<perRun {
                try add(.report(.progress(amount: 1)))
                try add(.report(.result(kind: "stats", data: ["i": .int64(Int64(i)), "edges": .int64(Int64(r * i))], files: [])))
            }
            try add(.partEnded(outcome: .success, reason: nil, exitCode: 0, serialTail: nil))
        }
        let amqp = try await scene.amqp("bench-events")
        var confirmations: [PublishConfirmation] = []
        for e in events { confirmations.append(try await amqp.publish(AMQPMessage(body: e), exchange: "", routingKey: scene.names.eventsQueue)) }
        try await confirmations.waitForAll().get()
        await amqp.close()

        let expectedResults = runs * perRun
        let took = try await withMaster(try scene.config(["jobs.window": "0"])) { _ in
            let start = clock.now
            // The cheap check polls (a polled count would load the database it measures);
            // the counts run once it holds.
            try await Self.waitUntil("every event ingested") {
                let progress = try await scene.database.collection("jobs")
                    .findOne(["_id": .objectId(job.id)], options: FindOptions(projection: ["progress": 1]))?["progress"]?.intValue
                guard progress ?? 0 >= expectedResults else { return false }
                let results = try await scene.database.collection("results").countDocuments(["job": .objectId(job.id)])
                let finished = try await scene.database.collection("runs").countDocuments(["job": .objectId(job.id), "state": "finished"])
                return results == expectedResults && finished == runs
            }
            return clock.now - start
        }
        let progress = try await scene.database.collection("jobs", as: JobDocument.self).findOne(["_id": .objectId(job.id)])?.progress ?? -1

        // Reference: the raw writes those events cause, in bulk (results inserted, runs replaced).
        let refResults = scene.database.collection("refresults")
        let refRuns = scene.database.collection("refruns")
        let start = clock.now
        for r in 0..<runs {
            var docs: [WriteModel] = []
            for i in 0..<perRun {
                docs.append(.insertOne(try BSONEncoder().encode(ResultDocument(job: job.id, idx: r, run: "r\(r)", tool: "toy", type: "stats",
                                                                               data: ["i": .int64(Int64(i))]))))
            }
            try await refResults.bulkWrite(docs, ordered: false)
            try await refRuns.bulkWrite([.replaceOne(filter: ["_id": .string("r\(r)")],
                                                     replacement: try BSONEncoder().encode(RunDocument(id: "r\(r)", job: job.id, idx: r, attempt: 1, slave: "s")),
                                                     upsert: true)])
        }
        let raw = clock.now - start
        Self.report("master: events ingested (progress + results, 10 % sent twice)", [
            ("talus-master, \(events.count) events (\(unique) unique)", Self.rate(events.count, took)),
            ("  job progress afterwards", "\(progress) (expected \(runs * perRun))"),
            ("reference: raw bulk writes of the same results/runs", Self.rate(unique, raw)),
            ("target", "≥ 2000/s"),
        ])
    }

    // MARK: latency

    /// Records when each document's first reconcile started.
    final class Probe: DocumentReconciler, Sendable {
        let collection = TalusModel.Collection.os
        let maxConcurrent = 8
        let seen = Mutex<[ObjectId: ContinuousClock.Instant]>([:])
        func pending() async throws -> [ObjectId] { [] }
        func reconcile(_ id: ObjectId) async throws -> ReconcileOutcome {
            let now = ContinuousClock.now
            seen.withLock { if $0[id] == nil { $0[id] = now } }
            return .done
        }
        func giveUp(_ id: ObjectId, reason: String) async {}
    }

    func latency(samples: Int) async throws {
        let scene = try await scene("latency")
        defer { Task { await scene.cleanUp() } }
        let probe = Probe()
        let jobDone = Mutex<[ObjectId: ContinuousClock.Instant]>([:])
        let observer: WorkQueue.Observer = { key, _, _ in
            guard key.collection == .jobs else { return }
            let now = ContinuousClock.now
            jobDone.withLock { if $0[key.id] == nil { $0[key.id] = now } }
        }
        let (rawTimes, probeTimes, jobTimes) = try await withMaster(try scene.config(["jobs.window": "0"]), extra: [{ _ in probe }],
                                                                  observer: observer) { _ in
            let raw = try await scene.database.collection("os").watch([], options: ChangeStreamOptions(maxAwaitTimeMS: 200))
            let rawSeen = Mutex<[ObjectId: ContinuousClock.Instant]>([:])
            let reader = Task {
                for try await event in raw {
                    let now = ContinuousClock.now
                    if let id = event.documentID?.objectIdValue { rawSeen.withLock { $0[id] = now } }
                }
            }
            defer { reader.cancel() }
            var rawTimes: [Duration] = [], probeTimes: [Duration] = [], jobTimes: [Duration] = []
            let os = scene.database.collection("os", as: OSDocument.self)
            for _ in 0..<samples {
                let doc = OSDocument(name: UUID().uuidString, family: .linux)
                let written = ContinuousClock.now
                try await os.insertOne(doc)
                try await Self.waitUntil("the reconcile", timeout: .seconds(30)) {
                    rawSeen.withLock { $0[doc.id] != nil } && probe.seen.withLock { $0[doc.id] != nil }
                }
                rawTimes.append(rawSeen.withLock { $0[doc.id]! } - written)
                probeTimes.append(probe.seen.withLock { $0[doc.id]! } - written)
            }
            // A job's run → running: the reconcile reads the task, tool and image and writes.
            let jobs = scene.database.collection("jobs", as: JobDocument.self)
            for _ in 0..<min(50, samples) {
                let job = scene.job(limit: 1)
                let written = ContinuousClock.now
                try await jobs.insertOne(job)
                try await Self.waitUntil("the job reconcile", timeout: .seconds(30)) { jobDone.withLock { $0[job.id] != nil } }
                jobTimes.append(jobDone.withLock { $0[job.id]! } - written)
            }
            return (rawTimes, probeTimes, jobTimes)
        }
        let p = Self.percentile
        Self.report("master: write-to-reaction latency (\(samples) writes, one at a time)", [
            ("raw change stream: p50 / p99", "\(Self.millis(p(rawTimes, 0.5))) / \(Self.millis(p(rawTimes, 0.99)))"),
            ("reconcile started: p50 / p99", "\(Self.millis(p(probeTimes, 0.5))) / \(Self.millis(p(probeTimes, 0.99)))"),
            ("  difference p50 / p99", "\(Self.millis(p(probeTimes, 0.5) - p(rawTimes, 0.5))) / \(Self.millis(p(probeTimes, 0.99) - p(rawTimes, 0.99)))"),
            ("job run → running reconciled: p50 / p99", "\(Self.millis(p(jobTimes, 0.5))) / \(Self.millis(p(jobTimes, 0.99)))"),
            ("target", "reconcile within 50 ms of raw"),
        ])
    }

    // MARK: memory

    func memory(parts: Int, rounds: Int = 3) async throws {
        let scene = try await scene("memory")
        defer { Task { await scene.cleanUp() } }
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("talus-master").path
        guard FileManager.default.isExecutableFile(atPath: binary) else { throw ValidationError("talus-master is not built next to talus-bench") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("talus-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let yaml = Settings.yaml(scene.values.merging(["jobs.window": String(parts), "log.level": "error"], uniquingKeysWith: { $1 }))
        let configPath = dir.appendingPathComponent("master.yaml").path
        try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", configPath]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        func rss() -> Int {
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        let jobs = scene.database.collection("jobs", as: JobDocument.self)
        try await Self.waitUntil("the master leads") {
            try await scene.database.collection("state").countDocuments(["_id": "master.lease"]) == 1
        }
        try await Task.sleep(for: .seconds(2))
        let idle = rss()
        var rows: [(String, String)] = [("leader, idle", "\(idle / 1024) MiB")]
        var afterRound: [Int] = []
        for round in 1...rounds {
            let job = scene.job(limit: parts)
            try await jobs.insertOne(job)
            try await scene.partsRecorded(job.id, parts)
            rows.append(("round \(round): \(parts) parts in flight", "\(rss() / 1024) MiB"))
            let start = ContinuousClock.now
            try await drain(scene, job: job.id, parts: parts)
            try await Self.waitUntil("job finished") {
                try await jobs.findOne(["_id": .objectId(job.id)])?.status.name == .finished
            }
            let took = ContinuousClock.now - start
            afterRound.append(rss())
            rows.append(("round \(round): after they finished", "\(afterRound.last! / 1024) MiB"))
            rows.append(("  parts run and their 3 events ingested", Self.rate(parts, took)))
        }
        if afterRound.count >= 2 {
            // The first round fills the allocator's pools and caches; growth after it is per part.
            let perPart = Double((afterRound.last! - afterRound[0]) * 1024) / Double(parts * (afterRound.count - 1))
            rows.append(("growth per finished part after round 1", String(format: "%.1f bytes", perPart)))
        }
        process.terminate()
        process.waitUntilExit()
        rows.append(("target", "flat: no growth per finished part"))
        Self.report("master: resident memory (talus-master process)", rows)
    }

    /// A fast slave: runs every part of the queue at once (started, progress, ended) and acks.
    func drain(_ scene: Scene, job: ObjectId, parts: Int) async throws {
        let consumer = try await scene.amqp("bench-slave-sub")
        let publisher = try await scene.amqp("bench-slave-pub")
        let deliveries = try await consumer.consume(queue: scene.names.partsQueue("default"), prefetch: 500)
        let encoder = TalusJSON.encoder()
        var done = 0
        var pendingAcks: [(AMQPDelivery, [PublishConfirmation])] = []
        for try await delivery in deliveries {
            let part = try TalusJSON.decoder().decode(PartMessage.self, from: Data(delivery.body))
            let run = UUID().uuidString
            var confirmations: [PublishConfirmation] = []
            for (seq, body) in [EventBody.partStarted, .report(.progress(amount: 1)),
                                .partEnded(outcome: .success, reason: nil, exitCode: 0, serialTail: nil)].enumerated() {
                let event = EventMessage(slave: "bench", source: EventSource(job: part.job, idx: part.idx, attempt: part.attempt, run: run, seq: seq + 1), body: body)
                confirmations.append(try await publisher.publish(AMQPMessage(body: Array(try encoder.encode(event))),
                                                                 exchange: "", routingKey: scene.names.eventsQueue))
            }
            pendingAcks.append((delivery, confirmations))
            if pendingAcks.count >= 250 {
                for (d, c) in pendingAcks { try await c.waitForAll().get(); try d.ack() }
                pendingAcks.removeAll()
            }
            done += 1
            if done == parts { break }
        }
        for (d, c) in pendingAcks { try await c.waitForAll().get(); try d.ack() }
        try await deliveries.cancel()
        await consumer.close()
        await publisher.close()
    }
}
