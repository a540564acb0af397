// Exact BSON binary serialization (bsonspec.org 1.1): a validating reader that throws on any
// malformed input (never traps) and a writer.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An error reading or writing BSON bytes.
public struct BSONError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The input ends before the structure it announces.
        case truncated
        /// A length, terminator, type byte or nested structure is wrong.
        case malformed
        /// A string or key is not valid UTF-8.
        case invalidUTF8
        /// Nesting deeper than ``BSONReader/maxDepth``.
        case tooDeep
        /// A value that BSON cannot represent (a key with a NUL byte, a date out of range...).
        case unrepresentable
    }

    public let kind: Kind
    public let message: String
    /// The byte offset in the input where reading failed (nil when writing).
    public let offset: Int?

    public init(_ kind: Kind, _ message: String, offset: Int? = nil) {
        self.kind = kind
        self.message = message
        self.offset = offset
    }

    public var description: String {
        offset.map { "BSON \(kind) at byte \($0): \(message)" } ?? "BSON \(kind): \(message)"
    }
}

/// Millisecond conversions for BSON datetimes. A date that is a whole number of milliseconds (up
/// to floating-point noise) maps to exactly that number; finer dates are truncated towards the past.
enum BSONDateConversion {
    static func milliseconds(_ date: Date) -> Int64? {
        let ms = date.timeIntervalSince1970 * 1000
        guard ms.isFinite else { return nil }
        let nearest = ms.rounded()
        return Int64(exactly: abs(ms - nearest) < 1e-3 ? nearest : ms.rounded(.down))
    }

    static func date(_ milliseconds: Int64) -> Date {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000)
    }
}

// MARK: - Reader

/// Reads and validates BSON from raw memory.
struct BSONReader {
    /// The deepest nesting of documents and arrays accepted.
    static let maxDepth = 256

    let buf: UnsafeRawBufferPointer
    var pos = 0

    /// The document spanning exactly `buf`.
    static func document(_ buf: UnsafeRawBufferPointer) throws -> BSONDocument {
        var reader = BSONReader(buf: buf)
        let doc = try reader.document(limit: buf.count, depth: 0)
        guard reader.pos == buf.count else {
            throw BSONError(.malformed, "\(buf.count - reader.pos) bytes after the document", offset: reader.pos)
        }
        return doc
    }

    private func fail(_ kind: BSONError.Kind, _ message: String) -> BSONError {
        BSONError(kind, message, offset: pos)
    }

    private mutating func fixed<T: FixedWidthInteger>(_: T.Type, limit: Int) throws -> T {
        let size = MemoryLayout<T>.size
        guard limit - pos >= size else { throw fail(.truncated, "needs \(size) bytes for \(T.self)") }
        let v = buf.loadUnaligned(fromByteOffset: pos, as: T.self)
        pos += size
        return T(littleEndian: v)
    }

    private mutating func bytes(_ count: Int, limit: Int) throws -> [UInt8] {
        guard count >= 0, limit - pos >= count else { throw fail(.truncated, "needs \(count) bytes") }
        defer { pos += count }
        return [UInt8](UnsafeRawBufferPointer(rebasing: buf[pos..<(pos + count)]))
    }

