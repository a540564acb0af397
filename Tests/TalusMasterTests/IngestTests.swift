// Event ingestion against the real services: unreadable messages dead-lettered and counted,
// crash buckets with capped samples and byte-exact files, slaves tracked from heartbeats.

import AMQP
import BSON
import Foundation
import Mongo
import TalusCore
@testable import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

@Suite(.serialized) struct IngestTests {
    @Test func unreadableEventsAreDeadLetteredAndCountedAndTheMasterKeepsRunning() async throws {
        try await MasterFixture.with("dead") { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            let before = try await master.metrics()
            let amqp = try await f.amqp()
            let unknownJob = EventMessage(slave: "s", source: EventSource(job: ObjectId(), idx: 1, attempt: 1, run: "r", seq: 1),
                                          body: .report(.progress(amount: 1)))
            let bodies: [[UInt8]] = [
                Array("this is not json".utf8),
                Array(#"{"v": 99, "type": "progress", "slave": "s", "at": "2026-01-01T00:00:00.000Z"}"#.utf8),
                Array(#"{"v": 1, "type": "progress", "slave": "s"}"#.utf8),
                Array(try TalusJSON.encoder().encode(unknownJob)),
            ]
            for body in bodies {
                try await amqp.publish(AMQPMessage(body: body), exchange: "", routingKey: f.names.eventsQueue).wait()
            }
            try await waitUntil("four messages dead-lettered") {
                try await amqp.inspectQueue(f.names.deadLetterQueue).messageCount == 4
            }
            await amqp.close()
            let after = try await master.metrics()
            func delta(_ reason: String) -> Double {
                metricValue(after, "talus_master_events_dead_lettered_total", labels: "reason=\"\(reason)\"")
                    - metricValue(before, "talus_master_events_dead_lettered_total", labels: "reason=\"\(reason)\"")
            }
            #expect(delta("malformed") == 2)
            #expect(delta("version") == 1)
            #expect(delta("unknown_job") == 1)
            // Still ingesting and dispatching.
            _ = try await f.slave()
            let id = try await f.insertJob(limit: 3)
            #expect(try await f.waitForStatus(id, .finished).progress == 3)
            #expect(master.service.healthReport().ok)
        }
    }

    @Test func crashesAreBucketedWithCappedSamplesAndByteExactFiles() async throws {
        try await MasterFixture.with("crash", overrides: ["crashes.max_samples": "3"]) { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            // 300 KiB: one full chunk and a short last one.
            let file = (0..<(300 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let crash = TestSlave.Crash(signature: { idx in "SEGV in parse_header at 0x7ffd\(String(format: "%08x", idx * 4096))" }, file: file)
            _ = try await f.slave(capacity: 2, behavior: .init(duplicateEvents: true, results: 0, crash: crash))
            let id = try await f.insertJob(limit: 5)
            _ = try await f.waitForStatus(id, .finished)
            try await f.settled(id)
            let crashes = try await f.database.collection("crashes", as: CrashDocument.self).find(["job": .objectId(id)])
            #expect(crashes.count == 1, "addresses do not split the bucket")
            let bucket = try #require(crashes.first)
            #expect(bucket.bucket == "SEGV in parse_header at 0xADDR")
            #expect(bucket.count == 5, "every crash counted once although every event came twice")
            #expect(bucket.samples.count == 3)
            #expect(bucket.tool == "toy")
            #expect(bucket.firstSeen <= bucket.lastSeen)
            let ref = try #require(bucket.samples.first?.file)
            #expect(ref.size == Int64(file.count))
            #expect(ref.sha256 == hexString(TalusCore.sha256(file)))
            let chunks = try await f.database.collection("files.chunks").find(["files_id": .objectId(ref.id)], options: FindOptions(sort: ["n": 1]))
            #expect(chunks.count == 2)
            let bytes = chunks.flatMap { $0["data"]?.binaryValue?.bytes ?? [] }
            #expect(bytes == file)
            let stored = try await f.database.collection("files.files").findOne(["_id": .objectId(ref.id)])
            #expect(stored?["length"]?.intValue == file.count)
            #expect(stored?["chunkSize"]?.intValue == FileChunk.chunkSize)
            // The layout the API reads to serve the file (GridFS fields, sha256 in metadata).
            let typed = try await f.database.collection("files.files", as: StoredFileDocument.self).findOne(["_id": .objectId(ref.id)])
            #expect(typed?.metadata.sha256 == ref.sha256)
            #expect(typed?.metadata.job == id)
            // Five files, one per part, each stored once.
            #expect(try await f.count("files.files", ["metadata.job": .objectId(id)]) == 5)
            #expect(try await f.count("files.chunks", [:]) == 10)
        }
    }

    @Test func slavesAreTrackedFromHeartbeatsAndDrainedOnRequest() async throws {
        try await MasterFixture.with("slaves") { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            let slave = try await f.slave("host-a", capacity: 3)
            let doc = try await waitFor("slave document") {
                try await f.database.collection("slaves", as: SlaveDocument.self).findOne(["uuid": .string(slave.uuid)])
            }
            #expect(doc.status.name == .online)
            #expect(doc.capacity.vms == 3)
            #expect(doc.hostname == "host-a")
            let raw = try await f.database.collection("slaves").findOne(["uuid": .string(slave.uuid)])
            #expect(raw?["last_heartbeat"]?.dateValue != nil, "a real BSON date, so the TTL index applies")
            let indexes = try await f.database.collection("slaves").listIndexes()
            #expect(indexes.contains { $0["expireAfterSeconds"]?.intValue == 86_400 && $0["key"]?["last_heartbeat"] != nil })
            #expect(indexes.contains { $0["unique"]?.boolValue == true && $0["key"]?["uuid"] != nil })

            try await f.database.collection("slaves").updateOne(
                ["uuid": .string(slave.uuid)], ["$set": ["status": ["name": "drain", "since": .datetime(Date())]]])
            try await waitUntil("drain broadcast") { slave.stats.control.contains { $0.type == .drainSlave && $0.slave == slave.uuid } }
            try await waitUntil("slave draining") {
                try await f.database.collection("slaves", as: SlaveDocument.self).findOne(["uuid": .string(slave.uuid)])?.status.name == .draining
            }
        }
    }

    @Test func aSilentSlaveGoesOfflineAndItsPartsRunElsewhereWithExactTotals() async throws {
        try await MasterFixture.with("silent", overrides: ["slaves.offline_after": "4s"]) { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            let quiet = try await f.slave("quiet", capacity: 2, behavior: .init(work: .milliseconds(400)))
            let id = try await f.insertJob(limit: 12)
            try await waitUntil("the quiet slave runs parts", timeout: .seconds(60)) { quiet.stats.running.count == 2 }
            quiet.goSilent()
            _ = try await f.slave("healthy", capacity: 2, behavior: .init(duplicateEvents: true, work: .milliseconds(50)))
            try await waitUntil("quiet slave offline", timeout: .seconds(30)) {
                try await f.database.collection("slaves", as: SlaveDocument.self).findOne(["uuid": .string(quiet.uuid)])?.status.name == .offline
            }
            try await waitUntil("its runs lost") {
                try await f.count("runs", ["slave": .string(quiet.uuid), "state": "lost"]) == 2
            }
            await quiet.die()  // its unacked parts go back to the queue
            let job = try await f.waitForStatus(id, .finished)
            try await f.settled(id)
            #expect(job.progress == 12)
            #expect(try await f.count("runs", ["job": .objectId(id), "state": "finished"]) == 12)
            #expect(try await f.parts(of: id).filter { $0.status.name == .done }.count == 12)
        }
    }
}
