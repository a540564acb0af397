// What jobs produced: results, de-duplicated crashes (with their kept samples' inputs), and
// slaves. All written by the master; read-only here except a slave drain request.

import BSON
import Foundation
import Hummingbird
import Mongo
import TalusModel

struct ResultRoutes: APIRouteCollection {
    static let filters = [Filter("job", .objectId), Filter("type", .string), Filter("tool", .string), Filter("idx", .int),
                          Filter("run", .string), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let results = s.store.results
        router.add(.get, "/api/v1/results", .role(.user)) { request, context in
            try await s.page(results, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/results/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(results, try s.id(context, "result"), "result"))
        }
    }
}

struct CrashRoutes: APIRouteCollection {
    static let filters = [Filter("job", .objectId), Filter("tool", .string), Filter("bucket", .string), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let crashes = s.store.crashes
        router.add(.get, "/api/v1/crashes", .role(.user)) { request, context in
            try await s.page(crashes, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/crashes/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(crashes, try s.id(context, "crash"), "crash"))
        }
        router.add(.get, "/api/v1/crashes/{id}/samples/{n}/file", .role(.user)) { _, context in
            let crash = try await s.fetch(crashes, try s.id(context, "crash"), "crash")
            guard let n = context.parameters.get("n", as: Int.self), crash.samples.indices.contains(n) else {
                throw APIProblem(.notFound, "crash \(crash.id.hex) has samples 0…\(max(0, crash.samples.count - 1)) (\(crash.samples.count) kept)")
            }
            guard let ref = crash.samples[n].file else {
                throw APIProblem(.notFound, "sample \(n) of crash \(crash.id.hex) has no input file")
            }
            return try await FileRoutes.download(ref.id, s: s, context: context)
        }
    }
}

struct SlaveRoutes: APIRouteCollection {
    static let filters = [Filter("hostname", .string), Filter("uuid", .string), Filter.status(SlaveState.self), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let slaves = s.store.slaves
        router.add(.get, "/api/v1/slaves", .role(.user)) { request, context in
            try await s.page(slaves, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/slaves/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(slaves, try s.id(context, "slave"), "slave"))
        }
        router.add(.patch, "/api/v1/slaves/{id}", .role(.admin)) { request, context in
            let id = try s.id(context, "slave")
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let statusRaw = body.string("status", maxLength: 64)
            let tags = body.tags()
            try body.check()
            let slave = try await s.fetch(slaves, id, "slave")
            let requested = try Requests.parse(statusRaw, SlaveState.self, from: slave.status.name, id: id, problems: body.problems)
            var set: BSONDocument = ["updated": .datetime(bsonNow())]
            if let requested { set["status"] = try BSONEncoder().encodeValue(Status(requested)) }
            if let tags { set["tags"] = .array(tags.map { .string($0) }) }
            let result = try await slaves.updateOne(["_id": .objectId(id), "status.name": .string(slave.status.name.rawValue)],
                                                    ["$set": .document(set)])
            guard result.matchedCount == 1 else { throw APIProblem.conflict("slave \(slave.hostname) changed meanwhile; retry") }
            return try Render.json(try await s.fetch(slaves, id, "slave"))
        }
    }
}
