// What the master tests share: a database and an AMQP namespace of their own, the documents a
// job needs (task, tool, ready image), a master running in-process or as a subprocess, and
// reading the documents back.

import AMQP
import BSON
import Foundation
import Logging
import Mongo
import Synchronization
import TalusCore
import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

/// Metrics and logs go to the real backends once per test process: warnings and up on stderr,
/// or the level in `TALUS_TEST_LOG_LEVEL`.
let observabilityReady: Void = Observability.bootstrap(
    level: ProcessInfo.processInfo.environment["TALUS_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .warning)

/// A database, an AMQP namespace and the fixtures of one test; masters come and go on them.
final class MasterFixture: @unchecked Sendable {
    let databaseName: String
    let namespace: String
    let names: AMQPNames
    let client: MongoClient
    let database: MongoDatabase
    let amqpURL: String
    let mongoURI: String
    /// Keys of the master configuration this test overrides.
    var overrides: [String: String]
    let task: TaskDocument
    let image: ImageDocument
    static let commit = String(repeating: "c0ffee12", count: 5)
    /// What the test started, stopped by ``tearDown()`` (slaves, then masters, then processes).
    private let started = Mutex<(slaves: [TestSlave], masters: [RunningMaster], processes: [TestProcess])>(([], [], []))

    /// Runs `body` with a fresh fixture and tears it down afterwards, also when `body` throws.
    static func with(_ prefix: String, overrides: [String: String] = [:], _ body: (MasterFixture) async throws -> Void) async throws {
        let fixture = try await MasterFixture(prefix, overrides: overrides)
        do {
            try await body(fixture)
        } catch {
            await fixture.tearDown()
            throw error
        }
        await fixture.tearDown()
    }

    func register(_ process: TestProcess) { started.withLock { $0.processes.append(process) } }

    /// Stops everything the test started, then drops its database and AMQP names.
    func tearDown() async {
        let (slaves, masters, processes) = started.withLock { ($0.slaves, $0.masters, $0.processes) }
        for slave in slaves { await slave.stop() }
        for master in masters { await master.stop() }
        for process in processes { await process.stop() }
        await cleanUp()
    }

    init(_ prefix: String, overrides: [String: String] = [:]) async throws {
        _ = observabilityReady
        databaseName = uniqueName(prefix)
        namespace = uniqueName("t-" + prefix)
        names = AMQPNames(namespace: namespace)
        mongoURI = try TestEnvironment.mongoURI()
        amqpURL = try TestEnvironment.amqpURL()
        client = try MongoClient(uri: mongoURI, logger: Logger(label: "test.mongo"))
        database = client.database(databaseName)
        self.overrides = overrides
        image = ImageDocument(
            name: uniqueName("guest"), os: ObjectId(),
            file: ImageFile(path: "guest.qcow2", sha256: String(repeating: "ab", count: 32), size: 10_485_760),
            status: ImageStatus(.ready))
        task = TaskDocument(name: uniqueName("task"), tool: "toy", toolCommit: Self.commit, image: image.id)
        try await database.collection("images", as: ImageDocument.self).insertOne(image)
        try await database.collection("tasks", as: TaskDocument.self).insertOne(task)
        let manifest = ToolManifest(name: "toy", description: "a toy fuzzer", entry: "./run.sh")
        try await database.collection("code", as: CodeDocument.self).insertOne(
            CodeDocument(name: "toy", kind: .tool, commit: Self.commit, committed: bsonNow(), manifest: manifest, path: "tools/toy"))
    }

    /// The master configuration values (the test's overrides over fast defaults).
    var values: [String: String] {
        [
            "mongo.uri": mongoURI, "mongo.database": databaseName, "amqp.url": amqpURL, "amqp.namespace": namespace,
            "master.lease_seconds": "10", "jobs.window": "4", "jobs.part_attempts": "3", "jobs.max_failed_parts": "5",
            "slaves.offline_after": "30s", "reconcile.backoff": "100ms", "reconcile.max_attempts": "4",
            "events.batch_wait": "5ms", "metrics.listen": "127.0.0.1:0", "log.level": "warning",
        ].merging(overrides) { $1 }
    }

    func config() throws -> MasterConfig { try MasterConfig(settings: Settings(values: values)) }

    /// Writes the configuration as a YAML file (for the subprocess tests).
    func writeConfig(extra: [String: String] = [:]) throws -> String {
        let yaml = Settings.yaml(values.merging(extra, uniquingKeysWith: { $1 }), header: "written by a test")
        let path = try TestEnvironment.scratchDirectory("master-config") + "/master.yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Starts a master in this process.
    func startMaster(
        observer: WorkQueue.Observer? = nil,
        extra: [@Sendable (MasterService.MasterContext) -> any DocumentReconciler] = []
    ) throws -> RunningMaster {
        let service = MasterService(config: try config(), logger: Logger(label: "test.master"), extraReconcilers: extra, observer: observer)
        let master = RunningMaster(service: service, task: Task { try await service.run() })
        started.withLock { $0.masters.append(master) }
        return master
    }

    // MARK: Documents

    @discardableResult
    func insertJob(limit: Int, priority: Int = 50, status: JobState = .run, name: String = "job") async throws -> ObjectId {
        let job = JobDocument(name: uniqueName(name), task: task.id, image: image.id, tool: task.tool, toolCommit: task.toolCommit,
                              priority: priority, limit: limit, status: Status(status))
        try await database.collection("jobs", as: JobDocument.self).insertOne(job)
        return job.id
    }

    func job(_ id: ObjectId) async throws -> JobDocument {
        guard let job = try await database.collection("jobs", as: JobDocument.self).findOne(["_id": .objectId(id)]) else {
            throw TestSupportError("job \(id.hex) is gone")
        }
        return job
    }

    func rawJob(_ id: ObjectId) async throws -> BSONDocument {
        try await database.collection("jobs").findOne(["_id": .objectId(id)]) ?? [:]
    }

    /// Writes a status as a user (through the API) would: the whole status sub-document.
    func setStatus(_ id: ObjectId, _ name: String) async throws {
        try await database.collection("jobs").updateOne(
            ["_id": .objectId(id)], ["$set": ["status": ["name": .string(name), "since": .datetime(bsonNow())]]])
    }

    @discardableResult
    func waitForStatus(_ id: ObjectId, _ state: JobState, timeout: Duration = .seconds(120)) async throws -> JobDocument {
        try await waitFor("job \(id.hex) \(state.rawValue)", timeout: timeout, interval: .milliseconds(100)) {
            let job = try await self.job(id)
            if job.status.name.isTerminal && job.status.name != state {
                throw TestSupportError("job ended \(job.status.name.rawValue) instead of \(state.rawValue): \(job.status.reason ?? "")")
            }
            return job.status.name == state ? job : nil
        }
    }

    /// Waits until no part of the job is queued, running or retrying and no run is running:
    /// a job can finish (progress at the limit) before the ends of its last runs are ingested,
    /// and a batch writes parts just before runs.
    func settled(_ job: ObjectId) async throws {
        try await waitUntil("job \(job.hex) settled") {
            let parts = try await count("parts", ["job": .objectId(job), "status.name": ["$in": ["queued", "running", "retry"]]])
            let runs = try await count("runs", ["job": .objectId(job), "state": "running"])
            return parts == 0 && runs == 0
        }
    }

    func count(_ collection: String, _ filter: BSONDocument) async throws -> Int {
        try await database.collection(collection).countDocuments(filter)
    }

    func parts(of job: ObjectId) async throws -> [PartDocument] {
        try await database.collection("parts", as: PartDocument.self).find(["job": .objectId(job)])
    }

    // MARK: AMQP

    /// A connection that declares the namespace's topology (so a publish never beats the master
    /// to the queues).
    func amqp(_ name: String = "test") async throws -> AMQPConnection {
        try await AMQPConnection.connect(try AMQPConfiguration(url: amqpURL, connectionName: name),
                                         topology: MasterTopology.slave(names), logger: Logger(label: "test.amqp"))
    }

    func slave(_ name: String = "slave", capacity: Int = 2, behavior: TestSlave.Behavior = .init()) async throws -> TestSlave {
        let slave = TestSlave(url: amqpURL, names: names, hostname: name, capacity: capacity, behavior: behavior)
        started.withLock { $0.slaves.append(slave) }
        try await slave.start()
        return slave
    }

    /// Drops the database and the namespace's queues and exchanges.
    func cleanUp() async {
        try? await database.drop()
        if let connection = try? await amqp("cleanup") {
            for queue in [names.partsQueue("default"), names.eventsQueue, names.deadLetterQueue] {
                _ = try? await connection.deleteQueue(queue)
            }
            for exchange in [names.partsExchange, names.controlExchange, names.deadLetterExchange] {
                try? await connection.deleteExchange(exchange)
            }
            await connection.close()
        }
        await client.close()
    }
}

/// A master running in this process.
struct RunningMaster: Sendable {
    let service: MasterService
    let task: Task<Void, any Error>

    /// Stops it as SIGTERM would (the task is cancelled; the lease is released).
    func stop() async {
        task.cancel()
        _ = try? await task.value
    }

    func waitUntilLeader(timeout: Duration = .seconds(30)) async throws {
        try await waitUntil("master leads", timeout: timeout) { service.role == .leader }
    }

    /// `/metrics` of this master.
    func metrics() async throws -> String {
        guard let port = service.opsPort else { throw TestSupportError("the master does not serve /metrics yet") }
        return try await httpGet(port: port, path: "/metrics").body
    }
}

/// A GET on 127.0.0.1 without a client library (tests only): status code and body.
func httpGet(port: Int, path: String) async throws -> (status: Int, body: String) {
    try await Task.detached {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket failed") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw TestSupportError("cannot connect to 127.0.0.1:\(port)") }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var response = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let head = text.range(of: "\r\n\r\n"), let status = Int(text.split(separator: " ").dropFirst().first ?? "") else {
            throw TestSupportError("not an HTTP response: \(text.prefix(200))")
        }
        var body = String(text[head.upperBound...])
        if text[..<head.lowerBound].lowercased().contains("transfer-encoding: chunked") { body = dechunk(body) }
        return (status, body)
    }.value
}

private func dechunk(_ text: String) -> String {
    var out = ""
    var rest = Substring(text)
    while let line = rest.range(of: "\r\n"), let size = Int(rest[..<line.lowerBound], radix: 16), size > 0 {
        let start = line.upperBound
        let end = rest.utf8.index(start, offsetBy: size)
        out += rest[start..<end]
        rest = rest[end...].dropFirst(2)
    }
    return out
}

/// The value of a Prometheus sample (`name{labels} value`) in `/metrics` text; 0 when absent.
func metricValue(_ text: String, _ name: String, labels: String? = nil) -> Double {
    var total = 0.0
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        let parts = line.split(separator: " ")
        guard parts.count >= 2 else { continue }
        let series = parts[0]
        let seriesName = series.split(separator: "{").first.map(String.init) ?? ""
        guard seriesName == name else { continue }
        if let labels, !series.contains(labels) { continue }
        total += Double(parts[1]) ?? 0
    }
    return total
}
