// MongoDB Extended JSON v2 (relaxed and canonical) for logs and debug output, and the JSON tree
// that BSONValue / BSONDocument use with non-BSON coders (JSONEncoder in the REST API).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Extended JSON rendering of BSON values.
public enum ExtendedJSON {
    /// Relaxed: numbers and ISO dates as plain JSON where possible (for people). Canonical: every
    /// type explicit (`{"$numberInt": "1"}`), lossless.
    public enum Mode: Sendable {
        case relaxed
        case canonical
    }

    /// A JSON value: what Extended JSON is made of.
    enum Node: Equatable {
        case null
        case bool(Bool)
        case int(Int64)
        case double(Double)
        case string(String)
        case array([Node])
        case object([(String, Node)])

        static func == (lhs: Node, rhs: Node) -> Bool {
            switch (lhs, rhs) {
            case (.null, .null): true
            case let (.bool(a), .bool(b)): a == b
            case let (.int(a), .int(b)): a == b
            case let (.double(a), .double(b)): a.bitPattern == b.bitPattern
            case let (.string(a), .string(b)): a == b
            case let (.array(a), .array(b)): a == b
            case let (.object(a), .object(b)): a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
            default: false
            }
        }
    }

    /// `value` as Extended JSON text.
    public static func render(_ value: BSONValue, mode: Mode) -> String {
        var out = ""
        write(node(value, mode: mode), into: &out)
        return out
    }

    // MARK: BSON -> JSON tree

    static func node(_ value: BSONValue, mode: Mode) -> Node {
        let canonical = mode == .canonical
        switch value {
        case .double(let v):
            if v.isFinite && !canonical { return .double(v) }
            return .object([("$numberDouble", .string(doubleString(v)))])
        case .string(let v): return .string(v)
        case .document(let d): return .object(d.map { ($0.key, node($0.value, mode: mode)) })
        case .array(let a): return .array(a.map { node($0, mode: mode) })
        case .binary(let b):
            return .object([("$binary", .object([
                ("base64", .string(Data(b.bytes).base64EncodedString())),
                ("subType", .string(hexByte(b.subtype.rawValue))),
            ]))])
        case .undefined: return .object([("$undefined", .bool(true))])
        case .objectId(let id): return .object([("$oid", .string(id.hex))])
        case .bool(let v): return .bool(v)
        case .datetime(let d):
            let ms = BSONDateConversion.milliseconds(d) ?? 0
            if !canonical, let iso = ISO8601Millis.format(ms) { return .object([("$date", .string(iso))]) }
            return .object([("$date", .object([("$numberLong", .string(String(ms)))]))])
        case .null: return .null
        case .regex(let r):
            return .object([("$regularExpression", .object([("pattern", .string(r.pattern)), ("options", .string(r.options))]))])
        case .dbPointer(let p):
            return .object([("$dbPointer", .object([("$ref", .string(p.ref)), ("$id", node(.objectId(p.id), mode: mode))]))])
        case .javascript(let c): return .object([("$code", .string(c))])
        case .symbol(let s): return .object([("$symbol", .string(s))])
        case .javascriptWithScope(let c):
            return .object([("$code", .string(c.code)), ("$scope", node(.document(c.scope), mode: mode))])
        case .int32(let v):
            return canonical ? .object([("$numberInt", .string(String(v)))]) : .int(Int64(v))
        case .timestamp(let t):
            return .object([("$timestamp", .object([("t", .int(Int64(t.t))), ("i", .int(Int64(t.i)))]))])
        case .int64(let v):
            return canonical ? .object([("$numberLong", .string(String(v)))]) : .int(v)
        case .decimal128(let d): return .object([("$numberDecimal", .string(d.description))])
        case .minKey: return .object([("$minKey", .int(1))])
        case .maxKey: return .object([("$maxKey", .int(1))])
        }
    }