    private func utf8(from start: Int, count: Int) throws -> String {
        let raw = UnsafeRawBufferPointer(rebasing: buf[start..<(start + count)])
        // Keys and most strings are ASCII: decoding is then exact and much cheaper than validating.
        if !raw.contains(where: { $0 >= 0x80 }) { return String(decoding: raw, as: UTF8.self) }
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw BSONError(.invalidUTF8, "invalid UTF-8", offset: start)
        }
        return s
    }

    private mutating func cstring(limit: Int) throws -> String {
        var end = pos
        while end < limit && buf[end] != 0 { end += 1 }
        guard end < limit else { throw fail(.truncated, "unterminated C string") }
        let s = try utf8(from: pos, count: end - pos)
        pos = end + 1
        return s
    }

    private mutating func string(limit: Int) throws -> String {
        let length = Int(try fixed(Int32.self, limit: limit))
        guard length >= 1 else { throw fail(.malformed, "string length \(length)") }
        guard limit - pos >= length else { throw fail(.truncated, "string of \(length) bytes") }
        guard buf[pos + length - 1] == 0 else { throw fail(.malformed, "string not NUL-terminated") }
        let s = try utf8(from: pos, count: length - 1)
        pos += length
        return s
    }

    /// Reads a length-prefixed document or array body, calling `element` for each element.
    private mutating func elements(
        limit: Int, depth: Int, _ element: (inout BSONReader, String, UInt8, Int) throws -> Void
    ) throws {
        guard depth < Self.maxDepth else { throw fail(.tooDeep, "nesting deeper than \(Self.maxDepth)") }
        let start = pos
        let length = Int(try fixed(Int32.self, limit: limit))
        guard length >= 5 else { throw BSONError(.malformed, "document length \(length)", offset: start) }
        guard limit - start >= length else {
            throw BSONError(.truncated, "document of \(length) bytes, \(limit - start) available", offset: start)
        }
        let end = start + length
        while true {
            guard pos < end else { throw fail(.truncated, "document without terminator") }
            let type = buf[pos]
            pos += 1
            if type == 0 {
                guard pos == end else { throw fail(.malformed, "terminator before the announced end") }
                return
            }
            let key = try cstring(limit: end - 1)
            try element(&self, key, type, end - 1)
        }
    }

    mutating func document(limit: Int, depth: Int) throws -> BSONDocument {
        var doc = BSONDocument()
        try elements(limit: limit, depth: depth) { reader, key, type, limit in
            doc[key] = try reader.value(type: type, limit: limit, depth: depth)
        }
        return doc
    }

    private mutating func array(limit: Int, depth: Int) throws -> [BSONValue] {
        var values = [BSONValue]()
        try elements(limit: limit, depth: depth) { reader, _, type, limit in
            values.append(try reader.value(type: type, limit: limit, depth: depth))
        }
        return values
    }

    private mutating func value(type: UInt8, limit: Int, depth: Int) throws -> BSONValue {
        switch type {
        case 0x01: return .double(Double(bitPattern: try fixed(UInt64.self, limit: limit)))
        case 0x02: return .string(try string(limit: limit))
        case 0x03: return .document(try document(limit: limit, depth: depth + 1))
        case 0x04: return .array(try array(limit: limit, depth: depth + 1))
        case 0x05:
            let length = Int(try fixed(Int32.self, limit: limit))
            guard length >= 0 else { throw fail(.malformed, "binary length \(length)") }
            let subtype = try fixed(UInt8.self, limit: limit)
            let data = try bytes(length, limit: limit)
            if subtype == BSONBinary.Subtype.binaryOld.rawValue {
                let inner = data.count >= 4 ? data[0..<4].reversed().reduce(0) { $0 << 8 | Int($1) } : -1
                guard inner == data.count - 4 else { throw fail(.malformed, "binary subtype 2 inner length") }
            }
            return .binary(BSONBinary(subtype: .init(subtype), bytes: data))
        case 0x06: return .undefined
        case 0x07: return .objectId(ObjectId(bytes: try bytes(12, limit: limit))!)
        case 0x08:
            switch try fixed(UInt8.self, limit: limit) {
            case 0: return .bool(false)
            case 1: return .bool(true)
            case let b: throw fail(.malformed, "boolean byte \(b)")
            }
        case 0x09: return .datetime(BSONDateConversion.date(try fixed(Int64.self, limit: limit)))
        case 0x0A: return .null
        case 0x0B:
            let pattern = try cstring(limit: limit)
            return .regex(BSONRegex(raw: pattern, options: try cstring(limit: limit)))
        case 0x0C:
            let ref = try string(limit: limit)
            return .dbPointer(BSONDBPointer(ref: ref, id: ObjectId(bytes: try bytes(12, limit: limit))!))
        case 0x0D: return .javascript(try string(limit: limit))
        case 0x0E: return .symbol(try string(limit: limit))
        case 0x0F:
            let start = pos
            let total = Int(try fixed(Int32.self, limit: limit))
            guard total >= 14, limit - start >= total else { throw fail(.malformed, "code with scope length \(total)") }
            let code = try string(limit: start + total)
            let scope = try document(limit: start + total, depth: depth + 1)
            guard pos == start + total else { throw fail(.malformed, "code with scope length mismatch") }
            return .javascriptWithScope(BSONCodeWithScope(code: code, scope: scope))
        case 0x10: return .int32(try fixed(Int32.self, limit: limit))
        case 0x11: return .timestamp(BSONTimestamp(rawValue: try fixed(UInt64.self, limit: limit)))
        case 0x12: return .int64(try fixed(Int64.self, limit: limit))
        case 0x13: return .decimal128(BSONDecimal128(bytes: try bytes(16, limit: limit))!)
        case 0xFF: return .minKey
        case 0x7F: return .maxKey
        default:
            throw fail(.malformed, "unknown element type 0x\(hexByte(type))")
        }
    }
}

