// Authentication and authorization against a live API on real SecantusDB.

import BSON
import Foundation
import Mongo
import TalusAPI
import TalusAPITestSupport
import TalusModel
import TalusTestSupport
import Testing

@Suite struct AuthTests {
    /// A concrete path for a route template (ids that do not exist).
    static func concrete(_ path: String) -> String {
        path.replacingOccurrences(of: "{id}", with: ObjectId().hex).replacingOccurrences(of: "{n}", with: "0")
    }

    @Test func everyEndpointButHealthNeedsAToken() async throws {
        let api = try await APITestServer.start("auth401")
        do {
            #expect(!api.routes.isEmpty)
            for route in api.routes {
                let answer = try await api.request(.init(rawValue: route.method), Self.concrete(route.path), token: nil)
                if route.path == "/healthz" {
                    #expect(answer.status == 200, "\(route)")
                    continue
                }
                #expect(answer.status == 401, "\(route): \(answer.status) \(answer.text)")
                if route.method != "HEAD" {
                    #expect(answer.header("Content-Type") == "application/problem+json", "\(route)")
                    #expect(answer.object?["status"] as? Int == 401, "\(route)")
                }
                #expect(answer.header("WWW-Authenticate")?.hasPrefix("Bearer") == true, "\(route)")
            }
            // A token that is not ours, a malformed header, a non-bearer scheme.
            for header in ["Bearer talus_doesnotexist", "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-talus-token"] {
                let answer = try await api.request(.GET, "/api/v1/jobs", token: nil, headers: [("Authorization", header)])
                #expect(answer.status == 401, "\(header)")
            }
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func rolesLimitWhatATokenMayDo() async throws {
        let api = try await APITestServer.start("authroles")
        do {
            let (_, user) = try await api.makeUser(role: .user)
            let (_, slave) = try await api.makeUser(role: .slave)
            // A user on admin endpoints: 403.
            for (method, path, body) in [
                ("POST", "/api/v1/os", ["name": "x", "family": "linux"] as [String: Any]),
                ("GET", "/api/v1/users", nil), ("POST", "/api/v1/users", ["name": "u2", "role": "admin"]),
                ("GET", "/metrics", nil),
                ("PATCH", "/api/v1/slaves/\(ObjectId().hex)", ["status": "drain"]),
            ] {
                let answer = try await api.request(.init(rawValue: method), path, token: user, json: body)
                #expect(answer.status == 403, "\(method) \(path): \(answer.status) \(answer.text)")
                #expect(answer.header("Content-Type") == "application/problem+json")
            }
            // A slave writing a job, or reading anything but image files: 403.
            let job = try await api.request(.POST, "/api/v1/jobs", token: slave, json: ["task": ObjectId().hex])
            #expect(job.status == 403, "\(job.text)")
            #expect((job.object?["detail"] as? String)?.contains("slave tokens") == true)
            for path in ["/api/v1/jobs", "/api/v1/images", "/api/v1/users/me", "/openapi.yaml"] {
                #expect(try await api.request(.GET, path, token: slave).status == 403, "\(path)")
            }
            // ... but it may download an image file.
            let bytes = Data((0..<4096).map { UInt8($0 % 251) })
            let image = try await api.insertReadyImage(contents: bytes, sha256: sha256Hex(bytes))
            let file = try await api.request(.GET, "/api/v1/images/\(image.hex)/file", token: slave)
            #expect(file.status == 200)
            #expect(file.body == bytes)
            // The admin may do all of it.
            #expect(try await api.request(.GET, "/metrics", token: api.adminToken).status == 200)
            #expect(try await api.request(.GET, "/api/v1/users", token: api.adminToken).status == 200)
            // A nonexistent path is 404, a wrong method on a known path 405 with Allow.
            #expect(try await api.request(.GET, "/api/v1/nothing", token: user).status == 404)
            let wrong = try await api.request(.PUT, "/api/v1/jobs", token: user, json: [:] as [String: Any])
            #expect(wrong.status == 405)
            #expect(wrong.header("Allow") == "GET, POST")
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func tokensAreShownOnceStoredHashedAndRevokedAtOnce() async throws {
        let api = try await APITestServer.start("authtokens")
        do {
            let (userId, user) = try await api.makeUser(role: .user)
            let created = try await api.request(.POST, "/api/v1/tokens", token: user, json: ["name": "laptop", "expires_in_days": 30])
            #expect(created.status == 201, "\(created.text)")
            let secret = try #require(created.object?["token"] as? String)
            #expect(secret.hasPrefix("talus_") && secret.count == 6 + 43)
            let id = try #require(created.object?["_id"] as? String)
            // Stored as the SHA-256 of the secret, never the secret.
            let stored = try #require(try await api.database.collection("tokens").findOne(["_id": .objectId(ObjectId(id)!)]))
            #expect(stored["hash"]?.stringValue == Tokens.hash(secret))
            #expect(!stored.extendedJSON().contains(secret))
            // Listings show the prefix only.
            let list = try await api.request(.GET, "/api/v1/tokens", token: secret)
            #expect(list.status == 200)
            #expect(!list.text.contains(secret) && !list.text.contains("hash"))
            let items = try #require(list.object?["items"] as? [[String: Any]])
            #expect(items.count == 2)  // both of this user's tokens, not the admin's
            #expect(items.allSatisfy { ($0["user"] as? String) == userId.hex && $0["prefix"] != nil && $0["token"] == nil })
            // A user may not create tokens for others, list others', or revoke others'.
            let forOther = try await api.request(.POST, "/api/v1/tokens", token: user, json: ["name": "x", "user": api.admin.id.hex])
            #expect(forOther.status == 403)
            #expect(try await api.request(.GET, "/api/v1/tokens?user=\(api.admin.id.hex)", token: user).status == 403)
            let adminTokens = try await api.request(.GET, "/api/v1/tokens?user=me", token: api.adminToken)
            let adminTokenId = try #require((adminTokens.object?["items"] as? [[String: Any]])?.first?["_id"] as? String)
            #expect(try await api.request(.DELETE, "/api/v1/tokens/\(adminTokenId)", token: user).status == 404)
            // Revocation takes effect on the next request (the cache is dropped).
            #expect(try await api.request(.GET, "/api/v1/jobs", token: secret).status == 200)
            #expect(try await api.request(.DELETE, "/api/v1/tokens/\(id)", token: secret).status == 204)
            #expect(try await api.request(.GET, "/api/v1/jobs", token: secret).status == 401)
            // Disabling the user locks out their other token.
            #expect(try await api.request(.PATCH, "/api/v1/users/\(userId.hex)", token: api.adminToken, json: ["disabled": true]).status == 200)
            #expect(try await api.request(.GET, "/api/v1/jobs", token: user).status == 401)
            // An expired token is refused.
            let expired = Tokens.generate()
            try await api.database.collection("tokens", as: TokenDocument.self).insertOne(
                TokenDocument(user: api.admin.id, name: "old", hash: Tokens.hash(expired), prefix: Tokens.prefix(expired),
                              expires: Date().addingTimeInterval(-60)))
            #expect(try await api.request(.GET, "/api/v1/jobs", token: expired).status == 401)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func theLastAdminStaysAndBootstrapRefusesASecond() async throws {
        let api = try await APITestServer.start("authadmin")
        do {
            let demote = try await api.request(.PATCH, "/api/v1/users/\(api.admin.id.hex)", token: api.adminToken, json: ["role": "user"])
            #expect(demote.status == 409, "\(demote.text)")
            #expect(try await api.request(.DELETE, "/api/v1/users/\(api.admin.id.hex)", token: api.adminToken).status == 409)
            await #expect(throws: BootstrapError.self) { _ = try await bootstrapAdmin(store: api.store, name: "second", force: false) }
            // --force gives an existing user a new admin token; the old one keeps working.
            let (user, token) = try await bootstrapAdmin(store: api.store, name: "root", force: true)
            #expect(user.id == api.admin.id)
            #expect(try await api.request(.GET, "/api/v1/users", token: token).status == 200)
            #expect(try await api.request(.GET, "/api/v1/users", token: api.adminToken).status == 200)
            let me = try await api.request(.GET, "/api/v1/users/me", token: token)
            #expect(me.object?["name"] as? String == "root")
        } catch { await api.stop(); throw error }
        await api.stop()
    }
}
