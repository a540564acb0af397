// Uploads: streamed to disk with sha256, size limits, cut-off bodies, resumption, expiry.

import BSON
import Foundation
import Logging
import Mongo
import TalusAPI
import TalusAPITestSupport
import TalusModel
import TalusTestSupport
import Testing

/// Sends raw bytes over a TCP connection and closes it (a client that dies mid-upload).
func sendRaw(port: Int, _ bytes: Data) throws {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket: \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard ok == 0 else { throw TestSupportError("connect: \(errno)") }
    try bytes.withUnsafeBytes { raw in
        var done = 0
        while done < raw.count {
            let n = send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL))
            guard n > 0 else { throw TestSupportError("send: \(errno)") }
            done += n
        }
    }
}

@Suite struct UploadTests {
    static func upload(_ api: APITestServer, size: Int, token: String? = nil) async throws -> String {
        let answer = try await api.request(.POST, "/api/v1/uploads", token: token ?? api.adminToken, json: ["filename": "disk.raw", "size": size])
        #expect(answer.status == 201, "\(answer.text)")
        return try #require(answer.object?["_id"] as? String)
    }

    static func doc(_ api: APITestServer, _ id: String) async throws -> UploadDocument {
        try #require(try await api.database.collection("uploads", as: UploadDocument.self).findOne(["_id": .objectId(ObjectId(id)!)]))
    }