// MARK: - Writer

/// Appends BSON to a byte buffer.
struct BSONWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    private mutating func fixed<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    private mutating func cstring(_ s: String) throws {
        var copy = s
        let hasNUL = copy.withUTF8 { utf8 in
            bytes.append(contentsOf: utf8)
            return utf8.contains(0)
        }
        if hasNUL { throw BSONError(.unrepresentable, "key or pattern contains a NUL byte: \(s.debugDescription)") }
        bytes.append(0)
    }

    /// An array index as a decimal key without allocating a String.
    private mutating func indexKey(_ i: Int) {
        if i < 10 {
            bytes.append(UInt8(ascii: "0") + UInt8(i))
        } else {
            var digits: [UInt8] = []
            var n = i
            while n > 0 {
                digits.append(UInt8(ascii: "0") + UInt8(n % 10))
                n /= 10
            }
            bytes.append(contentsOf: digits.reversed())
        }
        bytes.append(0)
    }

    private mutating func string(_ s: String) throws {
        var s = s
        let count = s.withUTF8 { $0.count }
        guard count < Int32.max else { throw BSONError(.unrepresentable, "string too long") }
        fixed(Int32(count + 1))
        s.withUTF8 { bytes.append(contentsOf: $0) }
        bytes.append(0)
    }

    private mutating func lengthPrefixed(_ body: (inout BSONWriter) throws -> Void) throws {
        let start = bytes.count
        fixed(Int32(0))
        try body(&self)
        let length = bytes.count - start
        guard length <= Int32.max else { throw BSONError(.unrepresentable, "document larger than 2 GiB") }
        withUnsafeBytes(of: Int32(length).littleEndian) { raw in
            for (i, b) in raw.enumerated() { bytes[start + i] = b }
        }
    }

    mutating func append(_ doc: BSONDocument) throws {
        try lengthPrefixed { w in
            for (key, value) in doc {
                w.bytes.append(value.typeByte)
                try w.cstring(key)
                try w.value(value)
            }
            w.bytes.append(0)
        }
    }

    private mutating func append(_ array: [BSONValue]) throws {
        try lengthPrefixed { w in
            for (i, value) in array.enumerated() {
                w.bytes.append(value.typeByte)
                w.indexKey(i)
                try w.value(value)
            }
            w.bytes.append(0)
        }
    }

    private mutating func value(_ value: BSONValue) throws {
        switch value {
        case .double(let v): fixed(v.bitPattern)
        case .string(let v), .javascript(let v), .symbol(let v): try string(v)
        case .document(let v): try append(v)
        case .array(let v): try append(v)
        case .binary(let v):
            guard v.bytes.count < Int32.max else { throw BSONError(.unrepresentable, "binary too long") }
            fixed(Int32(v.bytes.count))
            bytes.append(v.subtype.rawValue)
            bytes.append(contentsOf: v.bytes)
        case .undefined, .null, .minKey, .maxKey: break
        case .objectId(let v): bytes.append(contentsOf: v.bytes)
        case .bool(let v): bytes.append(v ? 1 : 0)
        case .datetime(let v):
            guard let ms = BSONDateConversion.milliseconds(v) else {
                throw BSONError(.unrepresentable, "date out of the BSON range: \(v.timeIntervalSince1970) s")
            }
            fixed(ms)
        case .regex(let v):
            try cstring(v.pattern)
            try cstring(v.options)
        case .dbPointer(let v):
            try string(v.ref)
            bytes.append(contentsOf: v.id.bytes)
        case .javascriptWithScope(let v):
            try lengthPrefixed { w in
                try w.string(v.code)
                try w.append(v.scope)
            }
        case .int32(let v): fixed(v)
        case .timestamp(let v): fixed(v.rawValue)
        case .int64(let v): fixed(v)
        case .decimal128(let v): bytes.append(contentsOf: v.bytes)
        }
    }
}
