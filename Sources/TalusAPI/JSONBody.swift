// Request bodies: JSON parsed into a plain tree, then read field by field against what the
// resource accepts. Every problem is collected (a 422 lists them all), unknown fields are
// problems, and free-form documents (tool params) may not carry MongoDB operators or dotted keys.

import BSON
import Foundation
import Hummingbird
import NIOCore
import NIOFoundationCompat
import TalusCode
import TalusModel

/// A request body as sent by a client: TalusCode's ``JSONValue`` (key order kept, duplicate keys
/// refused, integers exact), with the API's wording for its types.
extension JSONValue {
    /// The JSON type's name, for messages.
    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .integer: "an integer"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    /// An integer: written as one, or as an integral number below 2^53 (`5.0`); nil otherwise.
    var integerValue: Int64? {
        switch self {
        case .integer(let i): i
        case .number(let d) where d.rounded() == d && abs(d) < 9e15: Int64(d)
        default: nil
        }
    }

    /// Parses a request body; malformed JSON (duplicate keys included) is a 400 that says where.
    static func parse(_ buffer: ByteBuffer) throws -> JSONValue {
        do {
            return try JSONValue.parse(buffer.readableBytesView)
        } catch {
            throw APIProblem(.badRequest, title: "Malformed JSON", "the request body is not valid JSON (\(error))")
        }
    }
}

/// Problems found while reading one request; shared by nested readers.
final class ProblemList: @unchecked Sendable {
    // Used by one request handler at a time (never shared across tasks): no lock needed.
    private(set) var items: [FieldProblem] = []
    func add(_ field: String, _ problem: String) { items.append(FieldProblem(field: field, problem: problem)) }
    /// Throws a 422 listing every problem, if any.
    func check() throws { if !items.isEmpty { throw APIProblem.invalid(items) } }
}

/// Reads the fields of one JSON object. Each accessor marks its key as known; ``finish()``
/// reports every other key as unknown.
struct ObjectReader {
    let prefix: String
    let fields: [String: JSONValue]
    /// The keys in the order the client wrote them.
    let order: [String]
    let problems: ProblemList
    private var known: Set<String> = []

    init(_ value: JSONValue, problems: ProblemList = ProblemList(), prefix: String = "") throws {
        guard case .object(let members) = value else {
            problems.add(prefix.isEmpty ? "(body)" : prefix, "must be a JSON object, not \(value.typeName)")
            throw APIProblem.invalid(problems.items)
        }
        // The parser refuses duplicate keys, so the members make a dictionary.
        self.fields = Dictionary(members.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
        self.order = members.map(\.key)
        self.problems = problems
        self.prefix = prefix
    }

    /// Reads the body of `request` (at most `limit` bytes, else 413) as a JSON object.
    static func body(_ request: Request, limit: Int) async throws -> ObjectReader {
        let buffer: ByteBuffer
        if let length = request.headers[.contentLength].flatMap(Int.init), length > limit {
            throw APIProblem.tooLarge("JSON bodies are limited to \(limit) bytes (http.max_body)")
        }
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw APIProblem.tooLarge("JSON bodies are limited to \(limit) bytes (http.max_body)")
        }
        if let type = request.headers[.contentType], !type.lowercased().hasPrefix("application/json"),
           !type.lowercased().hasPrefix("application/merge-patch+json") {
            throw APIProblem(.unsupportedMediaType, "send JSON with Content-Type: application/json (got \(type))")
        }
        if buffer.readableBytes == 0 { throw APIProblem(.badRequest, title: "Malformed JSON", "the request body is empty; send a JSON object") }
        return try ObjectReader(JSONValue.parse(buffer))
    }

    func path(_ key: String) -> String { prefix.isEmpty ? key : prefix + "." + key }

    /// The raw value of `key` (null counts as absent), marking it known.
    mutating func raw(_ key: String) -> JSONValue? {
        known.insert(key)
        guard let v = fields[key], v != .null else { return nil }
        return v
    }

    func missing(_ key: String) { problems.add(path(key), "is required") }

