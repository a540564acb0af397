// Images: import (from an upload) or derive (from a base), request configure/delete, and the
// image file for slaves. Users write requests only; the master writes every other status.

import BSON
import Foundation
import HTTPTypes
import Hummingbird
import Mongo
import NIOCore
import TalusModel

extension ObjectReader {
    /// A VM shape `{cpus, memory_mb, timeout_s}` over `base`.
    mutating func vm(_ key: String = "vm", base: VMShape = VMShape()) -> VMShape? {
        guard var r = object(key) else { return nil }
        var shape = base
        if let c = r.int("cpus", range: 1...64) { shape.cpus = c }
        if let m = r.int("memory_mb", range: 64...262_144) { shape.memoryMB = m }
        if let t = r.int("timeout_s", range: 10...604_800) { shape.timeoutS = t }
        r.finish()
        return shape
    }

    /// Guest credentials `{username, password}`.
    mutating func credentials(_ key: String = "credentials") -> ImageCredentials? {
        guard var r = object(key) else { return nil }
        let u = r.string("username", required: true, maxLength: 128)
        let p = r.string("password", required: true, maxLength: 256, allowEmpty: true)
        r.finish()
        guard let u, let p else { return nil }
        return ImageCredentials(username: u, password: p)
    }
}

/// Request-status handling shared by images, jobs and slaves.
enum Requests {
    /// Parses a requested status: unknown names and non-request states are 422; a request the
    /// current state does not allow is 409.
    static func parse<S: StatusName>(_ raw: String?, _ type: S.Type, from current: S, id: ObjectId,
                                     problems: ProblemList) throws -> S? {
        guard let raw else { return nil }
        let requests = S.allCases.filter(\.isRequest).map(\.rawValue)
        guard let state = S(rawValue: raw) else {
            problems.add("status", "unknown status \"\(raw)\"; you may request \(requests.joined(separator: ", "))")
            try problems.check()
            return nil
        }
        guard state.isRequest else {
            problems.add("status", "\"\(raw)\" is set by Talus itself; you may request \(requests.joined(separator: ", "))")
            try problems.check()
            return nil
        }
        do {
            try current.checkTransition(to: state, id: id)
        } catch {
            let allowed = current.allowedRequests.map(\.rawValue)
            throw APIProblem.conflict("\(S.collection.rawValue) \(id.hex) is \(current.rawValue); \(raw) is not possible now"
                                      + (allowed.isEmpty ? "" : " (possible: \(allowed.joined(separator: ", ")))"))
        }
        return state
    }
}

