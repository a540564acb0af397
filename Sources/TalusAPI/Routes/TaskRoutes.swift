// Tasks (a tool at a pinned commit, an image and default params) and jobs (a task run until a
// limit). Params are checked against the tool's manifest when the code hook recorded it.

import BSON
import Foundation
import Hummingbird
import Mongo
import TalusCode
import TalusModel

extension ObjectReader {
    /// A job or task limit: −1 (until cancelled) or 1…1e9 progress units.
    mutating func limit(_ key: String = "limit") -> Int? {
        guard let v = int(key, range: -1...1_000_000_000) else { return nil }
        if v == 0 { problems.add(path(key), "must be -1 (until cancelled) or at least 1"); return nil }
        return v
    }

    /// A 40-hex git commit id.
    mutating func commit(_ key: String) -> String? {
        guard let c = string(key, maxLength: 40) else { return nil }
        guard c.count == 40, c.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            problems.add(path(key), "must be a full commit id (40 lowercase hex digits)"); return nil
        }
        return c
    }
}

enum ToolParams {
    /// Checks `params` against the manifest of `tool` at `commit` (when recorded) and returns the
    /// params with the manifest's defaults filled in. Problems are 422s on `params.<name>`.
    static func resolve(_ params: BSONDocument, tool: String, commit: String, code: MongoCollection<CodeDocument>) async throws -> BSONDocument {
        guard let recorded = try await CodeRoutes.tool(code, name: tool, commit: commit) else { return params }
        let (resolved, problems) = ParamCheck.resolve(params, against: recorded.manifest)
        if !problems.isEmpty {
            throw APIProblem.invalid(problems.map { FieldProblem(field: "params", problem: $0) })
        }
        return resolved
    }
}

struct TaskRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter("tool", .string), Filter("image", .objectId), Filter.owner, Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let tasks = s.store.tasks

        router.add(.post, "/api/v1/tasks", .role(.user)) { request, context in
            let caller = try context.caller()
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name()
            let tool = body.string("tool", required: true, maxLength: 64)
            let commit = body.commit("tool_commit")
            let image = body.objectId("image", required: true)
            let params = body.document("params") ?? [:]
            let limit = body.limit() ?? 1
            let network = body.enumeration("network", NetworkMode.self) ?? NetworkMode.none
            let vmRaw = body.vm()
            let tags = body.tags() ?? []
            try body.check()
            if !ToolManifest.isValidName(tool!) { throw APIProblem.invalid("tool", "\"\(tool!)\" is not a tool name") }
            guard try await s.store.images.findOne(["_id": .objectId(image!)]) != nil else {
                throw APIProblem.invalid("image", "image \(image!.hex) does not exist (talus image list)")
            }
            // Pin the given commit, or the newest (the tool at the recorded head of main); either
            // must have been recorded by the code hook, so the task's bundle can be served.
            let recorded: CodeDocument
            do {
                recorded = try await CodeStore(database: s.store.database).resolve(tool: tool!, commit: commit)
            } catch let e as CodeLookupError {
                throw APIProblem.invalid(commit == nil ? "tool" : "tool_commit", e.description)
            }
            let pinned = recorded.commit
            _ = try await ToolParams.resolve(params, tool: tool!, commit: pinned, code: s.store.code)
            var vm = vmRaw ?? VMShape()
            if vmRaw == nil {
                let m = recorded.manifest
                if let c = m.resources?.cpus { vm.cpus = c }
                if let mem = m.resources?.memoryMB { vm.memoryMB = mem }
                if let t = m.timeout { vm.timeoutS = max(10, t) }
            }
            let task = TaskDocument(name: name!, tool: tool!, toolCommit: pinned, image: image!, params: params, limit: limit,
                                    vm: vm, network: network, owner: caller.user, tags: tags)
            try await s.insert(tasks, task, unique: "name", value: task.name)
            return try Render.json(task, status: .created, headers: [.location: "/api/v1/tasks/\(task.id.hex)"])
        }
        router.add(.get, "/api/v1/tasks", .role(.user)) { request, context in
            try await s.page(tasks, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/tasks/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(tasks, try s.id(context, "task"), "task"))
        }
        router.add(.patch, "/api/v1/tasks/{id}", .role(.user)) { request, context in
            let caller = try context.caller()
            let id = try s.id(context, "task")
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name(required: false)
            let commit = body.commit("tool_commit")
            let image = body.objectId("image")
            let params = body.document("params")
            let limit = body.limit()
            let network = body.enumeration("network", NetworkMode.self)
            let tags = body.tags()
            var task = try await s.fetch(tasks, id, "task")
            let vm = body.vm(base: task.vm)
            try body.check()
            try caller.requireOwner(task.owner, "task \(task.name)")
            if let image, try await s.store.images.findOne(["_id": .objectId(image)]) == nil {
                throw APIProblem.invalid("image", "image \(image.hex) does not exist")
            }
            if let commit {
                guard try await CodeRoutes.tool(s.store.code, name: task.tool, commit: commit) != nil else {
                    throw APIProblem.invalid("tool_commit", "tool \(task.tool) is not recorded at \(commit)")
                }
                task.toolCommit = commit
            }
            if let params { task.params = params }
            _ = try await ToolParams.resolve(task.params, tool: task.tool, commit: task.toolCommit, code: s.store.code)
            var set: BSONDocument = ["updated": .datetime(bsonNow()), "tool_commit": .string(task.toolCommit),
                                     "params": .document(task.params)]
            if let name { set["name"] = .string(name) }
            if let image { set["image"] = .objectId(image) }
            if let limit { set["limit"] = .int64(Int64(limit)) }
            if let network { set["network"] = .string(network.rawValue) }
            if let vm { set["vm"] = try BSONEncoder().encodeValue(vm) }
            if let tags { set["tags"] = .array(tags.map { .string($0) }) }
            do {
                try await tasks.updateOne(["_id": .objectId(id)], ["$set": .document(set)])
            } catch let e as MongoError where e.isDuplicateKey {
                throw APIProblem.conflict("a task named \(name ?? "") already exists; choose another name")
            }
            return try Render.json(try await s.fetch(tasks, id, "task"))
        }
        router.add(.delete, "/api/v1/tasks/{id}", .role(.user)) { _, context in
            let caller = try context.caller()
            let id = try s.id(context, "task")
            let task = try await s.fetch(tasks, id, "task")
            try caller.requireOwner(task.owner, "task \(task.name)")
            try await tasks.deleteOne(["_id": .objectId(id)])
            return Render.noContent()
        }
    }
}

