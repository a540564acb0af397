import BSON
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Mongo
import Testing
import TalusAPI
import TalusCode
import TalusCore
import TalusModel
import TalusTestSupport

/// The bundle endpoint on a Hummingbird application, over a real repository and database.
@Suite struct CodeBundleRouteTests {
    static func application(_ f: CodeRepositoryFixture, cache: String) -> some ApplicationProtocol {
        let router = Router()
        let service = BundleService(store: f.store, cache: BundleCache(directory: cache, repository: GitRepository(path: f.bare)))
        CodeBundleRoutes(service: service).register(on: router)
        return Application(router: router)
    }

    @Test func servesPinnedAndNewestBundlesWithTheirHash() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let a = try #require(try await f.remoteCommit())
        try f.write("tools/toyfuzz/NOTES", "B\n")
        let (ok, output) = try await f.commitAndPush("B")
        #expect(ok, "\(output)")
        let b = try await f.head()
        let app = Self.application(f, cache: try TestEnvironment.scratchDirectory("route-cache"))
        try await app.test(.router) { client in
            let shaA = try await client.execute(uri: "/api/v1/code/toyfuzz/bundle?commit=\(a)", method: .get) { r -> String in
                #expect(r.status == .ok)
                #expect(r.headers[.contentType] == "application/gzip")
                #expect(r.headers[CodeBundleRoutes.commitHeader] == a)
                let sha = try #require(r.headers[CodeBundleRoutes.sha256Header])
                #expect(hexString(SHA256.hash(data: Array(r.body.readableBytesView))) == sha)
                return sha
            }
            try await client.execute(uri: "/api/v1/code/toyfuzz/bundle", method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.headers[CodeBundleRoutes.commitHeader] == b)
                #expect(r.headers[CodeBundleRoutes.sha256Header] != shaA)
            }
            try await client.execute(uri: "/api/v1/code/toyfuzz/bundle?commit=\(a)", method: .get) { r in
                #expect(r.headers[CodeBundleRoutes.sha256Header] == shaA)
            }
            try await client.execute(uri: "/api/v1/code/toyfuzz/bundle?commit=\(a)", method: .get,
                                     headers: [.ifNoneMatch: "\"\(shaA)\""]) { r in
                #expect(r.status == .notModified)
            }
            for (uri, status) in [("/api/v1/code/toyfuzz/bundle?commit=HEAD", HTTPResponse.Status.badRequest),
                                  ("/api/v1/code/toyfuzz/bundle?commit=\(a.prefix(12))", .badRequest),
                                  ("/api/v1/code/toyfuzz/bundle?commit=\(String(repeating: "0", count: 40))", .notFound),
                                  ("/api/v1/code/nosuch/bundle", .notFound),
                                  ("/api/v1/code/..%2F..%2Fetc/bundle", .notFound),
                                  ("/api/v1/code/toytarget/bundle", .notFound)] {
                try await client.execute(uri: uri, method: .get) { r in #expect(r.status == status, "\(uri)") }
            }
        }
    }

    /// A tree with a path trick, recorded in the database as if pushed before the hook existed:
    /// the endpoint refuses it with a clear message instead of packing it.
    @Test func refusesRecordedTreesWithPathTricks() async throws {
        let f = try await CodeRepositoryFixture.make()
        defer { Task { await f.close() } }
        let repo = GitRepository(path: f.bare)
        let manifest = toolManifest("evil")
        for (link, message) in [("/etc/passwd", "the absolute path /etc/passwd"), ("../../../../etc/passwd", "points outside tools/evil/")] {
            let commit = try await plumbCommit(repo, [.blob("tools/evil/talus-tool.json", manifest), .blob("tools/evil/run.sh", "#!/bin/sh\n", mode: "100755"),
                                                       .blob("tools/evil/data", link, mode: "120000")])
            _ = try await f.store.code.insertOne(CodeDocument(name: "evil", kind: .tool, commit: commit, committed: Date(),
                                                              manifest: try JSONDecoder().decode(ToolManifest.self, from: Data(manifest.utf8)),
                                                              path: "tools/evil"))
            let app = Self.application(f, cache: try TestEnvironment.scratchDirectory("route-cache"))
            try await app.test(.router) { client in
                try await client.execute(uri: "/api/v1/code/evil/bundle?commit=\(commit)", method: .get) { r in
                    #expect(r.status == .unprocessableContent)
                    let body = problemDetail(r.body)
                    #expect(body.contains("tools/evil/data is a symbolic link") && body.contains(message), "\(body)")
                }
            }
        }
    }
}

/// The message of an error response: `detail` (problem+json) or `error.message` (Hummingbird).
func problemDetail(_ body: ByteBuffer) -> String {
    guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else {
        return String(buffer: body)
    }
    if let detail = object["detail"] as? String { return detail }
    return ((object["error"] as? [String: Any])?["message"] as? String) ?? String(buffer: body)
}
