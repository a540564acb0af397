// Uploads: announce, stream the content (see Uploads.swift), inspect, delete. Private to their
// owner (and admins).

import BSON
import Foundation
import Hummingbird
import Mongo
import TalusModel

struct UploadRoutes: APIRouteCollection {
    static let filters = [Filter("complete", .bool), Filter.owner, Filter("filename", .string), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let uploads = s.store.uploads

        /// The upload, if the caller may see it (others' uploads are 404: they are private).
        @Sendable func owned(_ context: APIRequestContext) async throws -> UploadDocument {
            let caller = try context.caller()
            let id = try s.id(context, "upload")
            let upload = try await s.fetch(uploads, id, "upload")
            guard caller.mayModify(owner: upload.owner) else { throw APIProblem.notFound("upload \(id.hex)") }
            return upload
        }

        router.add(.post, "/api/v1/uploads", .role(.user)) { request, context in
            let caller = try context.caller()
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let filename = body.string("filename", required: true, maxLength: 255)
            let size = body.int64("size", required: true, min: 0)
            let tags = body.tags() ?? []
            try body.check()
            if filename!.contains("/") || filename!.contains("\0") {
                throw APIProblem.invalid("filename", "must be a file name without directories")
            }
            guard size! <= s.config.uploadMaxBytes else {
                throw APIProblem.tooLarge("uploads are limited to \(s.config.uploadMaxBytes) bytes (uploads.max_bytes); this file has \(size!)")
            }
            let id = ObjectId()
            let doc = UploadDocument(id: id, filename: filename!, path: id.hex + ".part", size: 0, expectedSize: size,
                                     owner: caller.user, expires: s.uploads.expiry(), tags: tags)
            try await uploads.insertOne(doc)
            var created = doc
            if size == 0 {
                // Nothing to send: complete at once.
                created = try await s.uploads.receive(doc, body: RequestBody(buffer: .init()), headers: [:])
            }
            return try Render.json(created, status: .created, headers: [.location: "/api/v1/uploads/\(id.hex)"])
        }

        router.add(.get, "/api/v1/uploads", .role(.user)) { request, context in
            let caller = try context.caller()
            let query = try ListQuery(request, filters: Self.filters, caller: caller)
            let extra: BSONDocument = caller.role == .admin ? [:] : ["owner": .objectId(caller.user)]
            return try await s.page(uploads, query, extra: extra) { $0 }
        }

        router.add(.get, "/api/v1/uploads/{id}", .role(.user)) { _, context in
            try Render.json(try await owned(context))
        }

        router.add(.put, "/api/v1/uploads/{id}/content", .role(.user)) { request, context in
            let upload = try await owned(context)
            let updated = try await s.uploads.receive(upload, body: request.body, headers: request.headers)
            return try Render.json(updated, status: updated.complete ? .ok : .accepted)
        }

        router.add(.delete, "/api/v1/uploads/{id}", .role(.user)) { _, context in
            let upload = try await owned(context)
            if let image = try await s.store.images.findOne([
                "request.upload": .objectId(upload.id), "status.name": ["$in": ["import", "importing"]],
            ]) {
                throw APIProblem.conflict("upload \(upload.id.hex) is being imported as image \(image.name)")
            }
            try await uploads.deleteOne(["_id": .objectId(upload.id)])
            s.uploads.removeFiles(upload.id)
            return Render.noContent()
        }
    }
}
