// Bad input gets the right problem response and leaves the database as it was.

import BSON
import Foundation
import Mongo
import TalusAPI
import TalusAPITestSupport
import TalusModel
import TalusTestSupport
import Testing

@Suite struct ValidationTests {
    /// Documents in every collection the API writes, to show a refused request wrote nothing.
    static func counts(_ api: APITestServer) async throws -> [String: Int] {
        var out: [String: Int] = [:]
        for c in ["os", "images", "uploads", "tasks", "jobs", "users", "tokens", "filesets", "files.files", "files.chunks"] {
            out[c] = try await api.database.collection(c).countDocuments()
        }
        return out
    }

    @Test func malformedWrongAndUnknownBodiesAreRefused() async throws {
        let api = try await APITestServer.start("valbody")
        do {
            let token = api.adminToken
            let before = try await Self.counts(api)
            // Malformed JSON: 400.
            let malformed = try await api.request(.POST, "/api/v1/os", token: token, body: Data("{\"name\": ".utf8),
                                                  headers: [("Content-Type", "application/json")])
            #expect(malformed.status == 400)
            #expect(malformed.header("Content-Type") == "application/problem+json")
            #expect(malformed.object?["title"] as? String == "Malformed JSON")
            // Not an object: 422.
            #expect(try await api.request(.POST, "/api/v1/os", token: token, json: [1, 2]).status == 422)
            // Wrong types: 422 naming every field.
            let wrong = try await api.request(.POST, "/api/v1/os", token: token, json: ["name": 5, "family": "plan9", "tags": "x"])
            #expect(wrong.status == 422)
            #expect(Set(wrong.problemFields) == ["name", "family", "tags"], "\(wrong.text)")
            // Unknown fields, nested ones too.
            let unknown = try await api.request(.POST, "/api/v1/os", token: token, json: ["name": "deb", "family": "linux", "colour": "red"])
            #expect(unknown.status == 422)
            #expect(unknown.problemFields == ["colour"])
            let upload = try await api.request(.POST, "/api/v1/images", token: token,
                                               json: ["name": "x", "base": ObjectId().hex, "vm": ["cpus": 2, "gpus": 1]])
            #expect(upload.status == 422)
            #expect(upload.problemFields == ["vm.gpus"], "\(upload.text)")
            // Operators smuggled into free-form params.
            let task = try await api.request(.POST, "/api/v1/tasks", token: token, json: [
                "name": "t", "tool": "fuzz", "tool_commit": String(repeating: "a", count: 40), "image": ObjectId().hex,
                "params": ["ok": 1, "$where": "sleep(1000)"],
            ])
            #expect(task.status == 422)
            #expect(task.problemFields == ["params.$where"])
            let dotted = try await api.request(.POST, "/api/v1/tasks", token: token, json: [
                "name": "t", "tool": "fuzz", "tool_commit": String(repeating: "a", count: 40), "image": ObjectId().hex,
                "params": ["a": ["status.name": "x"]],
            ])
            #expect(dotted.status == 422)
            // Names that read as ids, ranges, empty bodies, wrong content types.
            #expect(try await api.request(.POST, "/api/v1/os", token: token, json: ["name": ObjectId().hex, "family": "linux"]).status == 422)
            #expect(try await api.request(.POST, "/api/v1/users", token: token, json: ["name": "ok", "role": "root"]).status == 422)
            #expect(try await api.request(.POST, "/api/v1/os", token: token, body: Data(), headers: [("Content-Type", "application/json")]).status == 400)
            #expect(try await api.request(.POST, "/api/v1/os", token: token, body: Data("name=x".utf8),
                                          headers: [("Content-Type", "application/x-www-form-urlencoded")]).status == 415)
            // Over http.max_body: 413.
            let big = ["name": "x", "family": "linux", "version": String(repeating: "v", count: 2 << 20)]
            #expect(try await api.request(.POST, "/api/v1/os", token: token, json: big).status == 413)
            #expect(try await Self.counts(api) == before)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func bodiesKeepKeyOrderAndExactIntegersAndRefuseDuplicateKeys() async throws {
        let api = try await APITestServer.start("valorder")
        do {
            let token = api.adminToken
            let image = try await api.insertReadyImage(contents: Data("d".utf8), sha256: sha256Hex(Data("d".utf8)))
            let commit = String(repeating: "c", count: 40)
            let manifest = ToolManifest(name: "ordered", description: "params in any order", entry: "./run.sh", params: [
                ToolParam(name: "alpha", type: .object), ToolParam(name: "seed", type: .int), ToolParam(name: "zeta", type: .int),
            ])
            try await api.database.collection("code", as: CodeDocument.self).insertOne(CodeDocument(
                name: "ordered", kind: .tool, commit: commit, committed: Date(timeIntervalSince1970: 1000), manifest: manifest, path: "tools/ordered"))
            // Params as written: keys out of alphabetical order, nested too, and a 64-bit seed
            // that a Double cannot hold (2^53 + 1).
            let body = #"{"name": "ordered", "tool": "ordered", "tool_commit": "\#(commit)", "image": "\#(image.hex)", "#
                + #""params": {"zeta": 1, "alpha": {"y": 2, "b": 3}, "seed": 9007199254740993}}"#
            let created = try await api.request(.POST, "/api/v1/tasks", token: token, body: Data(body.utf8),
                                                headers: [("Content-Type", "application/json")])
            #expect(created.status == 201, "\(created.text)")
            let id = try #require(created.object?["_id"] as? String)
            let taskID = try #require(ObjectId(id))
            let stored = try #require(try await api.database.collection("tasks").findOne(["_id": .objectId(taskID)]))
            let params = try #require(stored["params"]?.documentValue)
            #expect(params.keys == ["zeta", "alpha", "seed"])
            #expect(params["alpha"]?.documentValue?.keys == ["y", "b"])
            #expect(params["seed"] == .int64(9_007_199_254_740_993))
            let shown = try await api.request(.GET, "/api/v1/tasks/\(id)", token: token)
            #expect(shown.text.contains("9007199254740993"), "\(shown.text)")

            // A key given twice is refused (JSONDecoder used to keep one silently), with where.
            let twice = try await api.request(.POST, "/api/v1/os", token: token,
                                              body: Data(#"{"name": "a", "family": "linux", "name": "b"}"#.utf8),
                                              headers: [("Content-Type", "application/json")])
            #expect(twice.status == 400)
            let detail = try #require(twice.object?["detail"] as? String)
            #expect(detail.contains(#"line 1, column 34: duplicate key "name""#), "\(detail)")
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func filtersAcceptOnlyListedFieldsAsPlainValues() async throws {
        let api = try await APITestServer.start("valquery")
        do {
            let token = api.adminToken
            for query in ["$where=sleep(100)", "name[$gt]=a", "status.name=running", "name=%7B%22%24gt%22%3A%22%22%7D&name=x",
                          "limit=0", "limit=501", "limit=abc", "after=zzz", "status=finishd", "task=notanid", "priority=5"] {
                let answer = try await api.request(.GET, "/api/v1/jobs?" + query, token: token)
                #expect(answer.status == 422, "\(query): \(answer.status) \(answer.text)")
                #expect(answer.header("Content-Type") == "application/problem+json")
            }
            // A value that looks like an operator is only ever a literal.
            let literal = try await api.request(.GET, "/api/v1/os?name=%7B%22%24gt%22%3A%22%22%7D", token: token)
            #expect(literal.status == 200)
            #expect((literal.object?["items"] as? [Any])?.isEmpty == true)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func usersWriteOnlyRequestsAndOnlyWhenTheStateAllowsThem() async throws {
        let api = try await APITestServer.start("valstatus")
        do {
            let token = api.adminToken
            let image = try await api.insertReadyImage(contents: Data("disk".utf8), sha256: sha256Hex(Data("disk".utf8)))
            // Master-owned states: 422, nothing changes.
            for state in ["ready", "importing", "error", "deleting", "bogus"] {
                let answer = try await api.request(.PATCH, "/api/v1/images/\(image.hex)", token: token, json: ["status": state])
                #expect(answer.status == 422, "\(state): \(answer.text)")
                #expect(answer.problemFields == ["status"])
            }
            // A request the state does not allow: 409 (ready → import).
            #expect(try await api.request(.PATCH, "/api/v1/images/\(image.hex)", token: token, json: ["status": "import"]).status == 409)
            let doc = try #require(try await api.store.database.collection("images", as: ImageDocument.self).findOne(["_id": .objectId(image)]))
            #expect(doc.status.name == .ready)
            // A request the state allows: configure.
            let configure = try await api.request(.PATCH, "/api/v1/images/\(image.hex)", token: token,
                                                  json: ["status": "configure", "interactive": false, "session_seconds": 600])
            #expect(configure.status == 200, "\(configure.text)")
            let after = try #require(try await api.store.database.collection("images", as: ImageDocument.self).findOne(["_id": .objectId(image)]))
            #expect(after.status.name == .configure)
            #expect(after.request == ImageRequest(upload: nil, interactive: false, sessionSeconds: 600))
            // configure → configure again is not a transition the user can make twice... it is the same state, allowed;
            // delete is allowed from configure; the master then moves on.
            #expect(try await api.request(.DELETE, "/api/v1/images/\(image.hex)", token: token).status == 202)
            let deleting = try #require(try await api.store.database.collection("images", as: ImageDocument.self).findOne(["_id": .objectId(image)]))
            #expect(deleting.status.name == .delete)
            // While the master deletes it, nothing but delete (idempotent) is possible.
            try await api.store.database.collection("images").updateOne(["_id": .objectId(image)], ["$set": ["status.name": "deleting"]])
            #expect(try await api.request(.DELETE, "/api/v1/images/\(image.hex)", token: token).status == 202)
            #expect(try await api.request(.PATCH, "/api/v1/images/\(image.hex)", token: token, json: ["status": "configure"]).status == 409)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func ownersAloneChangeTheirDocuments() async throws {
        let api = try await APITestServer.start("valowner")
        do {
            let (_, alice) = try await api.makeUser(role: .user)
            let (_, bob) = try await api.makeUser(role: .user)
            let image = try await api.insertReadyImage(contents: Data("x".utf8), sha256: sha256Hex(Data("x".utf8)))
            // An image owned by the admin: users read it, but may not change or delete it.
            #expect(try await api.request(.GET, "/api/v1/images/\(image.hex)", token: alice).status == 200)
            #expect(try await api.request(.PATCH, "/api/v1/images/\(image.hex)", token: alice, json: ["description": "mine"]).status == 403)
            #expect(try await api.request(.DELETE, "/api/v1/images/\(image.hex)", token: alice).status == 403)
            // Uploads are private: others get 404.
            let upload = try await api.request(.POST, "/api/v1/uploads", token: alice, json: ["filename": "a.raw", "size": 10])
            let id = try #require(upload.object?["_id"] as? String)
            #expect(try await api.request(.GET, "/api/v1/uploads/\(id)", token: bob).status == 404)
            #expect(try await api.request(.PUT, "/api/v1/uploads/\(id)/content", token: bob, body: Data(count: 10)).status == 404)
            let bobs = try await api.request(.GET, "/api/v1/uploads", token: bob)
            #expect((bobs.object?["items"] as? [Any])?.isEmpty == true)
            // VNC passwords are the owner's (and admins').
            try await api.store.database.collection("images").updateOne(["_id": .objectId(image)], ["$set": [
                "status": ["name": "configuring", "since": .datetime(bsonNow()),
                           "vnc": ["host": "127.0.0.1", "port": 5901, "password": "s3cretpw"]],
            ]])
            let seenByAlice = try await api.request(.GET, "/api/v1/images/\(image.hex)", token: alice)
            #expect(!seenByAlice.text.contains("s3cretpw"))
            let seenByAdmin = try await api.request(.GET, "/api/v1/images/\(image.hex)", token: api.adminToken)
            #expect(seenByAdmin.text.contains("s3cretpw"))
        } catch { await api.stop(); throw error }
        await api.stop()
    }
}
