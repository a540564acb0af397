// Tool bundles (DESIGN §8): `GET /api/v1/code/{name}/bundle?commit=<40 hex>` answers the tar.gz
// of the tool at that commit (default: the newest, i.e. the head of main) with its SHA-256 in
// `X-Talus-SHA256` and the commit in `X-Talus-Commit`. Only (name, commit) pairs the code hook
// recorded are served, from git objects, never from a work tree or a path taken from the request.
// Slave, user and admin tokens may fetch bundles.

import Foundation
import HTTPTypes
import Hummingbird
import TalusCode

/// The bundle endpoint.
public struct CodeBundleRoutes: Sendable {
    /// The path, OpenAPI style.
    public static let path = "/api/v1/code/{name}/bundle"

    public static let sha256Header = HTTPField.Name("X-Talus-SHA256")!
    public static let commitHeader = HTTPField.Name("X-Talus-Commit")!

    public let service: BundleService
    let fileIO = FileIO()

    public init(service: BundleService) { self.service = service }

    /// Registers the endpoint on a plain Hummingbird router (authorization is the caller's).
    public func register<Context: RequestContext>(on router: Router<Context>) {
        router.get("/api/v1/code/:name/bundle") { request, context in
            try await self.respond(request, context: context)
        }
    }

    /// Answers one request: 200 with the bundle, 304 when `If-None-Match` has its SHA-256, 400 for
    /// a malformed commit, 404 for an unknown tool or an unrecorded commit, 422 when the recorded
    /// tree cannot be packed.
    public func respond(_ request: Request, context: some RequestContext) async throws -> Response {
        let name = context.parameters.get("name") ?? ""
        let commit = request.uri.queryParameters.get("commit").flatMap { $0.isEmpty ? nil : $0 }
        let bundle: CachedBundle
        do {
            bundle = try await service.bundle(tool: name, commit: commit).bundle
        } catch let e as BundleRequestError {
            throw Self.httpError(e)
        }
        let etag = "\"\(bundle.sha256)\""
        var headers: HTTPFields = [
            .contentType: "application/gzip",
            Self.sha256Header: bundle.sha256,
            Self.commitHeader: bundle.commit,
            .eTag: etag,
            .contentDisposition: "attachment; filename=\"\(bundle.tool)-\(bundle.commit.prefix(12)).tar.gz\"",
            // A bundle at an explicit commit never changes; "the newest" does.
            .cacheControl: commit == nil ? "no-cache" : "private, max-age=31536000, immutable",
        ]
        if let match = request.headers[.ifNoneMatch], match.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag }) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentLength] = String(bundle.size)
        return Response(status: .ok, headers: headers, body: try await fileIO.loadFile(path: bundle.path, context: context))
    }

    /// The HTTP answer for a refused request (the API renders it as problem+json).
    public static func httpError(_ e: BundleRequestError) -> HTTPError {
        switch e {
        case .badCommit(let m): HTTPError(.badRequest, message: m)
        case .unknownTool(let m), .notRecorded(let m): HTTPError(.notFound, message: m)
        case .unbuildable(let m): HTTPError(.unprocessableContent, message: m)
        }
    }
}
