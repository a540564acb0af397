// talus-bench amqp: the AMQP library against Python pika, in the same run, on the same broker.
//
// (a) publish N persistent ~200-byte JSON messages with publisher confirms → msg/s;
// (b) consume and ack them with a prefetch → msg/s;
// the same with pika (BlockingConnection + confirm_delivery, which confirms each message
// synchronously; basic_qos + basic_consume + basic_ack), via Benchmarks/amqp-pika.py.
// Targets: publish with confirms ≥ 2× pika, consume + ack ≥ pika.

import AMQP
import ArgumentParser
import Foundation
import TalusCore

struct AMQPBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "amqp",
        abstract: "Publish-with-confirms and consume-with-ack throughput: the AMQP library vs. Python pika.",
        discussion: """
            Both sides publish the same persistent JSON messages to a fresh durable queue on the same broker, \
            then consume and ack them. Ours pipelines confirms (up to --in-flight publishes outstanding); \
            pika's BlockingConnection in confirm mode waits for each confirm. A third row publishes ours \
            one confirm at a time, like pika. Needs python3 with pika for the reference column.
            """)

    @Option(help: "Broker URL (default: $TALUS_TEST_AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/).")
    var url: String?

    @Option(help: "Messages per measurement.")
    var messages: Int = 20_000

    @Option(help: "Body size in bytes (JSON padded to this size).")
    var size: Int = 200

    @Option(help: "Consumer prefetch, both sides.")
    var prefetch: UInt16 = 200

    @Option(help: "Publishes in flight at most (ours).")
    var inFlight: Int = 1000

    @Option(help: "Messages for ours published one confirm at a time (0 skips that row).")
    var syncMessages: Int = 2000

    @Option(help: "Python interpreter that has pika.")
    var python: String = "python3"

    @Option(help: "Path of amqp-pika.py (default: Benchmarks/amqp-pika.py next to this source, or in the current directory).")
    var pikaScript: String?

    @Flag(help: "Only measure ours.")
    var skipPika = false

    @Flag(help: "Print the results as JSON.")
    var json = false

    func validate() throws {
        guard messages > 0, size > 0, prefetch > 0, inFlight > 0, syncMessages >= 0 else {
            throw ValidationError("--messages, --size, --prefetch and --in-flight must be positive")
        }
    }

    mutating func run() async throws {
        let url = self.url ?? ProcessInfo.processInfo.environment["TALUS_TEST_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/"
        let endpoint = try AMQPEndpoint(url: url)
        let bodies = (0..<messages).map { AMQPBenchCommand.body(index: $0, size: size) }
        let ours = try await measureOurs(url: url, bodies: bodies)
        let pika = skipPika ? nil : try runPika(url: url)
        if json {
            var result: [String: Any] = [
                "messages": messages, "size": bodies.first?.count ?? 0, "prefetch": Int(prefetch), "in_flight": inFlight,
                "ours_publish_per_s": ours.publish, "ours_consume_per_s": ours.consume,
            ]
            if let sync = ours.syncPublish { result["ours_sync_publish_per_s"] = sync }
            if let pika {
                result["pika_publish_per_s"] = pika.publish
                result["pika_consume_per_s"] = pika.consume
                result["pika_version"] = pika.version
            }
            let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("talus-bench amqp: \(messages) persistent messages, \(bodies.first?.count ?? 0)-byte JSON bodies, broker \(endpoint)")
        print(Self.row("", "ours msg/s", "pika msg/s", "ours/pika", "target"))
        print(Self.row(
            "publish + confirms", Self.rate(ours.publish), pika.map { Self.rate($0.publish) } ?? "-",
            pika.map { Self.ratio(ours.publish, $0.publish) } ?? "-", ">= 2x"))
        if let sync = ours.syncPublish {
            print(Self.row(
                "publish, one confirm at a time", Self.rate(sync), pika.map { Self.rate($0.publish) } ?? "-",
                pika.map { Self.ratio(sync, $0.publish) } ?? "-", "-"))
        }
        print(Self.row(
            "consume + ack, prefetch \(prefetch)", Self.rate(ours.consume), pika.map { Self.rate($0.consume) } ?? "-",
            pika.map { Self.ratio(ours.consume, $0.consume) } ?? "-", ">= 1x"))
        print("ours: up to \(inFlight) publishes in flight, publisher and consumer on separate connections; "
            + "pika \(pika?.version ?? "(skipped)"): BlockingConnection, confirm_delivery (one confirm per publish).")
    }

    // MARK: Ours

    struct Ours {
        var publish: Double
        var consume: Double
        var syncPublish: Double?
    }

    func measureOurs(url: String, bodies: [[UInt8]]) async throws -> Ours {
        let clock = ContinuousClock()
        let queue = "talus-bench-amqp-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let publisher = try await AMQPConnection.connect(
            AMQPConfiguration(url: url, connectionName: "talus-bench publisher", maxInFlightPublishes: inFlight),
            topology: AMQPTopology(queues: [AMQPQueue(queue)]))
        let consumerConnection = try await AMQPConnection.connect(AMQPConfiguration(url: url, connectionName: "talus-bench consumer"))
        let properties = AMQPProperties(contentType: "application/json", deliveryMode: .persistent)

        var start = clock.now
        var confirmations: [PublishConfirmation] = []
        confirmations.reserveCapacity(bodies.count)
        for body in bodies {
            confirmations.append(try await publisher.publish(AMQPMessage(body: body, properties: properties), exchange: "", routingKey: queue))
        }
        try await confirmations.waitForAll().get()
        let publish = Double(bodies.count) / (clock.now - start).secondsDouble

        let consumer = try await consumerConnection.consume(queue: queue, prefetch: prefetch)
        start = clock.now
        var received = 0
        for try await delivery in consumer {
            try delivery.ack()
            received += 1
            if received == bodies.count { break }
        }
        let consume = Double(received) / (clock.now - start).secondsDouble
        try await consumer.cancel()

        var syncPublish: Double?
        if syncMessages > 0 {
            start = clock.now
            for body in bodies.prefix(syncMessages) {
                try await publisher.publish(AMQPMessage(body: body, properties: properties), exchange: "", routingKey: queue).wait()
            }
            syncPublish = Double(min(syncMessages, bodies.count)) / (clock.now - start).secondsDouble
        }
        try await publisher.deleteQueue(queue)
        await consumerConnection.close()
        await publisher.close()
        return Ours(publish: publish, consume: consume, syncPublish: syncPublish)
    }

    // MARK: pika

    struct Pika {
        var publish: Double
        var consume: Double
        var version: String
    }

    func runPika(url: String) throws -> Pika {
        let script = try locatePikaScript()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            python, script, "--url", url, "--count", String(messages), "--size", String(size), "--prefetch", String(prefetch),
        ]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
              let result = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let publish = result["publish_per_s"] as? Double, let consume = result["consume_per_s"] as? Double
        else {
            throw ValidationError("\(script) failed (status \(process.terminationStatus)): \(String(decoding: data, as: UTF8.self))")
        }
        return Pika(publish: publish, consume: consume, version: result["pika"] as? String ?? "?")
    }

    func locatePikaScript() throws -> String {
        if let pikaScript { return pikaScript }
        let besideSource = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("amqp-pika.py").path
        for candidate in [besideSource, "Benchmarks/amqp-pika.py"] where FileManager.default.fileExists(atPath: candidate) {
            return candidate
        }
        throw ValidationError("amqp-pika.py not found; pass --pika-script")
    }

    // MARK: Messages and formatting

    /// A part-like JSON message padded to `size` bytes (the same as make_body in amqp-pika.py).
    static func body(index: Int, size: Int) -> [UInt8] {
        let head = "{\"v\":1,\"job\":\"65f0c0ffee0000000000beef\",\"idx\":\(index),\"attempt\":0,"
            + "\"tool\":{\"name\":\"fuzz\",\"commit\":\"0123456789abcdef\"},\"pad\":\""
        let tail = "\"}"
        let pad = max(size - head.utf8.count - tail.utf8.count, 0)
        return Array((head + String(repeating: "x", count: pad) + tail).utf8)
    }

    static func rate(_ value: Double) -> String {
        let rounded = Int(value.rounded())
        var digits = String(rounded)
        var grouped = ""
        while digits.count > 3 {
            grouped = "," + digits.suffix(3) + grouped
            digits.removeLast(3)
        }
        return digits + grouped
    }

    static func ratio(_ ours: Double, _ theirs: Double) -> String {
        theirs > 0 ? String(format: "%.1fx", ours / theirs) : "-"
    }

    static func row(_ name: String, _ ours: String, _ pika: String, _ ratio: String, _ target: String) -> String {
        func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(width - text.count, 0))
            return left ? text + fill : fill + text
        }
        return pad(name, 32, left: true) + pad(ours, 12) + pad(pika, 12) + pad(ratio, 11) + pad(target, 8)
    }
}