struct JobRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter("task", .objectId), Filter("image", .objectId), Filter("tool", .string),
                          Filter.status(JobState.self), Filter("queue", .string), Filter.owner, Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let jobs = s.store.jobs

        router.add(.post, "/api/v1/jobs", .role(.user)) { request, context in
            let caller = try context.caller()
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let taskId = body.objectId("task", required: true)
            let name = body.name(required: false)
            let imageId = body.objectId("image")
            let params = body.document("params") ?? [:]
            let priority = body.int("priority", range: 1...100) ?? 50
            let limit = body.limit()
            let network = body.enumeration("network", NetworkMode.self)
            let queue = body.string("queue", maxLength: 64) ?? "default"
            let debug = body.bool("debug") ?? false
            let tags = body.tags() ?? []
            let found = try await taskId.asyncMap { try await s.store.tasks.findOne(["_id": .objectId($0)]) } ?? nil
            let vm = body.vm(base: found?.vm ?? VMShape()) ?? found?.vm
            try body.check()
            guard let task = found else {
                throw APIProblem.invalid("task", "task \(taskId!.hex) does not exist (talus task list)")
            }
            if !ToolManifest.isValidName(queue) { throw APIProblem.invalid("queue", "\"\(queue)\" is not a queue name") }
            let image = imageId ?? task.image
            guard let imageDoc = try await s.store.images.findOne(["_id": .objectId(image)]) else {
                throw APIProblem.invalid("image", "image \(image.hex) does not exist")
            }
            if [.delete, .deleting, .error].contains(imageDoc.status.name) {
                throw APIProblem.conflict("image \(imageDoc.name) is \(imageDoc.status.name.rawValue); jobs need a usable image")
            }
            let merged = try await ToolParams.resolve(task.params.merging(params), tool: task.tool, commit: task.toolCommit,
                                                      code: s.store.code)
            let id = ObjectId()
            let job = JobDocument(id: id, name: name ?? "\(task.name)-\(id.hex.suffix(6))", task: task.id, image: image,
                                  tool: task.tool, toolCommit: task.toolCommit, params: merged, priority: priority,
                                  limit: limit ?? task.limit, vm: vm ?? task.vm, network: network ?? task.network, queue: queue, debug: debug,
                                  status: Status(.run), owner: caller.user, tags: tags)
            try await jobs.insertOne(job)
            context.logger.info("job requested", metadata: ["job": .string(job.id.hex)])
            return try Render.json(job, status: .created, headers: [.location: "/api/v1/jobs/\(job.id.hex)"])
        }
        router.add(.get, "/api/v1/jobs", .role(.user)) { request, context in
            try await s.page(jobs, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/jobs/{id}", .role(.user)) { _, context in
            try Render.json(try await s.fetch(jobs, try s.id(context, "job"), "job"))
        }
        router.add(.patch, "/api/v1/jobs/{id}", .role(.user)) { request, context in
            let caller = try context.caller()
            let id = try s.id(context, "job")
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let statusRaw = body.string("status", maxLength: 64)
            let priority = body.int("priority", range: 1...100)
            let name = body.name(required: false)
            let tags = body.tags()
            try body.check()
            let job = try await s.fetch(jobs, id, "job")
            try caller.requireOwner(job.owner, "job \(job.name)")
            let requested = try Requests.parse(statusRaw, JobState.self, from: job.status.name, id: id, problems: body.problems)
            var set: BSONDocument = ["updated": .datetime(bsonNow())]
            if let requested { set["status"] = try BSONEncoder().encodeValue(Status(requested)) }
            if let priority { set["priority"] = .int64(Int64(priority)) }
            if let name { set["name"] = .string(name) }
            if let tags { set["tags"] = .array(tags.map { .string($0) }) }
            let result = try await jobs.updateOne(["_id": .objectId(id), "status.name": .string(job.status.name.rawValue)],
                                                  ["$set": .document(set)])
            guard result.matchedCount == 1 else { throw APIProblem.conflict("job \(job.name) changed meanwhile; read it again and retry") }
            return try Render.json(try await s.fetch(jobs, id, "job"))
        }
    }
}

extension Optional {
    /// `map` with an async transform.
    func asyncMap<U>(_ transform: (Wrapped) async throws -> U) async rethrows -> U? {
        switch self {
        case .some(let w): return try await transform(w)
        case .none: return nil
        }
    }
}
