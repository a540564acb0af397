import BSON
import Foundation
import Testing
@testable import TalusModel

@Suite struct DocumentTests {
    func bsonRoundTrip<T: Codable & Equatable>(_ value: T) throws {
        let doc = try BSONEncoder().encode(value)
        let back = try BSONDecoder().decode(T.self, from: doc)
        #expect(back == value, "\(doc)")
        let json = try TalusJSON.encoder().encode(value)
        // JSON objects do not keep key order: compare the canonical (sorted-keys) JSON.
        let back2 = try TalusJSON.decoder().decode(T.self, from: json)
        #expect(try TalusJSON.encoder().encode(back2) == json, "\(String(decoding: json, as: UTF8.self))")
    }

    @Test func documentsRoundTripThroughBSONAndJSON() throws {
        let os = OSDocument(name: "debian12", family: .linux, version: "12")
        try bsonRoundTrip(os)
        let image = ImageDocument(name: "guest", os: os.id, file: ImageFile(path: "x.qcow2", sha256: "ab", size: 1, virtualSize: 2),
                                  credentials: ImageCredentials(username: "u", password: "p"),
                                  request: ImageRequest(upload: ObjectId(), interactive: false),
                                  status: ImageStatus(.importing, deadline: bsonNow(), vnc: VNCInfo(host: "127.0.0.1", port: 5901, password: "abcdefgh", expires: bsonNow())))
        try bsonRoundTrip(image)
        #expect(image.redacted.credentials?.password == "********")
        let task = TaskDocument(name: "t", tool: "fuzz", toolCommit: String(repeating: "b", count: 40), image: image.id,
                                params: ["n": .int32(3), "list": [.int32(1), "two"], "nested": ["a": true]])  // JSON integers decode as int32 when they fit
        try bsonRoundTrip(task)
        var job = JobDocument(name: "j", task: task.id, image: image.id, tool: "fuzz", toolCommit: task.toolCommit, limit: 50)
        job.errors.append(JobError(idx: 1, attempt: 2, reason: "boom"))
        try bsonRoundTrip(job)
        try bsonRoundTrip(PartDocument(job: job.id, idx: 4))
        var run = RunDocument(id: "r1", job: job.id, idx: 4, attempt: 1, slave: "s")
        try bsonRoundTrip(run)
        run.log(RunLog(at: bsonNow(), level: "info", message: "hi"))
        run.exitCode = 3
        run.serialTail = "panic"
        try bsonRoundTrip(run)
        // Runs written before logs existed still decode.
        var bare = try BSONEncoder().encode(RunDocument(id: "r2", job: job.id, idx: 1, attempt: 1, slave: "s"))
        _ = bare.removeValue(forKey: "logs")
        #expect(try BSONDecoder().decode(RunDocument.self, from: bare).logs.isEmpty)
        job.observed = .running
        job.counted = 7
        job.nextIdx = 3
        try bsonRoundTrip(job)
        let jobDoc = try BSONEncoder().encode(job)
        #expect(jobDoc["observed"] == "running" && jobDoc["next_idx"]?.intValue == 3 && jobDoc["counted"]?.intValue == 7)
        try bsonRoundTrip(TokenDocument(user: ObjectId(), name: "cli", hash: "h", prefix: "tk_"))
        try bsonRoundTrip(LeaseDocument(holder: "me", expires: bsonNow(), acquired: bsonNow()))
    }

    @Test func wireNamesAreSnakeCase() throws {
        let job = JobDocument(name: "j", task: ObjectId(), image: ObjectId(), tool: "t", toolCommit: "c")
        let doc = try BSONEncoder().encode(job)
        #expect(doc["_id"]?.objectIdValue == job.id)
        #expect(doc["tool_commit"]?.stringValue == "c")
        #expect(doc["vm"]?["memory_mb"]?.intValue == 256)
        #expect(doc["status"]?["name"]?.stringValue == "run")
        #expect(doc["created"]?.dateValue == job.created)
    }

    @Test func imageRequestScriptAndOptionalVMShape() throws {
        var image = ImageDocument(name: "g", os: ObjectId(), request: ImageRequest(interactive: false, script: "echo hi\n"),
                                  status: ImageStatus(.configure))
        var doc = try BSONEncoder().encode(image)
        #expect(doc["request"]?["script"]?.stringValue == "echo hi\n")
        #expect(doc["vm"] == nil, "no shape: the master's defaults apply")
        try bsonRoundTrip(image)
        image.vm = VMShape(cpus: 2, memoryMB: 1024)
        doc = try BSONEncoder().encode(image)
        #expect(doc["vm"]?["memory_mb"]?.intValue == 1024)
        try bsonRoundTrip(image)
    }

    @Test func newerSchemaIsRefused() throws {
        var os = OSDocument(name: "x", family: .other)
        try os.checkSchema()
        os.schema = OSDocument.currentSchema + 1
        #expect(throws: SchemaError.self) { try os.checkSchema() }
    }
}
