// BSONEncoder: Encodable -> BSONDocument / BSONValue / bytes.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Encodes `Encodable` values as BSON.
///
/// Mapping: structs and `[String: T]` become documents, arrays become arrays, `ObjectId` an
/// objectId, `Date` a datetime (millisecond precision), `Data` binary (subtype 0), `UUID` binary
/// (subtype 4), ``BSONBinary`` / ``BSONDocument`` / ``BSONValue`` / ``BSONTimestamp`` themselves,
/// enums with raw values their raw value. Integers follow one rule, by Swift type: `Int`, `Int64`,
/// `UInt32`, `UInt64` and `UInt` become int64; `Int8`, `Int16`, `Int32`, `UInt8` and `UInt16`
/// become int32. `nil` optionals are omitted (see ``nilEncodingStrategy``).
public struct BSONEncoder: Sendable {
    /// What `nil` optionals become in keyed containers.
    public enum NilEncodingStrategy: Sendable {
        /// The key is left out (the default, like JSONEncoder).
        case omit
        /// The key is written with BSON null.
        case null
    }

    public var nilEncodingStrategy: NilEncodingStrategy = .omit
    /// Values handed to `encode(to:)` implementations through `Encoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable] = [:]

    public init() {}

    /// `value` as a document; throws if it does not encode as one (a scalar, an array).
    public func encode(_ value: some Encodable) throws -> BSONDocument {
        let encoded = try encodeValue(value)
        guard case .document(let doc) = encoded else {
            throw EncodingError.invalidValue(
                value, .init(codingPath: [], debugDescription: "top-level \(type(of: value)) encoded as \(encoded.typeName), not a document"))
        }
        return doc
    }

    /// `value` as any BSON value.
    public func encodeValue(_ value: some Encodable) throws -> BSONValue {
        try _BSONEncoderImpl(options: .init(nilStrategy: nilEncodingStrategy, userInfo: userInfo), codingPath: [])
            .box(value, at: [])
    }

    /// `value` as the bytes of a BSON document.
    public func encodeBytes(_ value: some Encodable) throws -> [UInt8] {
        try encode(value).toBytes()
    }
}

struct _BSONEncoderOptions {
    let nilStrategy: BSONEncoder.NilEncodingStrategy
    let userInfo: [CodingUserInfoKey: any Sendable]
}

/// A slot in the tree being encoded. Containers handed out to `encode(to:)` are references, so
/// values written into a nested container after it was created still land in its parent.
enum _EncodedSlot {
    case value(BSONValue)
    case document(_DocumentRef)
    case array(_ArrayRef)
    case encoder(_BSONEncoderImpl)
    case empty

    func materialize() throws -> BSONValue {
        switch self {
        case .value(let v): return v
        case .empty: return .document(BSONDocument())
        case .encoder(let e): return try e.storage.materialize()
        case .array(let a): return .array(try a.items.map { try $0.materialize() })
        case .document(let d):
            var doc = BSONDocument()
            doc.reserveCapacity(d.entries.count)
            for (k, v) in d.entries { doc[k] = try v.materialize() }
            return .document(doc)
        }
    }
}

final class _DocumentRef {
    var entries: [(String, _EncodedSlot)] = []
}

final class _ArrayRef {
    var items: [_EncodedSlot] = []
}

final class _BSONEncoderImpl: Encoder {
    let options: _BSONEncoderOptions
    let codingPath: [any CodingKey]
    var storage: _EncodedSlot = .empty
    var userInfo: [CodingUserInfoKey: Any] { options.userInfo }

    init(options: _BSONEncoderOptions, codingPath: [any CodingKey]) {
        self.options = options
        self.codingPath = codingPath
    }

    /// The BSON value of `value`: directly for primitives, else by running its `encode(to:)`.
    func box<T: Encodable>(_ value: T, at path: @autoclosure () -> [any CodingKey]) throws -> BSONValue {
        if let primitive = value as? any BSONPrimitive { return try self.primitive(primitive, at: path()) }
        let child = _BSONEncoderImpl(options: options, codingPath: path())
        try value.encode(to: child)
        return try child.storage.materialize()
    }

