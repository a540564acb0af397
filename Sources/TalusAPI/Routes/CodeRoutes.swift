// The code repository's records (DESIGN §8): tools and components at the commits the code hook
// recorded. Read-only here: the hook writes them.
//
// Tool bundles and the recorded head are in CodeBundleRoutes.swift.

import BSON
import Foundation
import Hummingbird
import Mongo
import TalusCode
import TalusModel

struct CodeRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter("kind", .oneOf(CodeDocument.Kind.allCases.map(\.rawValue))),
                          Filter("commit", .string), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let code = s.store.code
        router.add(.get, "/api/v1/code", .role(.user)) { request, context in
            try await s.page(code, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        // `{name}`: a record id, or a tool (else component) name for its newest record. (One
        // parameter name per path position: the bundle route below it uses `{name}` too.)
        router.add(.get, "/api/v1/code/{name}", .role(.user)) { _, context in
            let raw = context.parameters.get("name") ?? ""
            if let id = ObjectId(raw) { return try Render.json(try await s.fetch(code, id, "code")) }
            let store = CodeStore(database: s.store.database)
            for kind in [CodeDocument.Kind.tool, .component] where ToolManifest.isValidName(raw) {
                var doc = try await store.newest(name: raw, kind: kind)
                if doc == nil { doc = try await store.latestRecorded(name: raw, kind: kind) }
                if let doc {
                    try doc.checkSchema()
                    return try Render.json(doc)
                }
            }
            throw APIProblem(.notFound, "no record \(raw.prefix(80)) (give a record id or a tool name; talus code list)")
        }
    }

    /// The recorded tool `name` at `commit`, or the newest (at the recorded head of main) when
    /// `commit` is nil.
    static func tool(_ code: MongoCollection<CodeDocument>, name: String, commit: String?) async throws -> CodeDocument? {
        let store = CodeStore(database: code.database)
        if let commit { return try await store.find(name: name, kind: .tool, commit: commit) }
        return try await store.newest(name: name, kind: .tool)
    }
}
