// A validator for the subset of JSON Schema (draft 2020-12) that `talus-tool.schema.json` uses.
// A schema using any other keyword is refused when it is loaded, so the shipped schema cannot
// silently ask for something this validator ignores; a test checks that the Python reference
// implementation (`jsonschema`) gives the same verdicts on the same manifests.

/// One way an instance does not satisfy a schema.
public struct SchemaViolation: Sendable, Equatable, CustomStringConvertible {
    /// Where in the instance: `params[0].type`, or `(top level)`.
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

/// A schema refused at load time (an unsupported keyword, a bad `$ref`).
public struct SchemaLoadError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// A loaded JSON Schema.
public struct JSONSchema: Sendable {
    public let root: JSONValue

    /// Keywords this validator applies.
    static let assertions: Set<String> = [
        "type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
        "uniqueItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "allOf", "anyOf", "not", "if", "then",
        "else", "$ref",
    ]
    /// Keywords that only annotate.
    static let annotations: Set<String> = ["$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"]

    /// Loads `root`, refusing keywords outside the supported subset and `$ref`s that do not resolve.
    public init(_ root: JSONValue) throws {
        self.root = root
        try check(root, at: "#")
    }

    /// Parses and loads schema text.
    public init(text: String) throws {
        try self.init(JSONValue.parse(Array(text.utf8)))
    }

    private func check(_ schema: JSONValue, at location: String) throws {
        switch schema {
        case .bool: return
        case .object(let members):
            for (key, value) in members {
                guard Self.assertions.contains(key) || Self.annotations.contains(key) else {
                    throw SchemaLoadError(description: "\(location): keyword \"\(key)\" is not supported by the Talus validator")
                }
                switch key {
                case "properties", "$defs":
                    guard case .object(let subs) = value else { throw SchemaLoadError(description: "\(location)/\(key) must be an object") }
                    for (name, sub) in subs { try check(sub, at: "\(location)/\(key)/\(name)") }
                case "items", "additionalProperties", "not", "if", "then", "else":
                    try check(value, at: "\(location)/\(key)")
                case "allOf", "anyOf":
                    guard case .array(let subs) = value else { throw SchemaLoadError(description: "\(location)/\(key) must be an array") }
                    for (n, sub) in subs.enumerated() { try check(sub, at: "\(location)/\(key)/\(n)") }
                case "$ref":
                    guard case .string(let ref) = value, resolve(ref) != nil else {
                        throw SchemaLoadError(description: "\(location): $ref \(value.text) does not resolve (only #/$defs/<name> is supported)")
                    }
                case "pattern":
                    guard case .string(let p) = value, (try? Regex(p)) != nil else {
                        throw SchemaLoadError(description: "\(location): pattern \(value.text) is not a valid regular expression")
                    }
                default: break
                }
            }
        default:
            throw SchemaLoadError(description: "\(location): a schema must be an object or a boolean")
        }
    }

    private func resolve(_ ref: String) -> JSONValue? {
        guard ref.hasPrefix("#/$defs/") else { return nil }
        return root["$defs"]?[String(ref.dropFirst("#/$defs/".count))]
    }

    /// Every violation of the schema by `instance` (empty when valid).
    public func validate(_ instance: JSONValue) -> [SchemaViolation] {
        var out: [SchemaViolation] = []
        validate(instance, against: root, path: [], into: &out)
        return out
    }

    /// True when `instance` satisfies `schema` (no messages collected).
    private func satisfies(_ instance: JSONValue, _ schema: JSONValue, path: [PathItem]) -> Bool {
        var scratch: [SchemaViolation] = []
        validate(instance, against: schema, path: path, into: &scratch)
        return scratch.isEmpty
    }

    enum PathItem { case key(String), index(Int) }

    static func render(_ path: [PathItem]) -> String {
        if path.isEmpty { return "(top level)" }
        var out = ""
        for item in path {
            switch item {
            case .index(let n): out += "[\(n)]"
            case .key(let k):
                let simple = !k.isEmpty && k.unicodeScalars.allSatisfy {
                    ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" || $0 == "$"
                }
                out += simple ? (out.isEmpty ? k : "." + k) : "[\(JSONValue.quote(k))]"
            }
        }
        return out
    }