    private static func doubleString(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v < 0 ? "-Infinity" : "Infinity" }
        return v.description
    }

    // MARK: JSON tree -> BSON (recognizes the Extended JSON wrappers)

    static func value(_ node: Node) -> BSONValue {
        switch node {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int64(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let a): return .array(a.map(value))
        case .object(let pairs):
            if let special = wrapper(pairs) { return special }
            var doc = BSONDocument()
            doc.reserveCapacity(pairs.count)
            for (k, v) in pairs { doc[k] = value(v) }
            return .document(doc)
        }
    }

    private static func wrapper(_ pairs: [(String, Node)]) -> BSONValue? {
        guard let first = pairs.first, first.0.hasPrefix("$") else { return nil }
        let fields = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        func string(_ n: Node?) -> String? { if case .string(let s)? = n { s } else { nil } }
        func object(_ n: Node?) -> [String: Node]? {
            if case .object(let p)? = n { Dictionary(p, uniquingKeysWith: { a, _ in a }) } else { nil }
        }
        func integer(_ n: Node?) -> Int64? {
            switch n {
            case .int(let i)?: i
            case .double(let d)?: Int64(exactly: d)
            default: nil
            }
        }
        if pairs.count == 2, let code = string(fields["$code"]), case .object? = fields["$scope"],
           case .document(let scope) = value(fields["$scope"]!) {
            return .javascriptWithScope(BSONCodeWithScope(code: code, scope: scope))
        }
        guard pairs.count == 1 else { return nil }
        let inner = first.1
        switch first.0 {
        case "$oid": return string(inner).flatMap { ObjectId($0) }.map { .objectId($0) }
        case "$numberLong": return string(inner).flatMap { Int64($0) }.map { .int64($0) }
        case "$numberInt": return string(inner).flatMap { Int32($0) }.map { .int32($0) }
        case "$numberDouble":
            switch string(inner) {
            case "NaN"?: return .double(.nan)
            case "Infinity"?: return .double(.infinity)
            case "-Infinity"?: return .double(-.infinity)
            case let s?: return Double(s).map { .double($0) }
            default: return nil
            }
        case "$date":
            if let s = string(inner) { return ISO8601Millis.parse(s).map { .datetime(BSONDateConversion.date($0)) } }
            if let ms = integer(inner) ?? string(object(inner)?["$numberLong"]).flatMap({ Int64($0) }) {
                return .datetime(BSONDateConversion.date(ms))
            }
            return nil
        case "$binary":
            guard let o = object(inner), let b64 = string(o["base64"]), let data = Data(base64Encoded: b64),
                  let st = string(o["subType"]), let sub = UInt8(st, radix: 16) else { return nil }
            return .binary(BSONBinary(subtype: .init(sub), data: data))
        case "$timestamp":
            guard let o = object(inner), let t = integer(o["t"]).flatMap({ UInt32(exactly: $0) }),
                  let i = integer(o["i"]).flatMap({ UInt32(exactly: $0) }) else { return nil }
            return .timestamp(BSONTimestamp(t: t, i: i))
        case "$regularExpression":
            guard let o = object(inner), let p = string(o["pattern"]), let opts = string(o["options"]) else { return nil }
            return .regex(BSONRegex(raw: p, options: opts))
        case "$minKey": return .minKey
        case "$maxKey": return .maxKey
        case "$undefined": return .undefined
        case "$symbol": return string(inner).map { .symbol($0) }
        case "$code": return string(inner).map { .javascript($0) }
        case "$dbPointer":
            guard let o = object(inner), let ref = string(o["$ref"]), let idNode = o["$id"],
                  case .objectId(let id) = value(idNode) else { return nil }
            return .dbPointer(BSONDBPointer(ref: ref, id: id))
        default: return nil
        }
    }

    // MARK: JSON text

    static func write(_ node: Node, into out: inout String) {
        switch node {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            // Keep a visible fraction or exponent so a double reads as one.
            let s = d.description
            out += s.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) ? s : s + ".0"
        case .string(let s): writeString(s, into: &out)
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += ", " }
                write(item, into: &out)
            }
            out += "]"
        case .object(let pairs):
            out += "{"
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out += ", " }
                writeString(k, into: &out)
                out += ": "
                write(v, into: &out)
            }
            out += "}"
        }
    }

    static func writeString(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u00" + hexByte(UInt8(scalar.value))
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

// MARK: - Codable through non-BSON coders

struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) {
        self.stringValue = String(intValue)
        self.intValue = intValue
    }
    init(_ s: String) { self.stringValue = s }
}

