// Operating systems: everyone reads, admins write.

import BSON
import Foundation
import Hummingbird
import Mongo
import TalusModel

struct OSRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter("family", .oneOf(OSDocument.Family.allCases.map(\.rawValue))),
                          Filter("arch", .string), Filter("version", .string), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let os = s.store.os
        router.add(.post, "/api/v1/os", .role(.admin)) { request, _ in
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name()
            let family = body.enumeration("family", OSDocument.Family.self, required: true)
            let version = body.string("version", maxLength: 64)
            let arch = body.string("arch", maxLength: 32) ?? "x86_64"
            let tags = body.tags() ?? []
            try body.check()
            let doc = OSDocument(name: name!, family: family!, version: version, arch: arch, tags: tags)
            try await s.insert(os, doc, unique: "name", value: doc.name)
            return try Render.json(doc, status: .created, headers: [.location: "/api/v1/os/\(doc.id.hex)"])
        }
        router.add(.get, "/api/v1/os", .role(.user)) { request, context in
            try await s.page(os, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/os/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(os, try s.id(context, "os"), "os"))
        }
        router.add(.patch, "/api/v1/os/{id}", .role(.admin)) { request, context in
            let id = try s.id(context, "os")
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            var set: BSONDocument = [:]
            if let v = body.enumeration("family", OSDocument.Family.self) { set["family"] = .string(v.rawValue) }
            if let v = body.string("version", maxLength: 64) { set["version"] = .string(v) }
            if let v = body.string("arch", maxLength: 32) { set["arch"] = .string(v) }
            if let v = body.tags() { set["tags"] = .array(v.map { .string($0) }) }
            try body.check()
            _ = try await s.fetch(os, id, "os")
            set["updated"] = .datetime(bsonNow())
            try await os.updateOne(["_id": .objectId(id)], ["$set": .document(set)])
            return try Render.json(try await s.fetch(os, id, "os"))
        }
        router.add(.delete, "/api/v1/os/{id}", .role(.admin)) { _, context in
            let id = try s.id(context, "os")
            let doc = try await s.fetch(os, id, "os")
            let users = try await s.store.images.find(["os": .objectId(id)], options: FindOptions(limit: 5))
            guard users.isEmpty else {
                throw APIProblem.conflict("os \(doc.name) is used by images \(users.map(\.name).joined(separator: ", ")); delete them first")
            }
            try await os.deleteOne(["_id": .objectId(id)])
            return Render.noContent()
        }
    }
}