struct ImageRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter("os", .objectId), Filter("base", .objectId), Filter.status(ImageState.self),
                          Filter.owner, Filter.tag]

    /// What a caller sees of an image: credentials masked; the VNC password only for the owner
    /// and admins.
    static func view(_ image: ImageDocument, for caller: Identity?) -> ImageDocument {
        var v = image.redacted
        if let caller, !caller.mayModify(owner: image.owner), v.status.vnc != nil {
            v.status.vnc!.password = "********"
        }
        return v
    }

    func register(on router: APIRouter, services s: APIServices) {
        let images = s.store.images

        router.add(.post, "/api/v1/images", .role(.user)) { request, context in
            let caller = try context.caller()
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name()
            var os = body.objectId("os")
            let uploadId = body.objectId("upload")
            let baseId = body.objectId("base")
            let interactive = body.bool("interactive")
            let session = body.int("session_seconds", range: 60...604_800)
            let description = body.string("description", maxLength: 4096)
            let tags = body.tags() ?? []
            let vm = body.vm() ?? VMShape(cpus: 1, memoryMB: 1024, timeoutS: 3600)
            let credentials = body.credentials()
            body.finish()
            let hasUpload = body.fields["upload"] != nil, hasBase = body.fields["base"] != nil
            if !hasUpload && !hasBase {
                body.problems.add("upload", "give either upload (import a disk image) or base (derive from an image)")
            } else if hasUpload && hasBase {
                body.problems.add("base", "give either upload or base, not both")
            }
            if hasUpload && body.fields["os"] == nil { body.missing("os") }
            try body.problems.check()

            let status: ImageState
            let request: ImageRequest
            if let uploadId {
                guard let upload = try await s.store.uploads.findOne(["_id": .objectId(uploadId)]),
                      caller.mayModify(owner: upload.owner) else {
                    throw APIProblem.invalid("upload", "upload \(uploadId.hex) does not exist")
                }
                guard upload.complete else {
                    throw APIProblem.conflict("upload \(uploadId.hex) is incomplete (\(upload.size) of \(upload.expectedSize ?? 0) bytes); finish it with PUT /api/v1/uploads/\(uploadId.hex)/content")
                }
                if let other = try await images.findOne(["request.upload": .objectId(uploadId)]) {
                    throw APIProblem.conflict("upload \(uploadId.hex) is already being imported as image \(other.name)")
                }
                guard try await s.store.os.findOne(["_id": .objectId(os!)]) != nil else {
                    throw APIProblem.invalid("os", "os \(os!.hex) does not exist (talus os list)")
                }
                status = .import
                request = ImageRequest(upload: uploadId, interactive: interactive ?? true, sessionSeconds: session)
            } else {
                let base = try await images.findOne(["_id": .objectId(baseId!)])
                guard let base else { throw APIProblem.invalid("base", "image \(baseId!.hex) does not exist") }
                guard base.status.name == .ready else {
                    throw APIProblem.conflict("base image \(base.name) is \(base.status.name.rawValue); derive from it once it is ready")
                }
                if let os, os != base.os { throw APIProblem.invalid("os", "a derived image runs its base's os (\(base.os.hex))") }
                os = base.os
                status = .create
                request = ImageRequest(upload: nil, interactive: interactive ?? false, sessionSeconds: session)
            }
            let image = ImageDocument(name: name!, os: os!, base: baseId, description: description, credentials: credentials,
                                      request: request, status: ImageStatus(status), vm: vm, owner: caller.user, tags: tags)
            try await s.insert(images, image, unique: "name", value: image.name)
            if let uploadId {
                // Give the master a full expiry period to consume the upload.
                try await s.store.uploads.updateOne(["_id": .objectId(uploadId)],
                                                    ["$set": ["expires": .datetime(s.uploads.expiry())]])
            }
            context.logger.info("image requested", metadata: ["image": .string(image.id.hex), "status": .string(status.rawValue)])
            return try Render.json(Self.view(image, for: caller), status: .created,
                                   headers: [.location: "/api/v1/images/\(image.id.hex)"])
        }

        router.add(.get, "/api/v1/images", .role(.user)) { request, context in
            let caller = try context.caller()
            return try await s.page(images, ListQuery(request, filters: Self.filters, caller: caller)) { Self.view($0, for: caller) }
        }

        router.add(.get, "/api/v1/images/{id}", .role(.user)) { _, context in
            let caller = try context.caller()
            return try Render.json(Self.view(try await s.fetch(images, try s.id(context, "image"), "image"), for: caller))
        }

        router.add(.patch, "/api/v1/images/{id}", .role(.user)) { request, context in
            let caller = try context.caller()
            let id = try s.id(context, "image")
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name(required: false)
            let description = body.string("description", maxLength: 4096, allowEmpty: true)
            let tags = body.tags()
            let credentials = body.credentials()
            let vm = body.vm()
            let statusRaw = body.string("status", maxLength: 64)
            let interactive = body.bool("interactive")
            let session = body.int("session_seconds", range: 60...604_800)
            try body.check()
            let image = try await s.fetch(images, id, "image")
            try caller.requireOwner(image.owner, "image \(image.name)")
            let requested = try Requests.parse(statusRaw, ImageState.self, from: image.status.name, id: id, problems: body.problems)
            if requested == nil, interactive != nil || session != nil {
                throw APIProblem.invalid("interactive", "interactive and session_seconds go with a status request (configure)")
            }
            var set: BSONDocument = ["updated": .datetime(bsonNow())]
            if let name { set["name"] = .string(name) }
            if let description { set["description"] = .string(description) }
            if let tags { set["tags"] = .array(tags.map { .string($0) }) }
            if let credentials { set["credentials"] = try BSONEncoder().encodeValue(credentials) }
            if let vm { set["vm"] = try BSONEncoder().encodeValue(vm) }
            if let requested {
                if requested == .delete { try await Self.requireNoChildren(images, image) }
                set["status"] = try BSONEncoder().encodeValue(ImageStatus(requested))
                if requested == .configure {
                    set["request"] = try BSONEncoder().encodeValue(
                        ImageRequest(upload: nil, interactive: interactive ?? true, sessionSeconds: session))
                }
            }
            let result: UpdateResult
            do {
                result = try await images.updateOne(["_id": .objectId(id), "status.name": .string(image.status.name.rawValue)],
                                                    ["$set": .document(set)])
            } catch let e as MongoError where e.isDuplicateKey {
                throw APIProblem.conflict("an image named \(name ?? "") already exists; choose another name")
            }
            guard result.matchedCount == 1 else {
                throw APIProblem.conflict("image \(image.name) changed meanwhile; read it again and retry")
            }
            return try Render.json(Self.view(try await s.fetch(images, id, "image"), for: caller))
        }

        router.add(.delete, "/api/v1/images/{id}", .role(.user)) { _, context in
            let caller = try context.caller()
            let id = try s.id(context, "image")
            let image = try await s.fetch(images, id, "image")
            try caller.requireOwner(image.owner, "image \(image.name)")
            if image.status.name == .delete || image.status.name == .deleting {
                return try Render.json(Self.view(image, for: caller), status: .accepted)
            }
            guard image.status.name.canMove(to: .delete) else {
                throw APIProblem.conflict("image \(image.name) is \(image.status.name.rawValue) and cannot be deleted now")
            }
            try await Self.requireNoChildren(images, image)
            let result = try await images.updateOne(
                ["_id": .objectId(id), "status.name": .string(image.status.name.rawValue)],
                ["$set": ["status": try BSONEncoder().encodeValue(ImageStatus(.delete)), "updated": .datetime(bsonNow())]])
            guard result.matchedCount == 1 else { throw APIProblem.conflict("image \(image.name) changed meanwhile; retry") }
            return try Render.json(Self.view(try await s.fetch(images, id, "image"), for: caller), status: .accepted)
        }

        let file: APIHandler = { request, context in
            try await Self.serveFile(request, context, s)
        }
        router.add(.get, "/api/v1/images/{id}/file", .slaveRead, file)
        router.add(.head, "/api/v1/images/{id}/file", .slaveRead, file)
    }

    static func requireNoChildren(_ images: MongoCollection<ImageDocument>, _ image: ImageDocument) async throws {
        let children = try await images.find(["base": .objectId(image.id)], options: FindOptions(limit: 5))
        guard children.isEmpty else {
            throw APIProblem.conflict("image \(image.name) is the base of \(children.map(\.name).joined(separator: ", ")); delete those first")
        }
    }

    /// The image file with Range, ETag (the sha256) and `X-Talus-SHA256`, streamed from disk.
    static func serveFile(_ request: Request, _ context: APIRequestContext, _ s: APIServices) async throws -> Response {
        let image = try await s.fetch(s.store.images, try s.id(context, "image"), "image")
        guard image.status.name == .ready, let file = image.file else {
            throw APIProblem.conflict("image \(image.name) is \(image.status.name.rawValue); its file can be downloaded once it is ready")
        }
        guard !file.path.contains("/"), !file.path.hasPrefix("."), !file.path.isEmpty else {
            throw APIProblem(.internalServerError, "image \(image.id.hex) has an invalid file path")
        }
        let path = s.config.imagesDirectory + "/" + file.path
        guard let size = UploadManager.fileSize(path) else {
            context.logger.error("image file missing", metadata: ["image": .string(image.id.hex), "path": .string(path)])
            throw APIProblem(.notFound, "the file of image \(image.name) is missing from the image store")
        }
        let etag = "\"" + (file.sha256 ?? "\(image.id.hex)-\(size)-\(Int(image.updated.timeIntervalSince1970))") + "\""
        var headers: HTTPFields = [.acceptRanges: "bytes", .eTag: etag, .contentType: "application/octet-stream"]
        if let sha = file.sha256 { headers[HTTPField.Name("X-Talus-SHA256")!] = sha }
        if let inm = request.headers[.ifNoneMatch], inm == etag || inm == "*" {
            return Response(status: .notModified, headers: headers)
        }
        var range = RangeRequest(header: request.headers[.range], size: size)
        if let ifRange = request.headers[.ifRange], ifRange != etag { range = .whole }
        let fileIO = FileIO()
        var response: Response
        switch range {
        case .unsatisfiable:
            headers[.contentRange] = "bytes */\(size)"
            throw APIProblem(.rangeNotSatisfiable, "the file has \(size) bytes; ask for a range inside it", headers: headers)
        case .whole:
            headers[.contentLength] = String(size)
            response = Response(status: .ok, headers: headers,
                                body: size == 0 ? .init() : try await fileIO.loadFile(path: path, context: context))
        case .part(let r):
            headers[.contentRange] = "bytes \(r.lowerBound)-\(r.upperBound)/\(size)"
            headers[.contentLength] = String(r.count)
            response = Response(status: .partialContent, headers: headers,
                                body: try await fileIO.loadFile(path: path, range: Int(r.lowerBound)...Int(r.upperBound), context: context))
        }
        if request.method == .head { response = response.createHeadResponse() }
        return response
    }
}