extension ExtendedJSON.Node: Codable {
    func encode(to encoder: any Encoder) throws {
        func single(_ value: (some Encodable)?) throws {
            var c = encoder.singleValueContainer()
            if let value { try c.encode(value) } else { try c.encodeNil() }
        }
        switch self {
        case .null: try single(String?.none)
        case .bool(let b): try single(b)
        case .int(let i): try single(i)
        case .double(let d): try single(d)
        case .string(let s): try single(s)
        case .array(let items):
            var c = encoder.unkeyedContainer()
            for item in items { try c.encode(item) }
        case .object(let pairs):
            var c = encoder.container(keyedBy: AnyCodingKey.self)
            for (k, v) in pairs { try c.encode(v, forKey: AnyCodingKey(k)) }
        }
    }

    init(from decoder: any Decoder) throws {
        if let c = try? decoder.singleValueContainer() {
            if c.decodeNil() { self = .null; return }
            if let b = try? c.decode(Bool.self) { self = .bool(b); return }
            if let i = try? c.decode(Int64.self) { self = .int(i); return }
            if let d = try? c.decode(Double.self) { self = .double(d); return }
            if let s = try? c.decode(String.self) { self = .string(s); return }
        }
        if let c = try? decoder.container(keyedBy: AnyCodingKey.self) {
            self = .object(try c.allKeys.map { ($0.stringValue, try c.decode(Self.self, forKey: $0)) })
            return
        }
        var c = try decoder.unkeyedContainer()
        var items: [Self] = []
        while !c.isAtEnd { items.append(try c.decode(Self.self)) }
        self = .array(items)
    }
}

// MARK: - ISO 8601 with milliseconds, UTC (no Foundation formatters needed)

enum ISO8601Millis {
    /// "1970-01-01T00:00:00.000Z" for years 1970...9999 (the relaxed Extended JSON range).
    static func format(_ ms: Int64) -> String? {
        let (days, msOfDay) = ms.quotientAndRemainder(dividingBy: 86_400_000)
        let (d, r) = msOfDay < 0 ? (days - 1, msOfDay + 86_400_000) : (days, msOfDay)
        let (y, m, day) = civil(fromDays: d)
        guard (1970...9999).contains(y) else { return nil }
        func pad(_ v: Int64, _ n: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, n - s.count)) + s
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(day, 2))T\(pad(r / 3_600_000, 2)):\(pad(r / 60_000 % 60, 2)):"
            + "\(pad(r / 1000 % 60, 2)).\(pad(r % 1000, 3))Z"
    }

    /// Parses "YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM|±HHMM)" to milliseconds since the epoch.
    static func parse(_ text: String) -> Int64? {
        let b = Array(text.utf8)
        var i = 0
        func number(_ n: Int) -> Int64? {
            guard i + n <= b.count else { return nil }
            var v: Int64 = 0
            for c in b[i..<(i + n)] {
                guard c >= 48 && c <= 57 else { return nil }
                v = v * 10 + Int64(c - 48)
            }
            i += n
            return v
        }
        func expect(_ c: Character) -> Bool {
            guard i < b.count, b[i] == c.asciiValue! else { return false }
            i += 1
            return true
        }
        guard let y = number(4), expect("-"), let mo = number(2), expect("-"), let d = number(2), expect("T"),
              let h = number(2), expect(":"), let mi = number(2), expect(":"), let s = number(2),
              (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 61 else { return nil }
        var ms: Int64 = 0
        if expect(".") {
            var digits = 0
            while i < b.count, b[i] >= 48, b[i] <= 57 {
                if digits < 3 { ms = ms * 10 + Int64(b[i] - 48) }
                digits += 1
                i += 1
            }
            guard digits > 0 else { return nil }
            for _ in digits..<max(digits, 3) { ms *= 10 }
        }
        var offset: Int64 = 0
        if !expect("Z") {
            guard i < b.count, b[i] == 43 || b[i] == 45 else { return nil }
            let sign: Int64 = b[i] == 45 ? -1 : 1
            i += 1
            guard let oh = number(2) else { return nil }
            _ = expect(":")
            guard let om = number(2) else { return nil }
            offset = sign * (oh * 60 + om) * 60_000
        }
        guard i == b.count else { return nil }
        let days = daysFromCivil(y, mo, d)
        return ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms - offset
    }

    // Howard Hinnant's civil calendar algorithms.
    static func daysFromCivil(_ y0: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? yoe + era * 400 + 1 : yoe + era * 400, m, d)
    }
}
