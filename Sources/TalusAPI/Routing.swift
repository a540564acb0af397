// Route registration with a table of every endpoint (method, OpenAPI-style path, access), and the
// one middleware that authenticates, turns errors into problem responses, logs each request and
// counts it in metrics by route and status.

import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NIOCore
import TalusCore
import TalusModel

/// One registered endpoint.
public struct RouteInfo: Sendable, Hashable, CustomStringConvertible {
    /// `GET`, `POST`, ...
    public var method: String
    /// The path as OpenAPI writes it (`/api/v1/jobs/{id}`).
    public var path: String
    public var access: Access
    public var description: String { "\(method) \(path)" }

    /// True when `requestPath` matches this route's template.
    func matches(_ requestPath: String) -> Bool {
        let a = path.split(separator: "/"), b = requestPath.split(separator: "/")
        guard a.count == b.count else { return false }
        return zip(a, b).allSatisfy { t, s in t.hasPrefix("{") || t == s }
    }
}

/// The handler type of every endpoint.
public typealias APIHandler = @Sendable (Request, APIRequestContext) async throws -> Response

/// Registers endpoints on a Hummingbird router and remembers them (for 405 answers and for the
/// test that keeps `/openapi.yaml` true).
public final class APIRouter: @unchecked Sendable {
    // Mutated only while the application is being built (one task), read-only afterwards.
    public let router: Router<APIRequestContext>
    public private(set) var routes: [RouteInfo] = []

    init(router: Router<APIRequestContext>) { self.router = router }

    /// Adds `method path` (OpenAPI syntax, `{param}`) requiring `access`.
    public func add(_ method: HTTPRequest.Method, _ path: String, _ access: Access, _ handler: @escaping APIHandler) {
        routes.append(RouteInfo(method: method.rawValue, path: path, access: access))
        let hbPath = path.split(separator: "/", omittingEmptySubsequences: false).map { seg in
            seg.hasPrefix("{") && seg.hasSuffix("}") ? ":" + seg.dropFirst().dropLast() : seg
        }.joined(separator: "/")
        router.on(RouterPath(hbPath), method: method) { (request: Request, context: APIRequestContext) -> Response in
            try Self.check(access, context)
            return try await handler(request, context)
        }
    }

    static func check(_ access: Access, _ context: APIRequestContext) throws {
        switch access {
        case .open: return
        case .slaveRead: _ = try context.caller()
        case .role(let needed):
            let caller = try context.caller()
            guard caller.role >= needed else {
                let what = caller.role == .slave
                    ? "slave tokens may only download image files and tool bundles"
                    : "this needs an \(needed.rawValue) token (yours is \(caller.role.rawValue))"
                throw APIProblem.forbidden(what)
            }
        }
    }

    /// The methods registered for `path` (for `Allow` on 405).
    func methods(for path: String) -> [String] {
        Array(Set(routes.filter { $0.matches(path) }.map(\.method))).sorted()
    }
}

/// The single choke point around every request: authentication (the bearer token becomes
/// ``APIRequestContext/identity``), errors to `application/problem+json`, one log line per
/// request, and metrics by route and status.
struct RequestObserver: RouterMiddleware {
    typealias Context = APIRequestContext

    let authenticator: Authenticator
    let routes: APIRouter
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        var context = context
        let path = request.uri.path
        var response: Response
        do {
            if path != "/healthz" {
                context.identity = try await authenticator.identify(request.headers[.authorization])
            }
            response = try await next(request, context)
        } catch {
            response = problemResponse(error, request: request, context: context)
        }
        let route = context.endpointPath.flatMap { $0 == "NotFound" ? nil : Self.openAPIPath($0) } ?? "unmatched"
        let elapsed = ContinuousClock.now - start
        let seconds = elapsed.secondsDouble
        let status = response.status.code
        var meta: Logger.Metadata = [
            "method": .string(request.method.rawValue), "path": .string(path), "route": .string(route),
            "status": .stringConvertible(status), "ms": .string(String(format: "%.1f", seconds * 1000)),
        ]
        if let who = context.identity { meta["user"] = .string(who.name) }
        if let peer = context.remoteAddress { meta["peer"] = .string(peer) }
        let level: Logger.Level = status >= 500 ? .error : (path == "/healthz" || path == "/metrics" ? .debug : .info)
        context.logger.log(level: level, "request", metadata: meta)
        let dims = [("route", route), ("method", request.method.rawValue)]
        Counter(label: "talus_api_requests_total", dimensions: dims + [("status", String(status))]).increment()
        Metrics.Timer(label: "talus_api_request_duration_seconds", dimensions: dims, preferredDisplayUnit: .seconds)
            .recordNanoseconds(Int64(seconds * 1e9))
        return response
    }

    func problemResponse(_ error: any Error, request: Request, context: Context) -> Response {
        let instance = request.uri.path
        if var problem = APIProblem.from(error) {
            if problem.status == .notFound, context.endpointPath == nil || context.endpointPath == "NotFound" {
                let allowed = routes.methods(for: instance)
                if !allowed.isEmpty {
                    problem = APIProblem(.methodNotAllowed, "\(request.method.rawValue) is not supported here; use \(allowed.joined(separator: ", "))",
                                         headers: [.allow: allowed.joined(separator: ", ")])
                }
            }
            return problem.response(instance: instance)
        }
        context.logger.error("request failed", metadata: ["error": "\(error)", "path": .string(instance)])
        return APIProblem(.internalServerError, "the server failed to handle this request; the details are in its log (request id \(context.id))")
            .response(instance: instance)
    }

    /// `/api/v1/jobs/:id` → `/api/v1/jobs/{id}`.
    static func openAPIPath(_ hb: String) -> String {
        let p = hb.split(separator: "/").map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }.joined(separator: "/")
        return "/" + p
    }
}
