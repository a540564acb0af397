// BSONValue: one value of any BSON type (bsonspec.org 1.1), including the deprecated ones, which
// are carried through unchanged so that no server document is ever rejected.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A BSON value.
///
/// Equality is structural: the same BSON type and the same content (doubles compare by bit
/// pattern, so `NaN == NaN` and `0.0 != -0.0`). `1` as a literal is an ``int64(_:)``.
public enum BSONValue: Sendable, Hashable {
    case double(Double)
    case string(String)
    case document(BSONDocument)
    case array([BSONValue])
    case binary(BSONBinary)
    /// Deprecated BSON type 0x06 (pass-through).
    case undefined
    case objectId(ObjectId)
    case bool(Bool)
    /// A UTC datetime, stored as milliseconds since the Unix epoch. A `Date` with sub-millisecond
    /// precision is truncated (towards the past) when written; dates within ±30 000 years of 1970
    /// round-trip exactly.
    case datetime(Date)
    case null
    case regex(BSONRegex)
    /// Deprecated BSON type 0x0C (pass-through).
    case dbPointer(BSONDBPointer)
    case javascript(String)
    /// Deprecated BSON type 0x0E (pass-through).
    case symbol(String)
    /// Deprecated BSON type 0x0F (pass-through).
    case javascriptWithScope(BSONCodeWithScope)
    case int32(Int32)
    case timestamp(BSONTimestamp)
    case int64(Int64)
    case decimal128(BSONDecimal128)
    case minKey
    case maxKey

    /// The BSON element type byte of this value.
    public var typeByte: UInt8 {
        switch self {
        case .double: 0x01
        case .string: 0x02
        case .document: 0x03
        case .array: 0x04
        case .binary: 0x05
        case .undefined: 0x06
        case .objectId: 0x07
        case .bool: 0x08
        case .datetime: 0x09
        case .null: 0x0A
        case .regex: 0x0B
        case .dbPointer: 0x0C
        case .javascript: 0x0D
        case .symbol: 0x0E
        case .javascriptWithScope: 0x0F
        case .int32: 0x10
        case .timestamp: 0x11
        case .int64: 0x12
        case .decimal128: 0x13
        case .minKey: 0xFF
        case .maxKey: 0x7F
        }
    }

    public static func == (lhs: BSONValue, rhs: BSONValue) -> Bool {
        switch (lhs, rhs) {
        case let (.double(a), .double(b)): a.bitPattern == b.bitPattern
        case let (.string(a), .string(b)): a == b
        case let (.document(a), .document(b)): a == b
        case let (.array(a), .array(b)): a == b
        case let (.binary(a), .binary(b)): a == b
        case (.undefined, .undefined), (.null, .null), (.minKey, .minKey), (.maxKey, .maxKey): true
        case let (.objectId(a), .objectId(b)): a == b
        case let (.bool(a), .bool(b)): a == b
        case let (.datetime(a), .datetime(b)): a == b
        case let (.regex(a), .regex(b)): a == b
        case let (.dbPointer(a), .dbPointer(b)): a == b
        case let (.javascript(a), .javascript(b)): a == b
        case let (.symbol(a), .symbol(b)): a == b
        case let (.javascriptWithScope(a), .javascriptWithScope(b)): a == b
        case let (.int32(a), .int32(b)): a == b
        case let (.timestamp(a), .timestamp(b)): a == b
        case let (.int64(a), .int64(b)): a == b
        case let (.decimal128(a), .decimal128(b)): a == b
        default: false
        }
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(typeByte)
        switch self {
        case .double(let v): hasher.combine(v.bitPattern)
        case .string(let v), .javascript(let v), .symbol(let v): hasher.combine(v)
        case .document(let v): hasher.combine(v)
        case .array(let v): hasher.combine(v)
        case .binary(let v): hasher.combine(v)
        case .undefined, .null, .minKey, .maxKey: break
        case .objectId(let v): hasher.combine(v)
        case .bool(let v): hasher.combine(v)
        case .datetime(let v): hasher.combine(v)
        case .regex(let v): hasher.combine(v)
        case .dbPointer(let v): hasher.combine(v)
        case .javascriptWithScope(let v): hasher.combine(v)
        case .int32(let v): hasher.combine(v)
        case .timestamp(let v): hasher.combine(v)
        case .int64(let v): hasher.combine(v)
        case .decimal128(let v): hasher.combine(v)
        }
    }
}

