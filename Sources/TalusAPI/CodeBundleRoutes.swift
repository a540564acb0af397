// Tool bundles (DESIGN §8): `GET /api/v1/code/{name}/bundle?commit=<40 hex>` answers the tar.gz
// of the tool at that commit (default: the newest, i.e. the head of main) with its SHA-256 in
// `X-Talus-SHA256` and the commit in `X-Talus-Commit`. Only (name, commit) pairs the code hook
// recorded are served, built from git objects, never from a work tree or a path taken from the
// request. Slave, user and admin tokens may fetch bundles. `GET /api/v1/code/head` says which
// commit of main was recorded last and which tools and components it has.

import Foundation
import HTTPTypes
import Hummingbird
import TalusCode
import TalusModel

/// The bundle endpoint and the recorded head of the code repository.
struct CodeBundleRoutes: APIRouteCollection {
    static let sha256Header = HTTPField.Name("X-Talus-SHA256")!
    static let commitHeader = HTTPField.Name("X-Talus-Commit")!

    func register(on router: APIRouter, services s: APIServices) {
        let store = CodeStore(database: s.store.database)
        let endpoint = CodeBundleEndpoint(service: BundleService(
            store: store, cache: BundleCache(directory: s.config.bundleCache, repository: GitRepository(path: s.config.codeRepository))))
        router.add(.get, "/api/v1/code/head", .role(.user)) { _, _ in
            guard let head = try await store.head() else {
                throw APIProblem(.notFound, "nothing is recorded yet: push to the code repository (or run talus-code record on the master)")
            }
            return try Render.json(head)
        }
        router.add(.get, "/api/v1/code/{name}/bundle", .slaveRead) { request, context in
            try await endpoint.respond(request, context: context)
        }
    }
}

/// Answers bundle requests.
struct CodeBundleEndpoint: Sendable {
    let service: BundleService
    let fileIO = FileIO()

    /// 200 with the bundle, 304 when `If-None-Match` has its SHA-256, 400 for a malformed commit,
    /// 404 for an unknown tool or an unrecorded commit, 422 when the recorded tree cannot be packed.
    func respond(_ request: Request, context: APIRequestContext) async throws -> Response {
        let name = context.parameters.get("name") ?? ""
        let commit = request.uri.queryParameters.get("commit")
        let bundle: CachedBundle
        do {
            bundle = try await service.bundle(tool: name, commit: commit).bundle
        } catch let e as CodeLookupError {
            if case .notInRepository = e { context.logger.error("tool bundle", metadata: ["error": "\(e)"]) }
            throw e.problem
        }
        let etag = "\"\(bundle.sha256)\""
        var headers: HTTPFields = [
            .contentType: "application/gzip",
            CodeBundleRoutes.sha256Header: bundle.sha256,
            CodeBundleRoutes.commitHeader: bundle.commit,
            .eTag: etag,
            .contentDisposition: "attachment; filename=\"\(bundle.tool)-\(bundle.commit.prefix(12)).tar.gz\"",
            // A bundle at an explicit commit never changes; "the newest" does.
            .cacheControl: commit == nil ? "no-cache" : "private, max-age=31536000, immutable",
        ]
        if let match = request.headers[.ifNoneMatch],
           match.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag || $0 == "*" }) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentLength] = String(bundle.size)
        return Response(status: .ok, headers: headers, body: try await fileIO.loadFile(path: bundle.path, context: context))
    }
}

extension CodeLookupError {
    /// The answer to the client.
    var problem: APIProblem {
        switch self {
        case .badCommit(let m): APIProblem(.badRequest, m)
        case .unknownTool(let m), .notRecorded(let m), .notInRepository(let m): APIProblem(.notFound, m)
        case .unbuildable(let m): APIProblem(.unprocessableContent, m)
        }
    }
}