    @Test func contentIsStoredWithItsSha256() async throws {
        let api = try await APITestServer.start("upok")
        do {
            let data = Data((0..<(3 << 20) + 17).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
            let id = try await Self.upload(api, size: data.count)
            let put = try await api.request(.PUT, "/api/v1/uploads/\(id)/content", token: api.adminToken, body: data)
            #expect(put.status == 200, "\(put.text)")
            #expect(put.object?["complete"] as? Bool == true)
            #expect(put.object?["sha256"] as? String == sha256Hex(data))
            let doc = try await Self.doc(api, id)
            #expect(doc.complete && doc.size == Int64(data.count) && doc.path == id)
            #expect(FileManager.default.contents(atPath: api.config.uploadsDirectory + "/" + id) == data)
            #expect(!FileManager.default.fileExists(atPath: api.config.uploadsDirectory + "/" + id + ".part"))
            #expect(try sha256sum(path: api.config.uploadsDirectory + "/" + id) == doc.sha256)
            // A complete upload takes no more bytes.
            #expect(try await api.request(.PUT, "/api/v1/uploads/\(id)/content", token: api.adminToken, body: data).status == 409)
            // An empty file is complete at once.
            let empty = try await api.request(.POST, "/api/v1/uploads", token: api.adminToken, json: ["filename": "e", "size": 0])
            #expect(empty.object?["complete"] as? Bool == true)
            #expect(empty.object?["sha256"] as? String == sha256Hex(Data()))
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func oversizedUploadsAreRefusedAndLeaveNothing() async throws {
        let api = try await APITestServer.start("upbig") { $0.uploadMaxBytes = 1 << 20 }
        do {
            // Announced over uploads.max_bytes.
            let tooBig = try await api.request(.POST, "/api/v1/uploads", token: api.adminToken, json: ["filename": "x", "size": (1 << 20) + 1])
            #expect(tooBig.status == 413)
            #expect(try await api.database.collection("uploads").countDocuments() == 0)
            // A body longer than announced (Content-Length says so: refused before reading).
            let id = try await Self.upload(api, size: 1000)
            let longer = try await api.request(.PUT, "/api/v1/uploads/\(id)/content", token: api.adminToken, body: Data(count: 5000))
            #expect(longer.status == 413)
            // A chunked body that turns out longer: refused while streaming, the partial file removed.
            let body = Data(count: 4000)
            var raw = Data("PUT /api/v1/uploads/\(id)/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(api.adminToken)\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
            raw += Data(String(body.count, radix: 16).utf8) + Data("\r\n".utf8) + body + Data("\r\n0\r\n\r\n".utf8)
            try sendRaw(port: api.port, raw)
            try await waitUntil("the refused transfer to be cleaned up") {
                let doc = try await Self.doc(api, id)
                return doc.size == 0 && !doc.complete
                    && !FileManager.default.fileExists(atPath: api.config.uploadsDirectory + "/\(id).part")
            }
            let doc = try await Self.doc(api, id)
            #expect(doc.sha256 == nil)
            #expect(!FileManager.default.fileExists(atPath: api.config.uploadsDirectory + "/\(id)"))
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func aCutOffBodyLeavesAnIncompleteUploadThatResumes() async throws {
        let api = try await APITestServer.start("upcut")
        do {
            let data = Data((0..<(2 << 20)).map { _ in UInt8.random(in: 0...255) })
            let id = try await Self.upload(api, size: data.count)
            let sent = 700_000
            var raw = Data("PUT /api/v1/uploads/\(id)/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(api.adminToken)\r\nContent-Type: application/octet-stream\r\nContent-Length: \(data.count)\r\n\r\n".utf8)
            raw += data.prefix(sent)
            try sendRaw(port: api.port, raw)
            // The server records what it safely wrote; nothing is complete, no final file.
            try await waitUntil("the cut-off transfer to be recorded") { try await Self.doc(api, id).size == Int64(sent) }
            let partial = try await Self.doc(api, id)
            #expect(!partial.complete && partial.sha256 == nil)
            #expect(!FileManager.default.fileExists(atPath: api.config.uploadsDirectory + "/\(id)"))
            // An import of it is refused.
            let os = try await api.request(.POST, "/api/v1/os", token: api.adminToken, json: ["name": "deb", "family": "linux"])
            let osId = try #require(os.object?["_id"] as? String)
            let early = try await api.request(.POST, "/api/v1/images", token: api.adminToken, json: ["name": "early", "os": osId, "upload": id])
            #expect(early.status == 409, "\(early.text)")
            #expect(try await api.database.collection("images").countDocuments() == 0)
            // Resuming from the wrong offset is a 409 that says where to resume.
            let wrong = try await api.request(.PUT, "/api/v1/uploads/\(id)/content", token: api.adminToken, body: data.suffix(from: 5),
                                              headers: [("Content-Range", "bytes 5-\(data.count - 1)/\(data.count)")])
            #expect(wrong.status == 409)
            #expect((wrong.object?["detail"] as? String)?.contains("bytes \(sent)-") == true)
            // Resuming from the right one completes it, with the sha256 of the whole file.
            let resumed = try await api.request(.PUT, "/api/v1/uploads/\(id)/content", token: api.adminToken, body: data.suffix(from: sent),
                                                headers: [("Content-Range", "bytes \(sent)-\(data.count - 1)/\(data.count)")])
            #expect(resumed.status == 200, "\(resumed.text)")
            #expect(resumed.object?["sha256"] as? String == sha256Hex(data))
            #expect(FileManager.default.contents(atPath: api.config.uploadsDirectory + "/\(id)") == data)
            // A resumable transfer in pieces: 202 until the last piece.
            let id2 = try await Self.upload(api, size: 10)
            let first = try await api.request(.PUT, "/api/v1/uploads/\(id2)/content", token: api.adminToken, body: Data("01234".utf8),
                                              headers: [("Content-Range", "bytes 0-4/10")])
            #expect(first.status == 202)
            #expect(first.object?["size"] as? Int == 5)
            let second = try await api.request(.PUT, "/api/v1/uploads/\(id2)/content", token: api.adminToken, body: Data("56789".utf8),
                                               headers: [("Content-Range", "bytes 5-9/10")])
            #expect(second.status == 200)
            #expect(second.object?["sha256"] as? String == sha256Hex(Data("0123456789".utf8)))
            // The import of the complete upload is accepted.
            let image = try await api.request(.POST, "/api/v1/images", token: api.adminToken, json: ["name": "disk", "os": osId, "upload": id])
            #expect(image.status == 201, "\(image.text)")
            #expect((image.object?["status"] as? [String: Any])?["name"] as? String == "import")
            // ... once: a second import of the same upload is a conflict, and the upload cannot be deleted meanwhile.
            #expect(try await api.request(.POST, "/api/v1/images", token: api.adminToken, json: ["name": "disk2", "os": osId, "upload": id]).status == 409)
            #expect(try await api.request(.DELETE, "/api/v1/uploads/\(id)", token: api.adminToken).status == 409)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func expiredAndOrphanedUploadsAreSwept() async throws {
        let api = try await APITestServer.start("upsweep")
        do {
            let kept = try await Self.upload(api, size: 4)
            let expired = try await Self.upload(api, size: 4)
            _ = try await api.request(.PUT, "/api/v1/uploads/\(expired)/content", token: api.adminToken, body: Data("abcd".utf8))
            let incomplete = try await Self.upload(api, size: 4)
            _ = try await api.request(.PUT, "/api/v1/uploads/\(incomplete)/content", token: api.adminToken, body: Data("ab".utf8),
                                      headers: [("Content-Range", "bytes 0-1/4")])
            let past = Date().addingTimeInterval(-10)
            try await api.database.collection("uploads").updateMany(["_id": ["$in": [.objectId(ObjectId(expired)!), .objectId(ObjectId(incomplete)!)]]],
                                                                   ["$set": ["expires": .datetime(past)]])
            let orphan = api.config.uploadsDirectory + "/" + ObjectId().hex + ".part"
            FileManager.default.createFile(atPath: orphan, contents: Data("left behind".utf8))
            let unrelated = api.config.uploadsDirectory + "/README"
            FileManager.default.createFile(atPath: unrelated, contents: Data())
            let removed = try await TalusAPIServer.sweepUploads(config: api.config, client: api.client, logger: Logger(label: "test"),
                                                                orphanGrace: 0)
            #expect(removed == 3)
            let left = try await api.database.collection("uploads").find().compactMap { $0["_id"]?.objectIdValue?.hex }
            #expect(left == [kept])
            for id in [expired, incomplete] {
                #expect(!FileManager.default.fileExists(atPath: api.config.uploadsDirectory + "/\(id)"))
                #expect(!FileManager.default.fileExists(atPath: api.config.uploadsDirectory + "/\(id).part"))
            }
            #expect(!FileManager.default.fileExists(atPath: orphan))
            #expect(FileManager.default.fileExists(atPath: unrelated))
            // The TTL index backs the sweep up.
            let indexes = try await api.database.collection("uploads").listIndexes()
            #expect(indexes.contains { $0["key"]?["expires"] != nil && $0["expireAfterSeconds"]?.intValue == 0 })
        } catch { await api.stop(); throw error }
        await api.stop()
    }
}
