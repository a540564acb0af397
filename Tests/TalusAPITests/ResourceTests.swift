// Image files with ranges; tasks and jobs against recorded manifests; pagination; files.

import BSON
import Foundation
import Mongo
import TalusAPI
import TalusAPITestSupport
import TalusModel
import TalusTestSupport
import Testing

@Suite struct ResourceTests {
    @Test func imageFilesServeExactRanges() async throws {
        let api = try await APITestServer.start("imgfile")
        do {
            let (_, slave) = try await api.makeUser(role: .slave)
            let bytes = Data((0..<(1 << 20) + 333).map { _ in UInt8.random(in: 0...255) })
            let sha = sha256Hex(bytes)
            let id = try await api.insertReadyImage(contents: bytes, sha256: sha)
            let path = "/api/v1/images/\(id.hex)/file"
            let whole = try await api.request(.GET, path, token: slave)
            #expect(whole.status == 200)
            #expect(whole.body == bytes)
            #expect(whole.header("X-Talus-SHA256") == sha)
            #expect(whole.header("ETag") == "\"\(sha)\"")
            #expect(whole.header("Accept-Ranges") == "bytes")
            #expect(whole.header("Content-Length") == String(bytes.count))
            let size = bytes.count
            for (range, lower, upper) in [("bytes=100-199", 100, 199), ("bytes=0-0", 0, 0), ("bytes=1000000-", 1_000_000, size - 1),
                                          ("bytes=-10", size - 10, size - 1), ("bytes=\(size - 5)-\(size + 100)", size - 5, size - 1)] {
                let part = try await api.request(.GET, path, token: slave, headers: [("Range", range)])
                #expect(part.status == 206, "\(range)")
                #expect(part.body == bytes[lower...upper], "\(range)")
                #expect(part.header("Content-Range") == "bytes \(lower)-\(upper)/\(size)", "\(range)")
                #expect(part.header("X-Talus-SHA256") == sha)
            }
            for range in ["bytes=\(size)-", "bytes=5-2", "bytes=-0"] {
                let bad = try await api.request(.GET, path, token: slave, headers: [("Range", range)])
                #expect(bad.status == 416, "\(range)")
                #expect(bad.header("Content-Range") == "bytes */\(size)")
            }
            // If-Range with another ETag: the whole file. If-None-Match with ours: 304.
            let stale = try await api.request(.GET, path, token: slave, headers: [("Range", "bytes=0-9"), ("If-Range", "\"other\"")])
            #expect(stale.status == 200 && stale.body == bytes)
            #expect(try await api.request(.GET, path, token: slave, headers: [("If-None-Match", "\"\(sha)\"")]).status == 304)
            let head = try await api.request(.HEAD, path, token: slave)
            #expect(head.status == 200 && head.body.isEmpty)
            #expect(head.header("Content-Length") == String(size))
            #expect(head.header("X-Talus-SHA256") == sha)
            // Not ready: no file yet.
            try await api.database.collection("images").updateOne(["_id": .objectId(id)], ["$set": ["status.name": "configuring"]])
            #expect(try await api.request(.GET, path, token: slave).status == 409)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    static let commitA = String(repeating: "a", count: 40)
    static let commitB = String(repeating: "b", count: 40)

    /// Records tool `fuzz` at two commits; the newer declares one more parameter.
    static func recordTool(_ api: APITestServer) async throws {
        let code = api.database.collection("code", as: CodeDocument.self)
        let old = ToolManifest(name: "fuzz", description: "a fuzzer", entry: "./run.sh", params: [
            ToolParam(name: "iterations", type: .int, default: .int64(10)),
        ])
        var new = old
        new.params.append(ToolParam(name: "corpus", type: .fileset, required: true))
        new.params.append(ToolParam(name: "mode", type: .string, default: "fast"))
        try await code.insertOne(CodeDocument(name: "fuzz", kind: .tool, commit: commitA, committed: Date(timeIntervalSince1970: 1000),
                                              manifest: old, path: "tools/fuzz"))
        try await code.insertOne(CodeDocument(name: "fuzz", kind: .tool, commit: commitB, committed: Date(timeIntervalSince1970: 2000),
                                              manifest: new, path: "tools/fuzz"))
    }

    @Test func tasksPinCommitsAndJobsMergeCheckedParams() async throws {
        let api = try await APITestServer.start("jobs")
        do {
            try await Self.recordTool(api)
            let (_, user) = try await api.makeUser(role: .user)
            let image = try await api.insertReadyImage(contents: Data("d".utf8), sha256: sha256Hex(Data("d".utf8)))
            // Newest commit pinned; params checked against its manifest.
            let missing = try await api.request(.POST, "/api/v1/tasks", token: user, json: ["name": "t0", "tool": "fuzz", "image": image.hex])
            #expect(missing.status == 422)
            #expect((missing.object?["detail"] as? String)?.contains("corpus") == true, "\(missing.text)")
            let task = try await api.request(.POST, "/api/v1/tasks", token: user, json: [
                "name": "t1", "tool": "fuzz", "image": image.hex, "params": ["corpus": "seeds"], "limit": 100,
            ])
            #expect(task.status == 201, "\(task.text)")
            #expect(task.object?["tool_commit"] as? String == Self.commitB)
            let taskId = try #require(task.object?["_id"] as? String)
            // An explicit older commit is checked against that manifest (no `corpus` there).
            let pinnedOld = try await api.request(.POST, "/api/v1/tasks", token: user, json: [
                "name": "t2", "tool": "fuzz", "tool_commit": Self.commitA, "image": image.hex, "params": ["corpus": "x"],
            ])
            #expect(pinnedOld.status == 422)
            // Unknown tools need a commit to be accepted unchecked.
            #expect(try await api.request(.POST, "/api/v1/tasks", token: user, json: ["name": "t3", "tool": "other", "image": image.hex]).status == 422)
            // Job: params merged over the task's, defaults filled, type-checked.
            let bad = try await api.request(.POST, "/api/v1/jobs", token: user, json: ["task": taskId, "params": ["iterations": "many"]])
            #expect(bad.status == 422)
            let unknown = try await api.request(.POST, "/api/v1/jobs", token: user, json: ["task": taskId, "params": ["speed": 1]])
            #expect(unknown.status == 422)
            #expect(try await api.database.collection("jobs").countDocuments() == 0)
            let job = try await api.request(.POST, "/api/v1/jobs", token: user, json: [
                "task": taskId, "params": ["iterations": 500], "priority": 80, "vm": ["memory_mb": 512],
            ])
            #expect(job.status == 201, "\(job.text)")
            let jobDoc = try TalusJSON.decoder().decode(JobDocument.self, from: job.body)
            #expect(Dictionary(uniqueKeysWithValues: jobDoc.params.map { ($0.key, $0.value) })
                == ["corpus": "seeds", "iterations": .int64(500), "mode": "fast"])
            #expect(jobDoc.toolCommit == Self.commitB && jobDoc.tool == "fuzz" && jobDoc.image == image)
            #expect(jobDoc.status.name == .run && jobDoc.limit == 100 && jobDoc.priority == 80)
            #expect(jobDoc.vm == VMShape(cpus: 1, memoryMB: 512, timeoutS: 600))
            // Cancel is the one request; master states are refused; terminal jobs cannot be cancelled.
            #expect(try await api.request(.PATCH, "/api/v1/jobs/\(jobDoc.id.hex)", token: user, json: ["status": "finished"]).status == 422)
            let cancel = try await api.request(.PATCH, "/api/v1/jobs/\(jobDoc.id.hex)", token: user, json: ["status": "cancel", "priority": 5])
            #expect(cancel.status == 200)
            let cancelled = try #require(try await api.database.collection("jobs", as: JobDocument.self).findOne(["_id": .objectId(jobDoc.id)]))
            #expect(cancelled.status.name == .cancel && cancelled.priority == 5)
            try await api.database.collection("jobs").updateOne(["_id": .objectId(jobDoc.id)], ["$set": ["status.name": "cancelled"]])
            let late = try await api.request(.PATCH, "/api/v1/jobs/\(jobDoc.id.hex)", token: user, json: ["status": "cancel"])
            #expect(late.status == 409)
            // Others may read the job but not cancel it.
            let (_, other) = try await api.makeUser(role: .user)
            #expect(try await api.request(.GET, "/api/v1/jobs/\(jobDoc.id.hex)", token: other).status == 200)
            #expect(try await api.request(.PATCH, "/api/v1/jobs/\(jobDoc.id.hex)", token: other, json: ["priority": 1]).status == 403)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func listsPageByCursorNewestFirst() async throws {
        let api = try await APITestServer.start("pages")
        do {
            let job = ObjectId(), otherJob = ObjectId()
            let results = api.database.collection("results", as: ResultDocument.self)
            try await results.insertMany((0..<130).map { ResultDocument(job: job, idx: $0, run: "r", tool: "fuzz", type: $0 % 2 == 0 ? "even" : "odd") })
            try await results.insertMany((0..<5).map { ResultDocument(job: otherJob, idx: $0, run: "r", tool: "fuzz", type: "even") })
            var seen: [String] = []
            var next: String? = nil
            var pages = 0
            repeat {
                let query = "job=\(job.hex)&limit=50" + (next.map { "&after=\($0)" } ?? "")
                let page = try await api.request(.GET, "/api/v1/results?" + query, token: api.adminToken)
                #expect(page.status == 200)
                let items = try #require(page.object?["items"] as? [[String: Any]])
                seen += items.compactMap { $0["_id"] as? String }
                next = page.object?["next"] as? String
                #expect(page.object?.keys.contains("next") == true)  // null on the last page, never absent
                pages += 1
            } while next != nil
            #expect(pages == 3 && seen.count == 130 && Set(seen).count == 130)
            #expect(seen == seen.sorted(by: >))  // newest first
            let evens = try await api.request(.GET, "/api/v1/results?job=\(job.hex)&type=even&limit=500", token: api.adminToken)
            #expect((evens.object?["items"] as? [Any])?.count == 65)
            let idx = try await api.request(.GET, "/api/v1/results?idx=3", token: api.adminToken)
            #expect((idx.object?["items"] as? [Any])?.count == 2)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func filesAreStoredInGridFSAndComeBackByteExact() async throws {
        let api = try await APITestServer.start("files")
        do {
            let (_, user) = try await api.makeUser(role: .user)
            let content = Data((0..<600_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
            let stored = try await api.request(.POST, "/api/v1/files?filename=seed.bin&tag=corpus", token: user, body: content)
            #expect(stored.status == 201, "\(stored.text)")
            let id = try #require(stored.object?["_id"] as? String)
            // GridFS layout: one files document, chunks of 255 KiB.
            let file = try #require(try await api.database.collection("files.files").findOne(["_id": .objectId(ObjectId(id)!)]))
            #expect(file["length"]?.int64Value == 600_000 && file["chunkSize"]?.intValue == 255 * 1024)
            #expect(file["metadata"]?["sha256"]?.stringValue == sha256Hex(content))
            #expect(try await api.database.collection("files.chunks").countDocuments(["files_id": .objectId(ObjectId(id)!)]) == 3)
            let back = try await api.request(.GET, "/api/v1/files/\(id)/content", token: user)
            #expect(back.status == 200 && back.body == content)
            #expect(back.header("X-Talus-SHA256") == sha256Hex(content))
            // Filesets hold references; a file in a fileset cannot be deleted.
            let set = try await api.request(.POST, "/api/v1/filesets", token: user, json: ["name": "seeds", "files": [id, id]])
            #expect(set.status == 201, "\(set.text)")
            #expect((set.object?["files"] as? [Any])?.count == 1)
            #expect(try await api.request(.POST, "/api/v1/filesets", token: user, json: ["name": "bad", "files": [ObjectId().hex]]).status == 422)
            #expect(try await api.request(.DELETE, "/api/v1/files/\(id)", token: user).status == 409)
            let setId = try #require(set.object?["_id"] as? String)
            #expect(try await api.request(.DELETE, "/api/v1/filesets/\(setId)", token: user).status == 204)
            #expect(try await api.request(.DELETE, "/api/v1/files/\(id)", token: user).status == 204)
            #expect(try await api.database.collection("files.chunks").countDocuments() == 0)
            // Over files.max_bytes: refused, no chunks left behind.
            let small = try await APITestServer.start("filesmall") { $0.fileMaxBytes = 1000 }
            do {
                let tooBig = try await small.request(.POST, "/api/v1/files?filename=big", token: small.adminToken, body: Data(count: 5000))
                #expect(tooBig.status == 413)
                #expect(try await small.database.collection("files.chunks").countDocuments() == 0)
                #expect(try await small.request(.POST, "/api/v1/files", token: small.adminToken, body: Data(count: 5)).status == 422)
            } catch { await small.stop(); throw error }
            await small.stop()
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func metricsCountRequestsByRouteAndStatus() async throws {
        let api = try await APITestServer.start("metrics")
        do {
            _ = try await api.request(.GET, "/api/v1/jobs/\(ObjectId().hex)", token: api.adminToken)
            let metrics = try await api.request(.GET, "/metrics", token: api.adminToken)
            #expect(metrics.status == 200)
            #expect(metrics.text.contains("talus_api_requests_total{"))
            #expect(metrics.text.contains("route=\"/api/v1/jobs/{id}\""))
            #expect(metrics.text.contains("status=\"404\""))
            let health = try await api.request(.GET, "/healthz", token: nil)
            #expect(health.status == 200)
            #expect((health.object?["checks"] as? [String: String])?["mongo"] == "ok")
        } catch { await api.stop(); throw error }
        await api.stop()
    }
}