    mutating func string(_ key: String, required: Bool = false, maxLength: Int = 4096, allowEmpty: Bool = false) -> String? {
        guard let v = raw(key) else { if required { missing(key) }; return nil }
        guard case .string(let s) = v else { problems.add(path(key), "must be a string, not \(v.typeName)"); return nil }
        if !allowEmpty && s.isEmpty { problems.add(path(key), "must not be empty"); return nil }
        if s.count > maxLength { problems.add(path(key), "must be at most \(maxLength) characters"); return nil }
        if s.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\n" && $0 != "\t" }) {
            problems.add(path(key), "must not contain control characters"); return nil
        }
        return s
    }

    /// A resource name: letters, digits, `.`, `_`, `-`, `@`, `+`; starts with a letter or digit;
    /// at most 100 characters; never 24 hex digits (that would read as an id).
    mutating func name(_ key: String = "name", required: Bool = true) -> String? {
        guard let s = string(key, required: required, maxLength: 100) else { return nil }
        if let problem = Validation.nameProblem(s) { problems.add(path(key), problem); return nil }
        return s
    }

    mutating func int(_ key: String, required: Bool = false, range: ClosedRange<Int>? = nil) -> Int? {
        guard let v = raw(key) else { if required { missing(key) }; return nil }
        guard let x = v.integerValue, let i = Int(exactly: x) else {
            problems.add(path(key), "must be an integer, not \(v.typeName)"); return nil
        }
        if let range, !range.contains(i) {
            problems.add(path(key), "must be between \(range.lowerBound) and \(range.upperBound) (got \(i))"); return nil
        }
        return i
    }

    mutating func int64(_ key: String, required: Bool = false, min: Int64 = 0) -> Int64? {
        guard let v = raw(key) else { if required { missing(key) }; return nil }
        guard let x = v.integerValue else { problems.add(path(key), "must be an integer, not \(v.typeName)"); return nil }
        if x < min { problems.add(path(key), "must be at least \(min) (got \(x))"); return nil }
        return x
    }

    mutating func bool(_ key: String, required: Bool = false) -> Bool? {
        guard let v = raw(key) else { if required { missing(key) }; return nil }
        guard case .bool(let b) = v else { problems.add(path(key), "must be true or false, not \(v.typeName)"); return nil }
        return b
    }

    mutating func objectId(_ key: String, required: Bool = false) -> ObjectId? {
        guard let s = string(key, required: required, maxLength: 24) else { return nil }
        guard let id = ObjectId(s) else { problems.add(path(key), "must be an id (24 hex digits)"); return nil }
        return id
    }

    mutating func enumeration<E: RawRepresentable & CaseIterable>(_ key: String, _ type: E.Type, required: Bool = false) -> E?
    where E.RawValue == String {
        guard let s = string(key, required: required, maxLength: 64) else { return nil }
        guard let e = E(rawValue: s) else {
            problems.add(path(key), "must be one of \(E.allCases.map(\.rawValue).joined(separator: ", ")) (got \"\(s)\")")
            return nil
        }
        return e
    }

    /// Tags: at most 32 strings of 1…64 characters.
    mutating func tags(_ key: String = "tags") -> Tags? {
        guard let v = raw(key) else { return nil }
        guard case .array(let items) = v else { problems.add(path(key), "must be an array of strings"); return nil }
        if items.count > 32 { problems.add(path(key), "at most 32 tags"); return nil }
        var out: Tags = []
        for (i, item) in items.enumerated() {
            guard case .string(let s) = item, !s.isEmpty, s.count <= 64 else {
                problems.add(path(key) + "[\(i)]", "must be a string of 1…64 characters"); return nil
            }
            out.append(s)
        }
        return out
    }

    mutating func idList(_ key: String, required: Bool = false, max: Int = 10_000) -> [ObjectId]? {
        guard let v = raw(key) else { if required { missing(key) }; return nil }
        guard case .array(let items) = v else { problems.add(path(key), "must be an array of ids"); return nil }
        if items.count > max { problems.add(path(key), "at most \(max) entries"); return nil }
        var out: [ObjectId] = []
        for (i, item) in items.enumerated() {
            guard case .string(let s) = item, let id = ObjectId(s) else {
                problems.add(path(key) + "[\(i)]", "must be an id (24 hex digits)"); return nil
            }
            out.append(id)
        }
        return out
    }

    mutating func object(_ key: String, required: Bool = false) -> ObjectReader? {
        guard let v = raw(key) else { if required { missing(key) }; return nil }
        guard case .object = v else { problems.add(path(key), "must be an object, not \(v.typeName)"); return nil }
        return try? ObjectReader(v, problems: problems, prefix: path(key))
    }

    /// A free-form document (tool params): any JSON object whose keys are not MongoDB operators.
    mutating func document(_ key: String, required: Bool = false) -> BSONDocument? {
        guard let v = raw(key) else { if required { missing(key) }; return nil }
        guard case .object = v else { problems.add(path(key), "must be an object, not \(v.typeName)"); return nil }
        if case .document(let d) = Validation.bson(v, at: path(key), problems: problems, depth: 0) { return d }
        return nil
    }

    /// Reports every key no accessor asked for.
    func finish() {
        for key in order where !known.contains(key) {
            problems.add(path(key), "unknown field (accepted: \(known.sorted().joined(separator: ", ")))")
        }
    }

    /// Finishes and throws a 422 when anything was wrong.
    func check() throws {
        finish()
        try problems.check()
    }
}

/// Checks shared by bodies and queries.
enum Validation {
    static func nameProblem(_ s: String) -> String? {
        func ok(_ c: Unicode.Scalar) -> Bool {
            ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || "._-@+".unicodeScalars.contains(c)
        }
        guard let first = s.unicodeScalars.first, s.unicodeScalars.count <= 100 else { return "must be 1…100 characters" }
        guard ok(first), first != ".", first != "-", first != "_", first != "@", first != "+", s.unicodeScalars.allSatisfy(ok) else {
            return "may contain only letters, digits and . _ - @ +, starting with a letter or digit (got \"\(s)\")"
        }
        if ObjectId(s) != nil { return "must not look like an id (24 hex digits)" }
        return nil
    }

    /// JSON → BSON for free-form documents. Keys must be non-empty, not start with `$` and not
    /// contain `.` or NUL, so nothing a client sends can act as a query or update operator.
    static func bson(_ value: JSONValue, at path: String, problems: ProblemList, depth: Int) -> BSONValue? {
        if depth > 32 { problems.add(path, "is nested too deeply (at most 32 levels)"); return nil }
        switch value {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .integer(let i): return .int64(i)
        case .number(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let a):
            var out: [BSONValue] = []
            for (i, item) in a.enumerated() {
                guard let v = bson(item, at: "\(path)[\(i)]", problems: problems, depth: depth + 1) else { return nil }
                out.append(v)
            }
            return .array(out)
        case .object(let members):
            // In the client's order (MongoDB documents are ordered; the parser refused duplicates).
            var doc = BSONDocument()
            for (key, value) in members {
                if key.isEmpty || key.hasPrefix("$") || key.contains(".") || key.contains("\0") {
                    problems.add("\(path).\(key)", "keys may not be empty, start with $ or contain a dot")
                    return nil
                }
                guard let v = bson(value, at: "\(path).\(key)", problems: problems, depth: depth + 1) else { return nil }
                doc[key] = v
            }
            return .document(doc)
        }
    }
}
