// talus-bench api: the REST API and the CLI against references, in the same run.
//
// (a) Upload throughput of one large file into `PUT /api/v1/uploads/{id}/content`: the `talus`
//     CLI (`talus upload put`) next to `curl -T` (streaming) to the same endpoint, alternating,
//     best of --rounds each. Target: CLI ≥ 0.8× curl.
// (b) `GET /api/v1/results?job=…&limit=100` with --results results stored for the job: latency
//     p50/p99 over every page of the cursor chain (a full walk through all results), after a
//     warm-up. Target: p99 < 50 ms.
// talus-api runs as its own process (the built product next to this one) on a fresh database.

import AsyncHTTPClient
import ArgumentParser
import BSON
import Foundation
import Mongo
import NIOCore
import NIOFoundationCompat
import TalusAPI
import TalusCore
import TalusModel

struct APIBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api",
        abstract: "Upload throughput (talus CLI vs curl) and result-list latency of the REST API.")

    @Option(help: "MongoDB URI (default: $TALUS_TEST_MONGO_URI).") var mongoURI: String?
    @Option(help: "Size of the uploaded file, MiB.") var uploadMib: Int = 2048
    @Option(help: "Upload rounds per client (best is reported).") var rounds: Int = 2
    @Option(help: "Results stored for the list benchmark.") var results: Int = 100_000
    @Option(help: "Page size of the list benchmark.") var pageSize: Int = 100
    @Option(help: "Scratch directory (default: a new one under /tmp).") var dir: String?
    @Flag(help: "Skip the upload benchmark.") var skipUpload = false
    @Flag(help: "Skip the list benchmark.") var skipList = false
    @Flag(help: "Print the results as JSON.") var json = false

    func run() async throws {
        let uri = mongoURI ?? ProcessInfo.processInfo.environment["TALUS_TEST_MONGO_URI"] ?? "mongodb://127.0.0.1:27017/?replicaSet=rs0"
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let dir = self.dir ?? (NSTemporaryDirectory() + "talus-bench-api-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let server = try await BenchAPI.start(bin: bin, dir: dir, mongoURI: uri)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        var out: [String: Any] = [:]
        do {
            if !skipUpload {
                let u = try await uploadBenchmark(server: server, http: http, bin: bin, dir: dir)
                out["upload_mib"] = uploadMib
                out["cli_mib_s"] = u.cli
                out["curl_mib_s"] = u.curl
                out["cli_over_curl"] = u.cli / u.curl
                if !json {
                    print(String(format: "upload %d MiB   talus CLI %.0f MiB/s   curl -T %.0f MiB/s   ratio %.2f (target >= 0.8)",
                                 uploadMib, u.cli, u.curl, u.cli / u.curl))
                }
            }
            if !skipList {
                let l = try await listBenchmark(server: server, http: http, uri: uri)
                out["results"] = results
                out["page_size"] = pageSize
                out["list_requests"] = l.count
                out["list_p50_ms"] = l.p50
                out["list_p99_ms"] = l.p99
                out["list_max_ms"] = l.max
                out["first_page_p50_ms"] = l.firstP50
                out["first_page_p99_ms"] = l.firstP99
                if !json {
                    print(String(format: "GET /api/v1/results?job=…&limit=%d with %d stored: full cursor walk (%d pages) p50 %.1f ms  p99 %.1f ms  max %.1f ms; first page p50 %.1f ms  p99 %.1f ms (target p99 < 50 ms)",
                                 pageSize, results, l.count, l.p50, l.p99, l.max, l.firstP50, l.firstP99))
                }
            }
        } catch {
            try? await http.shutdown()
            await server.stop()
            throw error
        }
        try? await http.shutdown()
        await server.stop()
        try? FileManager.default.removeItem(atPath: dir)
        if json {
            let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    // MARK: Upload

    func uploadBenchmark(server: BenchAPI, http: HTTPClient, bin: String, dir: String) async throws -> (cli: Double, curl: Double) {
        let file = dir + "/upload.bin"
        let size = Int64(uploadMib) << 20
        try writeRandomFile(file, size: size)
        var best = (cli: 0.0, curl: 0.0)
        for round in 1...rounds {
            // curl -T streams the file (Expect: disabled: talus-api has no 100-continue).
            let id = try await server.announce(http: http, filename: "upload.bin", size: size)
            let curlSeconds = try time {
                let r = try runSync("/usr/bin/curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer \(server.token)",
                                                      "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                                                      "-T", file, "\(server.baseURL)/api/v1/uploads/\(id)/content"])
                guard r == "200" else { throw BenchError("curl upload answered \(r)") }
            }
            try await server.delete(http: http, upload: id)
            // The CLI: announce + stream, as a user runs it.
            var cliId = ""
            let cliSeconds = try time {
                let r = try runSync(bin + "/talus", ["upload", "put", file, "--json"],
                                    env: ["TALUS_URL": server.baseURL, "TALUS_TOKEN": server.token])
                guard let obj = try JSONSerialization.jsonObject(with: Data(r.utf8)) as? [String: Any], obj["complete"] as? Bool == true,
                      let i = obj["_id"] as? String else { throw BenchError("talus upload put: \(r)") }
                cliId = i
            }
            try await server.delete(http: http, upload: cliId)
            let mib = Double(size) / 1_048_576
            best.cli = max(best.cli, mib / cliSeconds)
            best.curl = max(best.curl, mib / curlSeconds)
            if !json {
                FileHandle.standardError.write(Data(String(format: "  round %d: talus %.0f MiB/s, curl %.0f MiB/s\n", round, mib / cliSeconds, mib / curlSeconds).utf8))
            }
        }
        try? FileManager.default.removeItem(atPath: file)
        return best
    }

    func writeRandomFile(_ path: String, size: Int64) throws {
        FileManager.default.createFile(atPath: path, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? h.close() }
        var rng = SystemRandomNumberGenerator()
        var block = [UInt8](repeating: 0, count: 1 << 20)
        var written: Int64 = 0
        while written < size {
            for i in stride(from: 0, to: block.count, by: 8) {
                withUnsafeBytes(of: rng.next() as UInt64) { raw in for j in 0..<8 { block[i + j] = raw[j] } }
            }
            let n = Int(min(Int64(block.count), size - written))
            try h.write(contentsOf: block[0..<n])
            written += Int64(n)
        }
    }

    // MARK: List

    func listBenchmark(server: BenchAPI, http: HTTPClient, uri: String) async throws
        -> (count: Int, p50: Double, p99: Double, max: Double, firstP50: Double, firstP99: Double) {
        let client = try MongoClient(uri: uri)
        let collection = client.database(server.database).collection("results", as: ResultDocument.self)
        let job = ObjectId()
        var batch: [ResultDocument] = []
        for i in 0..<results {
            batch.append(ResultDocument(job: job, idx: i % 64, run: "run-\(i % 64)", tool: "fuzz", type: "coverage",
                                        data: ["edges": .int64(Int64(i)), "exec_per_s": .double(Double(i % 1000))]))
            if batch.count == 1000 {
                try await collection.insertMany(batch)
                batch.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { try await collection.insertMany(batch) }
        // Some noise: results of other jobs.
        try await collection.insertMany((0..<1000).map { ResultDocument(job: ObjectId(), idx: $0, run: "r", tool: "fuzz", type: "other") })
        await client.close()

        func get(_ query: String) async throws -> (Double, String?) {
            var r = HTTPClientRequest(url: server.baseURL + "/api/v1/results?" + query)
            r.headers.add(name: "Authorization", value: "Bearer \(server.token)")
            let clock = ContinuousClock()
            let start = clock.now
            let response = try await http.execute(r, timeout: .seconds(30))
            let body = try await response.body.collect(upTo: 64 << 20)
            let elapsed = clock.now - start
            guard response.status == .ok, let page = try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
                throw BenchError("GET results: \(response.status)")
            }
            let ms = elapsed.secondsDouble * 1000
            return (ms, page["next"] as? String)
        }
        let first = "job=\(job.hex)&limit=\(pageSize)"
        for _ in 0..<30 { _ = try await get(first) }  // warm-up (connection, caches)
        var firstPage: [Double] = []
        for _ in 0..<300 { firstPage.append(try await get(first).0) }
        var walk: [Double] = []
        var next: String? = nil
        repeat {
            let (ms, n) = try await get(first + (next.map { "&after=\($0)" } ?? ""))
            walk.append(ms)
            next = n
        } while next != nil
        func pct(_ xs: [Double], _ p: Double) -> Double {
            let s = xs.sorted()
            return s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
        }
        return (walk.count, pct(walk, 0.5), pct(walk, 0.99), walk.max() ?? 0, pct(firstPage, 0.5), pct(firstPage, 0.99))
    }

    func time(_ body: () throws -> Void) throws -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        try body()
        return (clock.now - start).secondsDouble
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Runs a command to completion and returns its stdout (stderr passes through).
func runSync(_ exe: String, _ args: [String], env: [String: String] = [:]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw BenchError("\(exe) \(args.joined(separator: " ")) exited \(p.terminationStatus)") }
    return String(decoding: data, as: UTF8.self)
}

/// `talus-api` as a subprocess for the benchmark.
struct BenchAPI {
    let process: Process
    let baseURL: String
    let token: String
    let database: String
    let mongoURI: String

    static func start(bin: String, dir: String, mongoURI: String) async throws -> BenchAPI {
        let port = Int.random(in: 20000...40000)
        let database = "bench_api_\(UInt32.random(in: 0...UInt32.max))"
        let config = dir + "/api.yaml"
        try Settings.yaml(APIConfig.localValues(port: port, mongoURI: mongoURI, database: database, directory: dir))
            .write(toFile: config, atomically: true, encoding: .utf8)
        let boot = try runSync(bin + "/talus-api", ["bootstrap-admin", "--config", config, "--name", "bench", "--json"])
        guard let obj = try JSONSerialization.jsonObject(with: Data(boot.utf8)) as? [String: Any], let token = obj["token"] as? String else {
            throw BenchError("bootstrap-admin: \(boot)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin + "/talus-api")
        p.arguments = ["serve", "--config", config]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if (try? runSync("/usr/bin/curl", ["-sf", "-o", "/dev/null", "http://127.0.0.1:\(port)/healthz"])) != nil {
                return BenchAPI(process: p, baseURL: "http://127.0.0.1:\(port)", token: token, database: database, mongoURI: mongoURI)
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        p.terminate()
        throw BenchError("talus-api did not start")
    }

    func announce(http: HTTPClient, filename: String, size: Int64) async throws -> String {
        var r = HTTPClientRequest(url: baseURL + "/api/v1/uploads")
        r.method = .POST
        r.headers.add(name: "Authorization", value: "Bearer \(token)")
        r.headers.add(name: "Content-Type", value: "application/json")
        r.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: ["filename": filename, "size": size])))
        let response = try await http.execute(r, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard let obj = try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any], let id = obj["_id"] as? String else {
            throw BenchError("announce: \(response.status)")
        }
        return id
    }

    func delete(http: HTTPClient, upload: String) async throws {
        var r = HTTPClientRequest(url: baseURL + "/api/v1/uploads/\(upload)")
        r.method = .DELETE
        r.headers.add(name: "Authorization", value: "Bearer \(token)")
        _ = try await http.execute(r, timeout: .seconds(30))
    }

    func stop() async {
        process.terminate()
        process.waitUntilExit()
        if let client = try? MongoClient(uri: mongoURI) {
            try? await client.database(database).drop()
            await client.close()
        }
    }
}