    private func validate(_ x: JSONValue, against schema: JSONValue, path: [PathItem], into out: inout [SchemaViolation]) {
        func fail(_ message: String, at p: [PathItem]? = nil) {
            out.append(SchemaViolation(path: Self.render(p ?? path), message: message))
        }
        switch schema {
        case .bool(let b):
            if !b { fail("is not allowed here") }
            return
        case .object: break
        default: return
        }
        let hint = schema["description"].flatMap { if case .string(let s) = $0 { " (\(s))" } else { nil } } ?? ""

        if case .string(let ref) = schema["$ref"], let target = resolve(ref) {
            validate(x, against: target, path: path, into: &out)
        }
        if let t = schema["type"] {
            let allowed: [String]
            switch t {
            case .string(let s): allowed = [s]
            case .array(let a): allowed = a.compactMap { if case .string(let s) = $0 { s } else { nil } }
            default: allowed = []
            }
            let actual = x.schemaType
            let ok = allowed.contains(actual) || (actual == "integer" && allowed.contains("number"))
            if !ok {
                fail("must be \(allowed.map(Self.article).joined(separator: " or ")), not \(Self.article(actual)) (\(x.text.prefix(60)))")
                return   // the other keywords would only repeat the problem
            }
        }
        if case .array(let options) = schema["enum"], !options.contains(x) {
            fail("\(x.text.prefix(60)) is not one of \(options.map(\.text).joined(separator: ", "))")
        }
        if let c = schema["const"], c != x {
            fail("must be \(c.text)")
        }
        switch x {
        case .object(let members):
            let props: [(key: String, value: JSONValue)]
            if case .object(let p) = schema["properties"] { props = p } else { props = [] }
            if case .array(let required) = schema["required"] {
                for case .string(let name) in required where !members.contains(where: { $0.key == name }) {
                    fail("missing required key \"\(name)\"")
                }
            }
            for (key, value) in members {
                if let sub = props.first(where: { $0.key == key })?.value {
                    validate(value, against: sub, path: path + [.key(key)], into: &out)
                } else if let extra = schema["additionalProperties"] {
                    if case .bool(false) = extra {
                        fail("unknown key \"\(key)\" (allowed: \(props.map(\.key).joined(separator: ", ")))", at: path + [.key(key)])
                    } else {
                        validate(value, against: extra, path: path + [.key(key)], into: &out)
                    }
                }
            }
        case .array(let items):
            if let sub = schema["items"] {
                for (n, item) in items.enumerated() { validate(item, against: sub, path: path + [.index(n)], into: &out) }
            }
            if let m = schema["minItems"]?.numberValue, Double(items.count) < m { fail("must have at least \(Int(m)) items") }
            if let m = schema["maxItems"]?.numberValue, Double(items.count) > m { fail("must have at most \(Int(m)) items") }
            if case .bool(true) = schema["uniqueItems"] {
                for (n, item) in items.enumerated() where items[..<n].contains(item) {
                    fail("\(item.text.prefix(60)) appears more than once", at: path + [.index(n)])
                }
            }
        case .string(let s):
            let length = s.unicodeScalars.count
            if let m = schema["minLength"]?.numberValue, Double(length) < m {
                fail(m == 1 ? "must not be empty" : "must be at least \(Int(m)) characters long")
            }
            if let m = schema["maxLength"]?.numberValue, Double(length) > m { fail("must be at most \(Int(m)) characters long") }
            if case .string(let p) = schema["pattern"], let regex = try? Regex(p), (try? regex.firstMatch(in: s)) == nil {
                fail("\(x.text.prefix(60)) does not match \(p)\(hint)")
            }
        case .integer, .number:
            let d = x.numberValue!
            if let m = schema["minimum"]?.numberValue, d < m { fail("must be at least \(m.rounded() == m ? String(Int64(m)) : String(m)) (got \(x.text))") }
            if let m = schema["maximum"]?.numberValue, d > m { fail("must be at most \(m.rounded() == m ? String(Int64(m)) : String(m)) (got \(x.text))") }
        default: break
        }
        if case .array(let subs) = schema["allOf"] {
            for sub in subs { validate(x, against: sub, path: path, into: &out) }
        }
        if case .array(let subs) = schema["anyOf"], !subs.contains(where: { satisfies(x, $0, path: path) }) {
            fail("does not match any of the allowed forms\(hint)")
        }
        if let sub = schema["not"], satisfies(x, sub, path: path) {
            fail("is not allowed here\(hint)")
        }
        if let condition = schema["if"] {
            if satisfies(x, condition, path: path) {
                if let then = schema["then"] { validate(x, against: then, path: path, into: &out) }
            } else if let otherwise = schema["else"] {
                validate(x, against: otherwise, path: path, into: &out)
            }
        }
    }

    static func article(_ type: String) -> String {
        switch type {
        case "integer": "an integer"
        case "object": "an object"
        case "array": "an array"
        case "null": "null"
        default: "a \(type)"
        }
    }
}
