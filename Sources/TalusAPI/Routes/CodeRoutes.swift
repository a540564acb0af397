// The code repository's records (DESIGN §8): tools and components at the commits the code hook
// recorded. Read-only here: the hook writes them.
//
// Tool bundles (issue 6) belong in this collection: register
//     router.add(.get, "/api/v1/code/{name}/bundle", .slaveRead) { ... }   // ?commit=<40 hex>
// in `register` below (`.slaveRead` lets slave tokens fetch them), and document it in
// OpenAPIDocument.swift — the OpenAPI test fails until the route and the document agree.

import BSON
import Foundation
import Hummingbird
import Mongo
import TalusModel

struct CodeRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter("kind", .oneOf(CodeDocument.Kind.allCases.map(\.rawValue))),
                          Filter("commit", .string), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let code = s.store.code
        router.add(.get, "/api/v1/code", .role(.user)) { request, context in
            try await s.page(code, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/code/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(code, try s.id(context, "code"), "code"))
        }
    }

    /// The recorded tool `name` at `commit`, or the newest recording when `commit` is nil.
    static func tool(_ code: MongoCollection<CodeDocument>, name: String, commit: String?) async throws -> CodeDocument? {
        var filter: BSONDocument = ["name": .string(name), "kind": "tool"]
        if let commit { filter["commit"] = .string(commit) }
        return try await code.findOne(filter, options: FindOptions(sort: ["committed": -1, "_id": -1]))
    }
}
