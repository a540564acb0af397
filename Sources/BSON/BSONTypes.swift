// The small BSON value types that have no Swift standard equivalent: binary with a subtype,
// timestamps, regular expressions, Decimal128 and the deprecated DBPointer / code-with-scope.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// BSON binary data: a subtype and the bytes.
///
/// `Data` encodes as binary subtype 0 through ``BSONEncoder``; wrap a `[UInt8]` in a `BSONBinary`
/// to store it as binary rather than as an array of integers.
public struct BSONBinary: Sendable, Hashable {
    /// The BSON binary subtype (bsonspec.org: 0 generic, 4 UUID, 0x80–0xFF user defined...).
    public struct Subtype: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public init(_ rawValue: UInt8) { self.rawValue = rawValue }

        public static let generic = Subtype(0x00)
        public static let function = Subtype(0x01)
        /// Deprecated: the payload starts with its own int32 length (kept as is).
        public static let binaryOld = Subtype(0x02)
        public static let uuidOld = Subtype(0x03)
        public static let uuid = Subtype(0x04)
        public static let md5 = Subtype(0x05)
        public static let encrypted = Subtype(0x06)
        public static let column = Subtype(0x07)
        public static let sensitive = Subtype(0x08)
        public static let userDefined = Subtype(0x80)

        public var description: String { "0x" + hexByte(rawValue) }
    }

    public var subtype: Subtype
    public var bytes: [UInt8]

    public init(subtype: Subtype = .generic, bytes: [UInt8]) {
        self.subtype = subtype
        self.bytes = bytes
    }

    public init(subtype: Subtype = .generic, data: Data) {
        self.init(subtype: subtype, bytes: [UInt8](data))
    }

    /// The bytes as `Data`.
    public var data: Data { Data(bytes) }
}

/// A BSON timestamp: MongoDB's internal logical clock (`operationTime`, `clusterTime`,
/// `startAtOperationTime`). `t` is seconds since the epoch, `i` an ordinal within the second.
/// Ordered by `(t, i)`.
public struct BSONTimestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var t: UInt32
    public var i: UInt32

    public init(t: UInt32, i: UInt32) {
        self.t = t
        self.i = i
    }

    /// The 64-bit wire value: `t` in the high half, `i` in the low half.
    public init(rawValue: UInt64) {
        t = UInt32(truncatingIfNeeded: rawValue >> 32)
        i = UInt32(truncatingIfNeeded: rawValue)
    }

    public var rawValue: UInt64 { UInt64(t) << 32 | UInt64(i) }

    public static func < (lhs: BSONTimestamp, rhs: BSONTimestamp) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "Timestamp(\(t), \(i))" }
}

/// A BSON regular expression: a pattern and its option letters (stored sorted, as the spec asks
/// of writers; given options are sorted on init).
public struct BSONRegex: Sendable, Hashable {
    public var pattern: String
    public var options: String

    public init(pattern: String, options: String = "") {
        self.pattern = pattern
        self.options = String(options.sorted())
    }

    /// Exactly as read from bytes, without re-sorting the options (keeps round trips exact).
    init(raw pattern: String, options: String) {
        self.pattern = pattern
        self.options = options
    }
}

/// A BSON Decimal128 (IEEE 754-2008 decimal, BID encoding), carried as its 16 raw bytes
/// (little-endian, as on the wire). ``description`` renders it per the BSON spec.
public struct BSONDecimal128: Sendable, Hashable, CustomStringConvertible {
    /// 16 bytes, little-endian (low 64 bits first).
    public let bytes: [UInt8]

    /// The value from its 16 wire bytes; nil for any other count.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// The value from its high and low 64-bit halves.
    public init(high: UInt64, low: UInt64) {
        var b = [UInt8]()
        b.reserveCapacity(16)
        for shift in stride(from: 0, to: 64, by: 8) { b.append(UInt8(truncatingIfNeeded: low >> UInt64(shift))) }
        for shift in stride(from: 0, to: 64, by: 8) { b.append(UInt8(truncatingIfNeeded: high >> UInt64(shift))) }
        bytes = b
    }

    public var low: UInt64 { bytes[0..<8].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    public var high: UInt64 { bytes[8..<16].reversed().reduce(0) { $0 << 8 | UInt64($1) } }

    /// The string form from the BSON Decimal128 specification ("1.23", "-0", "1.0E+3", "NaN").
    public var description: String {
        let high = self.high, low = self.low
        let negative = high >> 63 == 1
        let combination = (high >> 58) & 0x1F
        let biasedExponent: UInt64
        var coefficient: UInt128
        if combination >> 3 == 3 {
            if combination == 0x1E { return negative ? "-Infinity" : "Infinity" }
            if combination == 0x1F { return "NaN" }
            // The implied coefficient is larger than the maximum: a non-canonical zero.
            biasedExponent = (high >> 47) & 0x3FFF
            coefficient = 0
        } else {
            biasedExponent = (high >> 49) & 0x3FFF
            coefficient = UInt128((high >> 46) & 0x7) << 110 | UInt128(high & 0x3FFF_FFFF_FFFF) << 64 | UInt128(low)
            if coefficient > UInt128("9999999999999999999999999999999999")! { coefficient = 0 }
        }
        let exponent = Int(biasedExponent) - 6176
        let digits = Array(String(coefficient))
        let scientificExponent = exponent + digits.count - 1
        var out = negative ? "-" : ""
        if exponent > 0 || scientificExponent < -6 {
            out.append(digits[0])
            if digits.count > 1 {
                out.append(".")
                out.append(contentsOf: digits[1...])
            }
            out.append("E")
            if scientificExponent >= 0 { out.append("+") }
            out.append(String(scientificExponent))
        } else if exponent == 0 {
            out.append(contentsOf: digits)
        } else {
            let radix = digits.count + exponent  // digits before the point
            if radix > 0 {
                out.append(contentsOf: digits[0..<radix])
                out.append(".")
                out.append(contentsOf: digits[radix...])
            } else {
                out.append("0.")
                out.append(String(repeating: "0", count: -radix))
                out.append(contentsOf: digits)
            }
        }
        return out
    }
}

/// The deprecated BSON DBPointer: a namespace and an ObjectId (pass-through only).
public struct BSONDBPointer: Sendable, Hashable {
    public var ref: String
    public var id: ObjectId
    public init(ref: String, id: ObjectId) {
        self.ref = ref
        self.id = id
    }
}

/// The deprecated BSON JavaScript code with scope (pass-through only).
public struct BSONCodeWithScope: Sendable, Hashable {
    public var code: String
    public var scope: BSONDocument
    public init(code: String, scope: BSONDocument) {
        self.code = code
        self.scope = scope
    }
}

func hexByte(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef".utf8)
    return String(decoding: [digits[Int(b >> 4)], digits[Int(b & 0x0F)]], as: UTF8.self)
}
