// List queries: `limit`, a keyset cursor `after` (the last `_id` of the previous page; pages go
// newest first), and equality filters on an allow-list of fields per resource, each parsed to
// its type. A query parameter that is not on the list — `$where`, `name[$gt]`, `status.name` —
// is a 422; a value is always a plain string, id, integer or boolean, never an operator.

import BSON
import Foundation
import Hummingbird
import TalusModel

/// A filterable field of a list endpoint.
struct Filter: Sendable {
    enum Kind: Sendable {
        case string
        case objectId
        case int
        case bool
        /// One of the listed values.
        case oneOf([String])
        /// An owner id, or `me` for the caller.
        case owner
    }

    /// The query parameter.
    let name: String
    /// The document field it filters (`status.name` for `status`).
    let field: String
    let kind: Kind
    let doc: String

    init(_ name: String, field: String? = nil, _ kind: Kind, _ doc: String = "") {
        self.name = name; self.field = field ?? name; self.kind = kind; self.doc = doc
    }

    static func status<S: StatusName>(_ type: S.Type) -> Filter {
        Filter("status", field: "status.name", .oneOf(S.allCases.map(\.rawValue)))
    }
    static let tag = Filter("tag", field: "tags", .string)
    static let owner = Filter("owner", .owner)
    static let name = Filter("name", .string)
}

/// A parsed list request.
struct ListQuery: Sendable {
    static let defaultLimit = 50
    static let maxLimit = 500

    var filter: BSONDocument
    var limit: Int
    var after: ObjectId?

    /// Parses `request`'s query against `filters`; every problem is a 422.
    init(_ request: Request, filters: [Filter], caller: Identity?) throws {
        let problems = ProblemList()
        var filter = BSONDocument()
        var limit = Self.defaultLimit
        var after: ObjectId?
        var seen = Set<String>()
        let allowed = Dictionary(filters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for (rawKey, rawValue) in request.uri.queryParameters {
            let key = String(rawKey), value = String(rawValue)
            if !seen.insert(key).inserted {
                problems.add(key, "given more than once")
                continue
            }
            switch key {
            case "limit":
                guard let n = Int(value), (1...Self.maxLimit).contains(n) else {
                    problems.add(key, "must be an integer between 1 and \(Self.maxLimit)"); continue
                }
                limit = n
            case "after":
                guard let id = ObjectId(value) else { problems.add(key, "must be an id (the `next` of the previous page)"); continue }
                after = id
            default:
                guard let f = allowed[key] else {
                    let names = (["limit", "after"] + filters.map(\.name)).joined(separator: ", ")
                    problems.add(key, "unknown query parameter (accepted: \(names))")
                    continue
                }
                switch Self.value(value, f.kind, caller: caller) {
                case .success(let v): filter[f.field] = v
                case .failure(let message): problems.add(key, message.text)
                }
            }
        }
        try problems.check()
        self.filter = filter
        self.limit = limit
        self.after = after
    }

    struct Message: Error { let text: String }

    static func value(_ text: String, _ kind: Filter.Kind, caller: Identity?) -> Result<BSONValue, Message> {
        switch kind {
        case .string:
            guard !text.isEmpty, text.count <= 256 else { return .failure(Message(text: "must be 1…256 characters")) }
            return .success(.string(text))
        case .objectId:
            guard let id = ObjectId(text) else { return .failure(Message(text: "must be an id (24 hex digits)")) }
            return .success(.objectId(id))
        case .int:
            guard let i = Int64(text) else { return .failure(Message(text: "must be an integer")) }
            return .success(.int64(i))
        case .bool:
            switch text {
            case "true": return .success(.bool(true))
            case "false": return .success(.bool(false))
            default: return .failure(Message(text: "must be true or false"))
            }
        case .oneOf(let values):
            guard values.contains(text) else { return .failure(Message(text: "must be one of \(values.joined(separator: ", "))")) }
            return .success(.string(text))
        case .owner:
            if text == "me", let caller { return .success(.objectId(caller.user)) }
            guard let id = ObjectId(text) else { return .failure(Message(text: "must be an id or `me`")) }
            return .success(.objectId(id))
        }
    }

    /// The MongoDB filter including the cursor, plus `extra` conditions the server adds
    /// (ownership).
    func mongoFilter(extra: BSONDocument = [:]) -> BSONDocument {
        var f = filter
        for (k, v) in extra { f[k] = v }
        if let after { f["_id"] = ["$lt": .objectId(after)] }
        return f
    }
}
