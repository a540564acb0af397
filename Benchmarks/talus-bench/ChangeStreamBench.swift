// talus-bench changestream: change-stream delivery latency of the Mongo module, next to the same
// measurement with pymongo (Benchmarks/changestream-pymongo.py).

import ArgumentParser
import BSON
import Foundation
import Mongo
import TalusCore

struct ChangeStreamBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "changestream",
        abstract: "Latency from insertOne on one connection to the event on a waiting change stream on another.",
        discussion: """
            Sequential: each insert waits for its event before the next. Reports p50 and p99 over \
            --events events (after --warmup), then runs the pymongo script with the same settings \
            and prints both. Needs a replica set (SecantusDB: TALUS_TEST_MONGO_URI).
            """
    )

    @Option(help: "Events to measure.")
    var events = 1000

    @Option(help: "Events before measuring.")
    var warmup = 50

    @Option(help: "Alternate ours and pymongo this many times (events are split between rounds).")
    var rounds = 1

    @Option(help: "MongoDB URI (default: $TALUS_TEST_MONGO_URI).")
    var uri: String?

    @Option(help: "maxAwaitTimeMS of the change streams.")
    var maxAwaitMs = 1000

    @Option(help: "The pymongo reference script; empty to skip it.")
    var pymongoScript = "Benchmarks/changestream-pymongo.py"

    /// One implementation's figures; computed here for both from the raw latencies, so that
    /// rounds pool the same way.
    struct Result {
        var impl: String
        var events: Int
        var p50_ms: Double
        var p99_ms: Double
        var mean_ms: Double
        var min_ms: Double
        var max_ms: Double

        init(impl: String, latencies: [Double]) {
            let sorted = latencies.sorted()
            self.impl = impl
            events = sorted.count
            p50_ms = percentile(sorted, 50)
            p99_ms = percentile(sorted, 99)
            mean_ms = sorted.reduce(0, +) / Double(max(1, sorted.count))
            min_ms = sorted.first ?? .nan
            max_ms = sorted.last ?? .nan
        }
    }

    /// What the pymongo script prints.
    struct ReferenceOutput: Decodable {
        var impl: String
        var latencies_ms: [Double]
    }

    func run() async throws {
        guard let uri = uri ?? ProcessInfo.processInfo.environment["TALUS_TEST_MONGO_URI"] else {
            throw ValidationError("no --uri and no TALUS_TEST_MONGO_URI")
        }
        let perRound = max(1, events / max(1, rounds))
        var ours: [Double] = []
        var theirs: [Double] = []
        var referenceName = "pymongo"
        for _ in 0..<max(1, rounds) {
            ours += try await measure(uri: uri, events: perRound)
            if !pymongoScript.isEmpty {
                let reference = try runPymongo(uri: uri, events: perRound)
                referenceName = reference.impl
                theirs += reference.latencies_ms
            }
        }
        var rows = [Result(impl: "talus Mongo (libmongoc \(MongoClient.libmongocVersion))", latencies: ours)]
        if !theirs.isEmpty { rows.append(Result(impl: referenceName, latencies: theirs)) }
        print(table(rows))
        if rows.count == 2 {
            let (a, b) = (rows[0], rows[1])
            print(String(format: "ratio ours/pymongo: p50 %.2fx  p99 %.2fx  (target ≤ 1.10x)", a.p50_ms / b.p50_ms, a.p99_ms / b.p99_ms))
        }
    }

    /// Latencies in milliseconds of `events` sequential insert → event round trips.
    func measure(uri: String, events: Int) async throws -> [Double] {
        let watcher = try MongoClient(uri: uri)
        let writer = try MongoClient(uri: uri)
        let dbName = "bench_cs_swift_" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let watched = watcher.database(dbName).collection("events")
        let written = writer.database(dbName).collection("events")
        try await written.insertOne(["i": -1])  // create the collection, warm both pools
        let stream = try await watched.watch(options: ChangeStreamOptions(maxAwaitTimeMS: maxAwaitMs))
        var iterator = stream.makeAsyncIterator()
        var latencies: [Double] = []
        latencies.reserveCapacity(events)
        let clock = ContinuousClock()
        for i in 0..<(warmup + events) {
            let start = clock.now
            try await written.insertOne(["i": .int64(Int64(i))])
            guard let event = try await iterator.next() else { throw ValidationError("the change stream ended") }
            let latency = clock.now - start
            guard event.fullDocument?["i"]?.intValue == i else {
                throw ValidationError("expected event \(i), got \(String(describing: event.fullDocument))")
            }
            if i >= warmup {
                latencies.append(latency.secondsDouble * 1000)
            }
        }
        await stream.close()
        try await writer.database(dbName).drop()
        await watcher.close()
        await writer.close()
        return latencies
    }

    func runPymongo(uri: String, events: Int) throws -> ReferenceOutput {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", pymongoScript, "--uri", uri, "--events", String(events), "--warmup", String(warmup),
            "--max-await-ms", String(maxAwaitMs),
        ]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last else {
            throw ValidationError("\(pymongoScript) failed (status \(process.terminationStatus))")
        }
        return try JSONDecoder().decode(ReferenceOutput.self, from: Data(line.utf8))
    }

    func table(_ rows: [Result]) -> String {
        func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(0, width - s.count))
            return left ? s + fill : fill + s
        }
        let header = ["events", "p50 ms", "p99 ms", "mean ms", "min ms", "max ms"]
        var out = pad("implementation", 34, left: true) + header.map { pad($0, 9) }.joined() + "\n"
        for r in rows {
            let numbers = [r.p50_ms, r.p99_ms, r.mean_ms, r.min_ms, r.max_ms].map { pad(String(format: "%.3f", $0), 9) }
            out += pad(r.impl, 34, left: true) + pad(String(r.events), 9) + numbers.joined() + "\n"
        }
        return out
    }
}

/// Nearest-rank percentile of an ascending array (the same rule as the pymongo script).
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let rank = max(1, Int((Double(sorted.count) * p / 100).rounded(.up)))
    return sorted[rank - 1]
}
