// The Swift types that BSONEncoder / BSONDecoder map straight to a BSON value (scalars, ObjectId,
// Date, Data, UUID and the BSON types themselves), and the Codable form of the BSON types for
// every other coder (Extended JSON objects, e.g. through JSONEncoder in the REST API).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A type with a direct BSON representation. The one place that says how Swift scalars map to
/// BSON types and which BSON values decode into them.
///
/// Integers: `Int`, `Int64`, `UInt32`, `UInt64` and `UInt` encode as int64 (an unsigned value
/// above `Int64.max` cannot be encoded); `Int8`, `Int16`, `Int32`, `UInt8` and `UInt16` as int32.
/// Every integer type decodes from int32, int64 and a double that holds an integer exactly, when
/// the value fits.
protocol BSONPrimitive {
    /// The BSON value; throws when the value has none (an unsigned integer above `Int64.max`).
    func bsonValue() throws -> BSONValue
    /// The value from BSON; nil when `value` has another type or does not fit.
    init?(bsonValue value: BSONValue)
}

extension BSONPrimitive {
    static var expectation: String { "\(Self.self)" }
}

extension FixedWidthInteger {
    /// The integer from int32, int64 or an integral double, when it fits.
    init?(bsonInteger value: BSONValue) {
        switch value {
        case .int32(let v): self.init(exactly: v)
        case .int64(let v): self.init(exactly: v)
        case .double(let v): self.init(exactly: v)
        default: return nil
        }
    }
}

