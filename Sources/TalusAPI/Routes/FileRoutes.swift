// Stored files (GridFS bucket `files`) and filesets (named groups of them — corpora — that a
// `fileset` tool parameter receives).

import BSON
import Foundation
import HTTPTypes
import Hummingbird
import Mongo
import TalusModel

struct FileRoutes: APIRouteCollection {
    static let filters = [Filter("filename", .string), Filter("sha256", field: "metadata.sha256", .string),
                          Filter("owner", field: "metadata.owner", .owner), Filter("job", field: "metadata.job", .objectId),
                          Filter("tag", field: "metadata.tags", .string)]

    /// Streams file `id` byte-exact, with its sha256 as ETag and `X-Talus-SHA256`.
    static func download(_ id: ObjectId, s: APIServices, context: APIRequestContext) async throws -> Response {
        guard let file = try await s.gridFS.find(id) else { throw APIProblem.notFound("file \(id.hex)") }
        let safeName = String(file.filename.map { $0.isASCII && $0 != "\"" && $0 != "\\" && !$0.isNewline ? $0 : "_" })
        let headers: HTTPFields = [
            .contentType: "application/octet-stream", .eTag: "\"\(file.metadata.sha256)\"",
            HTTPField.Name("X-Talus-SHA256")!: file.metadata.sha256,
            .contentDisposition: "attachment; filename=\"\(safeName)\"",
        ]
        return Response(status: .ok, headers: headers, body: s.gridFS.body(of: file, logger: context.logger))
    }

    func register(on router: APIRouter, services s: APIServices) {
        let files = s.store.files

        router.add(.post, "/api/v1/files", .role(.user)) { request, context in
            let caller = try context.caller()
            let problems = ProblemList()
            var filename: String?
            var tags: Tags = []
            var seen = Set<String>()
            for (k, v) in request.uri.queryParameters {
                let key = String(k), value = String(v)
                if !seen.insert(key).inserted && key != "tag" { problems.add(key, "given more than once"); continue }
                switch key {
                case "filename":
                    if value.isEmpty || value.count > 255 || value.contains("/") || value.contains("\0") {
                        problems.add(key, "must be a file name (1…255 characters, no /)")
                    } else {
                        filename = value
                    }
                case "tag":
                    if value.isEmpty || value.count > 64 { problems.add(key, "must be 1…64 characters") } else { tags.append(value) }
                default: problems.add(key, "unknown query parameter (accepted: filename, tag)")
                }
            }
            if filename == nil && !seen.contains("filename") { problems.add("filename", "is required") }
            try problems.check()
            if let length = request.headers[.contentLength].flatMap(Int64.init), length > s.config.fileMaxBytes {
                throw APIProblem.tooLarge("files are limited to \(s.config.fileMaxBytes) bytes (files.max_bytes)")
            }
            let type = request.headers[.contentType].flatMap { $0.isEmpty ? nil : String($0.prefix(128)) }
            let file = try await s.gridFS.store(
                request.body, filename: filename!,
                metadata: StoredFileMetadata(sha256: "", owner: caller.user, contentType: type ?? "application/octet-stream", tags: tags),
                maxBytes: s.config.fileMaxBytes)
            return try Render.json(file, status: .created, headers: [.location: "/api/v1/files/\(file.id.hex)"])
        }
        router.add(.get, "/api/v1/files", .role(.user)) { request, context in
            let query = try ListQuery(request, filters: Self.filters, caller: context.identity)
            let docs = try await files.find(query.mongoFilter(), options: FindOptions(sort: ["_id": -1], limit: query.limit + 1))
            let items = Array(docs.prefix(query.limit))
            return try Render.json(Page(items: items, next: docs.count > query.limit ? items.last?.id.hex : nil))
        }
        router.add(.get, "/api/v1/files/{id}", .role(.user)) { _, context in
            let id = try s.id(context, "file")
            guard let file = try await s.gridFS.find(id) else { throw APIProblem.notFound("file \(id.hex)") }
            return try Render.json(file)
        }
        router.add(.get, "/api/v1/files/{id}/content", .role(.user)) { _, context in
            try await Self.download(try s.id(context, "file"), s: s, context: context)
        }
        router.add(.delete, "/api/v1/files/{id}", .role(.user)) { _, context in
            let caller = try context.caller()
            let id = try s.id(context, "file")
            guard let file = try await s.gridFS.find(id) else { throw APIProblem.notFound("file \(id.hex)") }
            try caller.requireOwner(file.metadata.owner, "file \(file.filename)")
            let sets = try await s.store.filesets.find(["files.id": .objectId(id)], options: FindOptions(limit: 5))
            guard sets.isEmpty else {
                throw APIProblem.conflict("file \(file.filename) is in filesets \(sets.map(\.name).joined(separator: ", ")); remove it from them first")
            }
            try await s.gridFS.delete(id)
            return Render.noContent()
        }
    }
}

