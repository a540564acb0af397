// Errors as `application/problem+json` (RFC 9457). Handlers throw ``APIProblem``; the one
// middleware that turns errors into responses (``RequestObserver``) renders it, and turns any
// other error into a 500 whose details stay in the log.

import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import TalusModel

/// One problem with one field of a request, for 422 answers.
public struct FieldProblem: Codable, Sendable, Equatable {
    /// Where: a JSON pointer-like dotted path (`vm.cpus`) or a query parameter name.
    public var field: String
    public var problem: String
    public init(field: String, problem: String) { self.field = field; self.problem = problem }
}

/// An error answered to the client with a status and a message it can act on.
public struct APIProblem: Error, Sendable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    /// Short, fixed per kind of problem.
    public var title: String
    /// What went wrong with this request and what to do about it.
    public var detail: String
    /// Per-field problems (422).
    public var errors: [FieldProblem]
    /// Extra headers (`WWW-Authenticate`, `Allow`, `Content-Range`).
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, title: String? = nil, _ detail: String, errors: [FieldProblem] = [],
                headers: HTTPFields = [:]) {
        self.status = status
        self.title = title ?? status.reasonPhrase
        self.detail = detail
        self.errors = errors
        self.headers = headers
    }

    public var description: String { "\(status.code) \(title): \(detail)" }

    public static func badRequest(_ detail: String) -> APIProblem { APIProblem(.badRequest, detail) }
    public static func notFound(_ what: String) -> APIProblem { APIProblem(.notFound, "\(what) does not exist") }
    public static func conflict(_ detail: String) -> APIProblem { APIProblem(.conflict, detail) }
    public static func forbidden(_ detail: String) -> APIProblem { APIProblem(.forbidden, detail) }
    public static func invalid(_ errors: [FieldProblem]) -> APIProblem {
        let summary = errors.map { "\($0.field): \($0.problem)" }.joined(separator: "; ")
        return APIProblem(.unprocessableContent, title: "Invalid request", summary, errors: errors)
    }
    public static func invalid(_ field: String, _ problem: String) -> APIProblem {
        invalid([FieldProblem(field: field, problem: problem)])
    }
    public static func tooLarge(_ detail: String) -> APIProblem { APIProblem(.contentTooLarge, detail) }
    public static var unauthorized: APIProblem {
        APIProblem(.unauthorized,
                   "this endpoint needs a token: send `Authorization: Bearer talus_…` (create one with `talus token create`, or `talus-api bootstrap-admin` for the first admin)",
                   headers: [.wwwAuthenticate: "Bearer realm=\"talus\""])
    }

    /// The wire form.
    struct Body: Encodable {
        var type = "about:blank"
        var title: String
        var status: Int
        var detail: String
        var instance: String?
        var errors: [FieldProblem]?
    }

    func response(instance: String?) -> Response {
        let body = Body(title: title, status: status.code, detail: detail, instance: instance,
                        errors: errors.isEmpty ? nil : errors)
        let data = (try? TalusJSON.encoder().encode(body)) ?? Data("{}".utf8)
        var headers = self.headers
        headers[.contentType] = "application/problem+json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

extension APIProblem {
    /// Maps errors raised outside the handlers' own checks (Hummingbird's HTTPError, transition
    /// errors, duplicate keys) to problems; nil for errors that are the server's fault.
    static func from(_ error: any Error) -> APIProblem? {
        switch error {
        case let p as APIProblem: return p
        case let t as TransitionError:
            return APIProblem(.conflict, "\(t.description); the document changed or the request is not allowed in its current state")
        case let h as HTTPError:
            if h.status == .notFound { return APIProblem(.notFound, "no such endpoint; see /openapi.yaml") }
            return APIProblem(h.status, h.body ?? h.status.reasonPhrase)
        default: return nil
        }
    }
}
