// /openapi.yaml stays true: every registered route is documented and vice versa, the document
// validates (openapi-spec-validator), and schemathesis against the live server finds no server
// error and no response that violates the document.

import BSON
import Foundation
import Mongo
import TalusAPI
import TalusAPITestSupport
import TalusCore
import TalusModel
import TalusTestSupport
import Testing
import Yams

@Suite struct OpenAPITests {
    static let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]

    @Test func everyRouteIsDocumentedAndEveryDocumentedOperationExists() async throws {
        let api = try await APITestServer.start("openapiroutes")
        do {
            let doc = try #require(try Yams.load(yaml: OpenAPIDocument.yaml) as? [String: Any])
            let paths = try #require(doc["paths"] as? [String: Any])
            var documented = Set<String>()
            for (path, item) in paths {
                for (key, _) in try #require(item as? [String: Any]) where Self.methods.contains(key) {
                    documented.insert("\(key.uppercased()) \(path)")
                }
            }
            let registered = Set(api.routes.map(\.description))
            #expect(registered.subtracting(documented).isEmpty, "undocumented: \(registered.subtracting(documented).sorted())")
            #expect(documented.subtracting(registered).isEmpty, "not served: \(documented.subtracting(registered).sorted())")
            // Served as written.
            let served = try await api.request(.GET, "/openapi.yaml", token: api.adminToken)
            #expect(served.status == 200 && served.text == OpenAPIDocument.yaml)
            #expect(served.header("Content-Type")?.hasPrefix("application/yaml") == true)
        } catch { await api.stop(); throw error }
        await api.stop()
    }

    @Test func theDocumentValidates() async throws {
        let dir = try TestEnvironment.scratchDirectory("openapi")
        let file = dir + "/openapi.yaml"
        try OpenAPIDocument.yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let result = try await runCommand("python3", ["-m", "openapi_spec_validator", file], timeout: .seconds(120), check: false)
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test(.timeLimit(.minutes(5))) func schemathesisFindsNoServerErrorAndNoViolation() async throws {
        let api = try await APITestServer.start("schemathesis")
        do {
            // Something to find: an os, a ready image with a file, a task, a job, a result, a file.
            let os = try await api.request(.POST, "/api/v1/os", token: api.adminToken, json: ["name": "deb", "family": "linux"])
            #expect(os.status == 201)
            let bytes = Data("image bytes".utf8)
            let image = try await api.insertReadyImage(name: "base", contents: bytes, sha256: sha256Hex(bytes))
            // Tasks pin recorded commits only.
            try await api.database.collection("code", as: CodeDocument.self).insertOne(CodeDocument(
                name: "fuzz", kind: .tool, commit: String(repeating: "c", count: 40), committed: Date(),
                manifest: ToolManifest(name: "fuzz", description: "a fuzzer", entry: "./run.sh"), path: "tools/fuzz"))
            let task = try await api.request(.POST, "/api/v1/tasks", token: api.adminToken, json: [
                "name": "t", "tool": "fuzz", "tool_commit": String(repeating: "c", count: 40), "image": image.hex,
            ])
            let taskId = try #require(task.object?["_id"] as? String)
            let job = try await api.request(.POST, "/api/v1/jobs", token: api.adminToken, json: ["task": taskId])
            let jobId = try #require(job.object?["_id"] as? String)
            try await api.database.collection("results", as: ResultDocument.self)
                .insertOne(ResultDocument(job: ObjectId(jobId)!, idx: 0, run: "r", tool: "fuzz", type: "stats", data: ["n": 1]))
            _ = try await api.request(.POST, "/api/v1/files?filename=a", token: api.adminToken, body: Data("abc".utf8))

            let dir = try TestEnvironment.scratchDirectory("st")
            let spec = dir + "/openapi.yaml"
            try OpenAPIDocument.yaml.write(toFile: spec, atomically: true, encoding: .utf8)
            // Two passes: everything but the operations that can lock schemathesis out (deleting or
            // demoting its own admin, revoking its token), then those with a fresh admin token.
            // One worker: CPython 3.11's ast.parse is not thread-safe and hypothesis calls it.
            func schemathesis(token: String, _ selection: [String]) async throws -> String {
                let checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"
                let result = try await runCommand("python3", [
                    "-m", "schemathesis.cli", "run", spec, "--url", api.baseURL, "--header", "Authorization: Bearer \(token)",
                    "--checks", checks, "--phases", "examples,coverage,fuzzing", "--max-examples", "8", "--seed", "1",
                    "--workers", "1", "--request-timeout", "20", "--suppress-health-check", "all", "--no-color", "--no-shrink",
                    "--generation-database", "none", "--generation-with-security-parameters", "false",
                ] + selection, workingDirectory: dir, timeout: .seconds(280), check: false)
                let output = result.stdout + result.stderr
                #expect(result.status == 0, "\(output.suffix(8000))")
                #expect(!output.contains("Server error"), "\(output.suffix(8000))")
                #expect(output.contains(" passed"), "\(output.suffix(2000))")
                return output
            }
            let guarded = ["deleteUser", "updateUser", "revokeToken"]
            _ = try await schemathesis(token: api.adminToken, guarded.flatMap { ["--exclude-operation-id", $0] })
            let (_, fresh) = try await bootstrapAdmin(store: api.store, name: "st-admin", force: true)
            _ = try await schemathesis(token: fresh, guarded.flatMap { ["--include-operation-id", $0] })
            try? FileManager.default.removeItem(atPath: dir)
        } catch { await api.stop(); throw error }
        await api.stop()
    }
}