    /// The BSON value of a primitive, with the coding path in the error when it has none.
    func primitive<T: BSONPrimitive>(_ value: T, at path: @autoclosure () -> [any CodingKey]) throws -> BSONValue {
        do {
            return try value.bsonValue()
        } catch let error as BSONError {
            throw EncodingError.invalidValue(value, .init(codingPath: path(), debugDescription: error.message))
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let ref: _DocumentRef
        if case .document(let existing) = storage {
            ref = existing
        } else {
            ref = _DocumentRef()
            storage = .document(ref)
        }
        return KeyedEncodingContainer(_BSONKeyedEncoder<Key>(impl: self, ref: ref, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let ref: _ArrayRef
        if case .array(let existing) = storage {
            ref = existing
        } else {
            ref = _ArrayRef()
            storage = .array(ref)
        }
        return _BSONUnkeyedEncoder(impl: self, ref: ref, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { self }
}

extension _BSONEncoderImpl: SingleValueEncodingContainer {
    func encodeNil() throws { storage = .value(.null) }
    func encode(_ value: Bool) throws { storage = .value(.bool(value)) }
    func encode(_ value: String) throws { storage = .value(.string(value)) }
    func encode<T: Encodable>(_ value: T) throws { storage = .value(try box(value, at: codingPath)) }
}

struct _BSONKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let impl: _BSONEncoderImpl
    let ref: _DocumentRef
    let codingPath: [any CodingKey]

    fileprivate func put(_ slot: _EncodedSlot, _ key: Key) { ref.entries.append((key.stringValue, slot)) }

    mutating func encodeNil(forKey key: Key) throws { put(.value(.null), key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { put(.value(.bool(value)), key) }
    mutating func encode(_ value: String, forKey key: Key) throws { put(.value(.string(value)), key) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        put(.value(try impl.box(value, at: codingPath + [key])), key)
    }

    // nil optionals: omitted, or null with NilEncodingStrategy.null. Every typed overload
    // funnels here so that the strategy holds for all of them.
    private mutating func present<T: Encodable>(_ value: T?, _ key: Key) throws {
        if let value {
            try encode(value, forKey: key)
        } else if impl.options.nilStrategy == .null {
            try encodeNil(forKey: key)
        }
    }
    mutating func encodeIfPresent(_ value: Bool?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: String?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: Double?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: Float?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: Int?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: Int8?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: Int16?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: Int32?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: Int64?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: UInt?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: UInt8?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: UInt16?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: UInt32?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent(_ value: UInt64?, forKey key: Key) throws { try present(value, key) }
    mutating func encodeIfPresent<T: Encodable>(_ value: T?, forKey key: Key) throws { try present(value, key) }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type, forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        let nested = _DocumentRef()
        put(.document(nested), key)
        return KeyedEncodingContainer(_BSONKeyedEncoder<NestedKey>(impl: impl, ref: nested, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let nested = _ArrayRef()
        put(.array(nested), key)
        return _BSONUnkeyedEncoder(impl: impl, ref: nested, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        let child = _BSONEncoderImpl(options: impl.options, codingPath: codingPath + [AnyCodingKey("super")])
        ref.entries.append(("super", .encoder(child)))
        return child
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        let child = _BSONEncoderImpl(options: impl.options, codingPath: codingPath + [key])
        put(.encoder(child), key)
        return child
    }
}

struct _BSONUnkeyedEncoder: UnkeyedEncodingContainer {
    let impl: _BSONEncoderImpl
    let ref: _ArrayRef
    let codingPath: [any CodingKey]
    var count: Int { ref.items.count }

    fileprivate var nextPath: [any CodingKey] { codingPath + [AnyCodingKey(intValue: count)] }

    mutating func encodeNil() throws { ref.items.append(.value(.null)) }
    mutating func encode(_ value: Bool) throws { ref.items.append(.value(.bool(value))) }
    mutating func encode(_ value: String) throws { ref.items.append(.value(.string(value))) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        ref.items.append(.value(try impl.box(value, at: nextPath)))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let nested = _DocumentRef()
        let path = nextPath
        ref.items.append(.document(nested))
        return KeyedEncodingContainer(_BSONKeyedEncoder<NestedKey>(impl: impl, ref: nested, codingPath: path))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let nested = _ArrayRef()
        let path = nextPath
        ref.items.append(.array(nested))
        return _BSONUnkeyedEncoder(impl: impl, ref: nested, codingPath: path)
    }

    mutating func superEncoder() -> any Encoder {
        let child = _BSONEncoderImpl(options: impl.options, codingPath: nextPath)
        ref.items.append(.encoder(child))
        return child
    }
}

// The typed requirements of the container protocols, all through the one generic path.

extension _BSONEncoderImpl {
    func encode(_ value: Double) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: Float) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: Int) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: Int8) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: Int16) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: Int32) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: Int64) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: UInt) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: UInt8) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: UInt16) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: UInt32) throws { storage = .value(try primitive(value, at: codingPath)) }
    func encode(_ value: UInt64) throws { storage = .value(try primitive(value, at: codingPath)) }
}

extension _BSONKeyedEncoder {
    mutating func encode(_ value: Double, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { put(.value(try impl.primitive(value, at: codingPath + [key])), key) }
}

extension _BSONUnkeyedEncoder {
    mutating func encode(_ value: Double) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: Float) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: Int) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: Int8) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: Int16) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: Int32) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: Int64) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: UInt) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: UInt8) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: UInt16) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: UInt32) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
    mutating func encode(_ value: UInt64) throws { ref.items.append(.value(try impl.primitive(value, at: nextPath))) }
}