extension Int: BSONPrimitive {
    func bsonValue() -> BSONValue { .int64(Int64(self)) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension Int64: BSONPrimitive {
    func bsonValue() -> BSONValue { .int64(self) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension Int32: BSONPrimitive {
    func bsonValue() -> BSONValue { .int32(self) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension Int16: BSONPrimitive {
    func bsonValue() -> BSONValue { .int32(Int32(self)) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension Int8: BSONPrimitive {
    func bsonValue() -> BSONValue { .int32(Int32(self)) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension UInt8: BSONPrimitive {
    func bsonValue() -> BSONValue { .int32(Int32(self)) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension UInt16: BSONPrimitive {
    func bsonValue() -> BSONValue { .int32(Int32(self)) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension UInt32: BSONPrimitive {
    func bsonValue() -> BSONValue { .int64(Int64(self)) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

/// Unsigned integers that may exceed `Int64.max`.
private func unsignedBSONValue<U: FixedWidthInteger & UnsignedInteger>(_ v: U) throws -> BSONValue {
    guard let signed = Int64(exactly: v) else {
        throw BSONError(.unrepresentable, "\(U.self) \(v) exceeds Int64.max, the largest BSON integer")
    }
    return .int64(signed)
}

extension UInt64: BSONPrimitive {
    func bsonValue() throws -> BSONValue { try unsignedBSONValue(self) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension UInt: BSONPrimitive {
    func bsonValue() throws -> BSONValue { try unsignedBSONValue(self) }
    init?(bsonValue value: BSONValue) { self.init(bsonInteger: value) }
}

extension Double: BSONPrimitive {
    func bsonValue() -> BSONValue { .double(self) }
    init?(bsonValue value: BSONValue) {
        guard let d = value.doubleValue else { return nil }
        self = d
    }
}

extension Float: BSONPrimitive {
    func bsonValue() -> BSONValue { .double(Double(self)) }
    init?(bsonValue value: BSONValue) {
        guard let d = value.doubleValue else { return nil }
        let f = Float(d)
        guard f.isFinite || !d.isFinite else { return nil }
        self = f
    }
}

extension Bool: BSONPrimitive {
    func bsonValue() -> BSONValue { .bool(self) }
    init?(bsonValue value: BSONValue) {
        guard case .bool(let b) = value else { return nil }
        self = b
    }
}

extension String: BSONPrimitive {
    func bsonValue() -> BSONValue { .string(self) }
    init?(bsonValue value: BSONValue) {
        switch value {
        case .string(let s), .symbol(let s): self = s
        default: return nil
        }
    }
}

extension Date: BSONPrimitive {
    func bsonValue() -> BSONValue { .datetime(self) }
    init?(bsonValue value: BSONValue) {
        guard case .datetime(let d) = value else { return nil }
        self = d
    }
}

extension Data: BSONPrimitive {
    func bsonValue() -> BSONValue { .binary(BSONBinary(subtype: .generic, data: self)) }
    init?(bsonValue value: BSONValue) {
        guard case .binary(let b) = value else { return nil }
        self = Data(b.bytes)
    }
}

extension UUID: BSONPrimitive {
    func bsonValue() -> BSONValue {
        .binary(BSONBinary(subtype: .uuid, bytes: withUnsafeBytes(of: uuid) { Array($0) }))
    }
    init?(bsonValue value: BSONValue) {
        guard case .binary(let b) = value, b.subtype == .uuid || b.subtype == .uuidOld, b.bytes.count == 16
        else { return nil }
        let u = b.bytes
        self.init(uuid: (u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]))
    }
}

extension ObjectId: BSONPrimitive {
    func bsonValue() -> BSONValue { .objectId(self) }
    init?(bsonValue value: BSONValue) {
        guard case .objectId(let id) = value else { return nil }
        self = id
    }
}

extension BSONValue: BSONPrimitive {
    func bsonValue() -> BSONValue { self }
    init?(bsonValue value: BSONValue) { self = value }
}

extension BSONDocument: BSONPrimitive {
    func bsonValue() -> BSONValue { .document(self) }
    init?(bsonValue value: BSONValue) {
        guard case .document(let d) = value else { return nil }
        self = d
    }
}

extension BSONBinary: BSONPrimitive {
    func bsonValue() -> BSONValue { .binary(self) }
    init?(bsonValue value: BSONValue) {
        guard case .binary(let b) = value else { return nil }
        self = b
    }
}

extension BSONTimestamp: BSONPrimitive {
    func bsonValue() -> BSONValue { .timestamp(self) }
    init?(bsonValue value: BSONValue) {
        guard case .timestamp(let t) = value else { return nil }
        self = t
    }
}

extension BSONRegex: BSONPrimitive {
    func bsonValue() -> BSONValue { .regex(self) }
    init?(bsonValue value: BSONValue) {
        guard case .regex(let r) = value else { return nil }
        self = r
    }
}

extension BSONDecimal128: BSONPrimitive {
    func bsonValue() -> BSONValue { .decimal128(self) }
    init?(bsonValue value: BSONValue) {
        guard case .decimal128(let d) = value else { return nil }
        self = d
    }
}

// MARK: - Codable for the BSON types

extension BSONPrimitive {
    /// Encodes through a BSON encoder directly, through any other encoder as Extended JSON.
    func encodeBSONOrExtendedJSON(to encoder: any Encoder) throws {
        let value = try bsonValue()
        if let bson = encoder as? _BSONEncoderImpl {
            bson.storage = .value(value)
        } else {
            try ExtendedJSON.node(value, mode: .relaxed).encode(to: encoder)
        }
    }

    /// Decodes from a BSON decoder directly, from any other decoder as (Extended) JSON.
    init(bsonOrExtendedJSONFrom decoder: any Decoder) throws {
        let value: BSONValue
        if let bson = decoder as? _BSONDecoderImpl {
            value = bson.value
        } else {
            value = ExtendedJSON.value(try ExtendedJSON.Node(from: decoder))
        }
        guard let v = Self(bsonValue: value) else {
            throw DecodingError.typeMismatch(
                Self.self, .init(codingPath: decoder.codingPath, debugDescription: "expected \(Self.expectation), found \(value.typeName)"))
        }
        self = v
    }
}

extension BSONValue: Codable {
    /// Through ``BSONEncoder`` the value itself; through other encoders relaxed Extended JSON
    /// (plain JSON for strings, numbers, booleans, null, documents and arrays).
    public func encode(to encoder: any Encoder) throws { try encodeBSONOrExtendedJSON(to: encoder) }
    /// Through ``BSONDecoder`` the value itself; from other decoders JSON values, where integers
    /// become int64 and Extended JSON wrappers (`{"$oid": ...}`, `{"$date": ...}`...) their types.
    public init(from decoder: any Decoder) throws { try self.init(bsonOrExtendedJSONFrom: decoder) }
}

extension BSONDocument: Codable {
    public func encode(to encoder: any Encoder) throws { try encodeBSONOrExtendedJSON(to: encoder) }
    public init(from decoder: any Decoder) throws { try self.init(bsonOrExtendedJSONFrom: decoder) }
}

extension BSONBinary: Codable {
    public func encode(to encoder: any Encoder) throws { try encodeBSONOrExtendedJSON(to: encoder) }
    public init(from decoder: any Decoder) throws { try self.init(bsonOrExtendedJSONFrom: decoder) }
}

extension BSONTimestamp: Codable {
    public func encode(to encoder: any Encoder) throws { try encodeBSONOrExtendedJSON(to: encoder) }
    public init(from decoder: any Decoder) throws { try self.init(bsonOrExtendedJSONFrom: decoder) }
}

extension BSONRegex: Codable {
    public func encode(to encoder: any Encoder) throws { try encodeBSONOrExtendedJSON(to: encoder) }
    public init(from decoder: any Decoder) throws { try self.init(bsonOrExtendedJSONFrom: decoder) }
}

extension BSONDecimal128: Codable {
    public func encode(to encoder: any Encoder) throws { try encodeBSONOrExtendedJSON(to: encoder) }
    public init(from decoder: any Decoder) throws { try self.init(bsonOrExtendedJSONFrom: decoder) }
}

extension BSONValue {
    /// The BSON type's name, for error messages ("int32", "document"...).
    public var typeName: String {
        switch self {
        case .double: "double"
        case .string: "string"
        case .document: "document"
        case .array: "array"
        case .binary: "binary"
        case .undefined: "undefined"
        case .objectId: "objectId"
        case .bool: "bool"
        case .datetime: "datetime"
        case .null: "null"
        case .regex: "regex"
        case .dbPointer: "dbPointer"
        case .javascript: "javascript"
        case .symbol: "symbol"
        case .javascriptWithScope: "javascriptWithScope"
        case .int32: "int32"
        case .timestamp: "timestamp"
        case .int64: "int64"
        case .decimal128: "decimal128"
        case .minKey: "minKey"
        case .maxKey: "maxKey"
        }
    }
}
