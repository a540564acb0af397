import BSON
import Foundation
import Testing
@testable import TalusModel

@Suite struct MessageTests {
    let job = ObjectId()

    func roundTrip<T: Codable & Equatable>(_ value: T) throws -> T {
        let data = try TalusJSON.encoder().encode(value)
        let back = try TalusJSON.decoder().decode(T.self, from: data)
        // JSON objects do not keep key order: compare the canonical (sorted-keys) JSON.
        #expect(try TalusJSON.encoder().encode(back) == data, "\(String(decoding: data, as: UTF8.self))")
        return back
    }

    @Test func everyEventRoundTrips() throws {
        let source = EventSource(job: job, idx: 3, attempt: 2, run: "run-1", seq: 7)
        let info = SlaveInfo(uuid: "u", hostname: "h", address: "127.0.0.1", version: "1",
                             capacity: .init(vms: 2, memoryMB: 1024),
                             running: [.init(job: job, idx: 3, attempt: 2, run: "run-1", since: bsonNow())], draining: false)
        let bodies: [EventBody] = [
            .partStarted,
            .report(.progress(amount: 4)),
            .report(.result(kind: "coverage", data: ["edges": 12], files: ["cov.txt"])),
            .report(.crash(signature: "SEGV", data: ["pc": "0x1"], file: "crash-1")),
            .report(.log(level: "warning", message: "héllo\nworld")),
            .report(.file(FileChunk(name: "crash-1", offset: 0, data: Data([0, 1, 255]), last: true, size: 3, sha256: "ab"))),
            .partEnded(outcome: .failure, reason: "deadline", exitCode: nil, serialTail: "boot…"),
            .heartbeat(info), .slaveOnline(info), .slaveOffline(info),
        ]
        for body in bodies {
            let isSlaveEvent = ["heartbeat", "slave-online", "slave-offline"].contains(body.type)
            _ = try roundTrip(EventMessage(slave: "u", source: isSlaveEvent ? nil : source, body: body))
        }
    }

    @Test func eventJSONIsFlat() throws {
        let msg = EventMessage(slave: "s", source: EventSource(job: job, idx: 0, attempt: 1, run: "r", seq: 1),
                               body: .report(.progress(amount: 2)))
        let object = try JSONSerialization.jsonObject(with: try TalusJSON.encoder().encode(msg)) as! [String: Any]
        #expect(object["type"] as? String == "progress")
        #expect(object["amount"] as? Int == 2)
        #expect(object["v"] as? Int == 1)
    }

    @Test func unknownVersionIsRefused() throws {
        let text = #"{"v":2,"type":"progress","slave":"s","at":"2026-11-21T10:00:00.000Z","amount":1}"#
        #expect(throws: MessageVersionError.self) {
            try TalusJSON.decoder().decode(EventMessage.self, from: Data(text.utf8))
        }
        let part = #"{"v":7,"job":"5f0c8c0e1a2b3c4d5e6f7081"}"#
        #expect(throws: MessageVersionError.self) {
            try TalusJSON.decoder().decode(PartMessage.self, from: Data(part.utf8))
        }
    }

    @Test func partEventWithoutSourceIsRefused() {
        let text = #"{"v":1,"type":"progress","slave":"s","at":"2026-11-21T10:00:00Z","amount":1}"#
        #expect(throws: DecodingError.self) { try TalusJSON.decoder().decode(EventMessage.self, from: Data(text.utf8)) }
    }

    @Test func garbageEventsThrowNotCrash() {
        for text in ["", "null", "[]", "{}", #"{"v":1}"#, #"{"v":"1"}"#, "\u{0}\u{1}", #"{"v":1,"type":"nope","slave":"s","at":"x"}"#] {
            #expect(throws: (any Error).self) { try TalusJSON.decoder().decode(EventMessage.self, from: Data(text.utf8)) }
        }
    }

    @Test func partAndControlRoundTrip() throws {
        let part = PartMessage(
            job: job, idx: 9, attempt: 1,
            image: PartImage(id: ObjectId(), sha256: "aa", chain: [ImageChainEntry(id: ObjectId(), sha256: "aa", size: 10, backing: nil)]),
            tool: PartTool(name: "fuzz", commit: String(repeating: "a", count: 40)), params: ["n": .int32(3), "s": "x"],
            vm: VMShape(cpus: 1, memoryMB: 256, timeoutS: 60), network: .none, deadline: bsonNow(), debug: true)
        _ = try roundTrip(part)
        _ = try roundTrip(ControlMessage(.cancelJob, job: job))
        _ = try roundTrip(ControlMessage(.drainSlave, slave: "u"))
    }

    @Test func datesKeepMilliseconds() throws {
        let d = Date(timeIntervalSince1970: 1_700_000_000.123)
        #expect(TalusJSON.formatDate(d) == "2023-11-14T22:13:20.123Z")
        #expect(TalusJSON.parseDate("2023-11-14T22:13:20.123Z")!.timeIntervalSince1970 == 1_700_000_000.123)
        #expect(TalusJSON.parseDate("2023-11-14T22:13:20Z") != nil)
        #expect(TalusJSON.parseDate("yesterday") == nil)
    }
}