struct FileSetRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter.owner, Filter("file", field: "files.id", .objectId), Filter.tag]

    /// The stored files `ids` as references; unknown ids are 422s.
    static func refs(_ ids: [ObjectId], s: APIServices) async throws -> [StoredFileRef] {
        var seen = Set<ObjectId>()
        let unique = ids.filter { seen.insert($0).inserted }
        let found = try await s.store.files.find(["_id": ["$in": .array(unique.map { .objectId($0) })]])
        let byId = Dictionary(found.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let missing = unique.filter { byId[$0] == nil }
        guard missing.isEmpty else {
            throw APIProblem.invalid(missing.map { FieldProblem(field: "files", problem: "file \($0.hex) does not exist") })
        }
        return unique.map { byId[$0]!.ref }
    }

    func register(on router: APIRouter, services s: APIServices) {
        let sets = s.store.filesets
        router.add(.post, "/api/v1/filesets", .role(.user)) { request, context in
            let caller = try context.caller()
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name()
            let description = body.string("description", maxLength: 4096)
            let ids = body.idList("files") ?? []
            let tags = body.tags() ?? []
            try body.check()
            let set = FileSetDocument(name: name!, description: description, files: try await Self.refs(ids, s: s),
                                      owner: caller.user, tags: tags)
            try await s.insert(sets, set, unique: "name", value: set.name)
            return try Render.json(set, status: .created, headers: [.location: "/api/v1/filesets/\(set.id.hex)"])
        }
        router.add(.get, "/api/v1/filesets", .role(.user)) { request, context in
            try await s.page(sets, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/filesets/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(sets, try s.id(context, "fileset"), "fileset"))
        }
        router.add(.patch, "/api/v1/filesets/{id}", .role(.user)) { request, context in
            let caller = try context.caller()
            let id = try s.id(context, "fileset")
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name(required: false)
            let description = body.string("description", maxLength: 4096, allowEmpty: true)
            let ids = body.idList("files")
            let tags = body.tags()
            try body.check()
            let set = try await s.fetch(sets, id, "fileset")
            try caller.requireOwner(set.owner, "fileset \(set.name)")
            var update: BSONDocument = ["updated": .datetime(bsonNow())]
            if let name { update["name"] = .string(name) }
            if let description { update["description"] = .string(description) }
            if let ids { update["files"] = try BSONEncoder().encodeValue(try await Self.refs(ids, s: s)) }
            if let tags { update["tags"] = .array(tags.map { .string($0) }) }
            do {
                try await sets.updateOne(["_id": .objectId(id)], ["$set": .document(update)])
            } catch let e as MongoError where e.isDuplicateKey {
                throw APIProblem.conflict("a fileset named \(name ?? "") already exists; choose another name")
            }
            return try Render.json(try await s.fetch(sets, id, "fileset"))
        }
        router.add(.delete, "/api/v1/filesets/{id}", .role(.user)) { _, context in
            let caller = try context.caller()
            let id = try s.id(context, "fileset")
            let set = try await s.fetch(sets, id, "fileset")
            try caller.requireOwner(set.owner, "fileset \(set.name)")
            try await sets.deleteOne(["_id": .objectId(id)])
            return Render.noContent()
        }
    }
}