// MARK: - Accessors

extension BSONValue {
    /// The string of a `.string`; nil otherwise.
    public var stringValue: String? {
        if case .string(let v) = self { return v }
        return nil
    }

    /// The document of a `.document`; nil otherwise.
    public var documentValue: BSONDocument? {
        if case .document(let v) = self { return v }
        return nil
    }

    /// The elements of an `.array`; nil otherwise.
    public var arrayValue: [BSONValue]? {
        if case .array(let v) = self { return v }
        return nil
    }

    /// The value of a `.bool`; nil otherwise.
    public var boolValue: Bool? {
        if case .bool(let v) = self { return v }
        return nil
    }

    /// The id of an `.objectId`; nil otherwise.
    public var objectIdValue: ObjectId? {
        if case .objectId(let v) = self { return v }
        return nil
    }

    /// The date of a `.datetime`; nil otherwise.
    public var dateValue: Date? {
        if case .datetime(let v) = self { return v }
        return nil
    }

    /// The timestamp of a `.timestamp`; nil otherwise.
    public var timestampValue: BSONTimestamp? {
        if case .timestamp(let v) = self { return v }
        return nil
    }

    /// The binary of a `.binary`; nil otherwise.
    public var binaryValue: BSONBinary? {
        if case .binary(let v) = self { return v }
        return nil
    }

    /// An integer from `.int32`, `.int64` or a `.double` that holds an integer exactly; nil
    /// otherwise (also when it does not fit `Int`).
    public var intValue: Int? { int64Value.flatMap { Int(exactly: $0) } }

    /// An `Int64` from `.int32`, `.int64` or a `.double` that holds an integer exactly.
    public var int64Value: Int64? {
        switch self {
        case .int32(let v): Int64(v)
        case .int64(let v): v
        case .double(let v): Int64(exactly: v)
        default: nil
        }
    }

    /// A `Double` from any numeric value except Decimal128 (an `Int64` may round).
    public var doubleValue: Double? {
        switch self {
        case .double(let v): v
        case .int32(let v): Double(v)
        case .int64(let v): Double(v)
        default: nil
        }
    }

    /// True for `.null` and `.undefined`.
    public var isNull: Bool {
        switch self {
        case .null, .undefined: true
        default: false
        }
    }

    /// The value at `key` when this is a document; nil otherwise.
    public subscript(key: String) -> BSONValue? {
        documentValue?[key]
    }
}

// MARK: - Literals

extension BSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    /// Integer literals are `int64` (the same rule as `Int` in ``BSONEncoder``).
    public init(integerLiteral value: Int64) { self = .int64(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: BSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, BSONValue)...) {
        var doc = BSONDocument()
        for (k, v) in elements { doc[k] = v }
        self = .document(doc)
    }
    public init(nilLiteral: ()) { self = .null }
}

// MARK: - Conversions from Swift values

extension BSONValue {
    public init(_ value: String) { self = .string(value) }
    public init(_ value: Int) { self = .int64(Int64(value)) }
    public init(_ value: Int32) { self = .int32(value) }
    public init(_ value: Int64) { self = .int64(value) }
    public init(_ value: Double) { self = .double(value) }
    public init(_ value: Bool) { self = .bool(value) }
    public init(_ value: Date) { self = .datetime(value) }
    public init(_ value: ObjectId) { self = .objectId(value) }
    public init(_ value: BSONDocument) { self = .document(value) }
    public init(_ value: [BSONValue]) { self = .array(value) }
    public init(_ value: BSONTimestamp) { self = .timestamp(value) }
    public init(_ value: BSONBinary) { self = .binary(value) }

    /// Binary data with a subtype: `.binary(subtype: .uuid, bytes: ...)`.
    public static func binary(subtype: BSONBinary.Subtype, bytes: [UInt8]) -> BSONValue {
        .binary(BSONBinary(subtype: subtype, bytes: bytes))
    }
}

extension BSONValue: CustomStringConvertible {
    /// Relaxed Extended JSON.
    public var description: String { ExtendedJSON.render(self, mode: .relaxed) }
}
