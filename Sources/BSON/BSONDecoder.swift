// BSONDecoder: BSONDocument / BSONValue / bytes -> Decodable.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Decodes `Decodable` values from BSON (the inverse of ``BSONEncoder``).
///
/// Integer properties accept int32, int64 and doubles that hold an integer exactly (when the
/// value fits the Swift type); `Double` accepts double, int32 and int64. Missing keys and BSON
/// null decode as `nil` for optionals. Errors are `DecodingError`s with the coding path.
public struct BSONDecoder: Sendable {
    /// Values handed to `init(from:)` implementations through `Decoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable] = [:]

    public init() {}

    /// A `T` from a document.
    public func decode<T: Decodable>(_ type: T.Type, from document: BSONDocument) throws -> T {
        try decode(type, fromValue: .document(document))
    }

    /// A `T` from any BSON value.
    public func decode<T: Decodable>(_ type: T.Type, fromValue value: BSONValue) throws -> T {
        try _BSONDecoderImpl(value: value, codingPath: [], userInfo: userInfo).unbox(value, as: type, at: [])
    }

    /// A `T` from the bytes of one BSON document (validated first; see ``BSONError``).
    public func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try decode(type, from: try BSONDocument(data: data))
    }
}

struct _BSONDecoderImpl: Decoder {
    let value: BSONValue
    let codingPath: [any CodingKey]
    let sendableUserInfo: [CodingUserInfoKey: any Sendable]
    var userInfo: [CodingUserInfoKey: Any] { sendableUserInfo }

    init(value: BSONValue, codingPath: [any CodingKey], userInfo: [CodingUserInfoKey: any Sendable]) {
        self.value = value
        self.codingPath = codingPath
        self.sendableUserInfo = userInfo
    }

    func child(_ value: BSONValue, _ path: [any CodingKey]) -> _BSONDecoderImpl {
        _BSONDecoderImpl(value: value, codingPath: path, userInfo: sendableUserInfo)
    }

    /// A `T` from `value`: directly for primitives, else through its `init(from:)`.
    func unbox<T: Decodable>(_ value: BSONValue, as type: T.Type, at path: @autoclosure () -> [any CodingKey]) throws -> T {
        if let primitive = type as? any BSONPrimitive.Type {
            return try self.primitive(value, as: primitive, at: path()) as! T
        }
        return try T(from: child(value, path()))
    }

    func primitive<T: BSONPrimitive>(_ value: BSONValue, as type: T.Type, at path: @autoclosure () -> [any CodingKey]) throws -> T {
        if let v = T(bsonValue: value) { return v }
        let context = DecodingError.Context(
            codingPath: path(), debugDescription: "expected \(T.expectation), found BSON \(value.typeName)")
        if value.isNull { throw DecodingError.valueNotFound(T.self, context) }
        throw DecodingError.typeMismatch(T.self, context)
    }

    func mismatch(_ expected: String) -> DecodingError {
        DecodingError.typeMismatch(
            Any.self, .init(codingPath: codingPath, debugDescription: "expected \(expected), found BSON \(value.typeName)"))
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .document(let doc) = value else { throw mismatch("a document") }
        return KeyedDecodingContainer(_BSONKeyedDecoder<Key>(impl: self, doc: doc, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw mismatch("an array") }
        return _BSONUnkeyedDecoder(impl: self, items: items, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }
}

extension _BSONDecoderImpl: SingleValueDecodingContainer {
    func decodeNil() -> Bool { value.isNull }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try unbox(value, as: type, at: codingPath) }
}

struct _BSONKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let impl: _BSONDecoderImpl
    let doc: BSONDocument
    let codingPath: [any CodingKey]

    var allKeys: [Key] { doc.keys.compactMap { Key(stringValue: $0) } }
    func contains(_ key: Key) -> Bool { doc.hasKey(key.stringValue) }

    fileprivate func value(_ key: Key) throws -> BSONValue {
        guard let v = doc[key.stringValue] else {
            throw DecodingError.keyNotFound(
                key, .init(codingPath: codingPath, debugDescription: "no key \"\(key.stringValue)\""))
        }
        return v
    }

    func decodeNil(forKey key: Key) throws -> Bool { try value(key).isNull }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try impl.unbox(try value(key), as: type, at: codingPath + [key])
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try impl.child(try value(key), codingPath + [key]).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try impl.child(try value(key), codingPath + [key]).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        impl.child(doc["super"] ?? .null, codingPath + [AnyCodingKey("super")])
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        impl.child(doc[key.stringValue] ?? .null, codingPath + [key])
    }
}

struct _BSONUnkeyedDecoder: UnkeyedDecodingContainer {
    let impl: _BSONDecoderImpl
    let items: [BSONValue]
    let codingPath: [any CodingKey]
    var currentIndex = 0

    init(impl: _BSONDecoderImpl, items: [BSONValue], codingPath: [any CodingKey]) {
        self.impl = impl
        self.items = items
        self.codingPath = codingPath
    }

    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    fileprivate var path: [any CodingKey] { path(currentIndex) }
    fileprivate func path(_ index: Int) -> [any CodingKey] { codingPath + [AnyCodingKey(intValue: index)] }

    fileprivate mutating func next<T>(_ type: T.Type) throws -> BSONValue {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(
                type, .init(codingPath: path, debugDescription: "array has only \(items.count) elements"))
        }
        defer { currentIndex += 1 }
        return items[currentIndex]
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, items[currentIndex].isNull else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let index = currentIndex
        return try impl.unbox(try next(type), as: type, at: path(index))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let p = path
        return try impl.child(try next(BSONDocument.self), p).container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let p = path
        return try impl.child(try next([BSONValue].self), p).unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder {
        let p = path
        return impl.child(try next(BSONValue.self), p)
    }
}

// The typed requirements of the container protocols, all through the one primitive path.

extension _BSONDecoderImpl {
    func decode(_ type: Bool.Type) throws -> Bool { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: String.Type) throws -> String { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: Double.Type) throws -> Double { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: Float.Type) throws -> Float { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: Int.Type) throws -> Int { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: Int8.Type) throws -> Int8 { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: Int16.Type) throws -> Int16 { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: Int32.Type) throws -> Int32 { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: Int64.Type) throws -> Int64 { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: UInt.Type) throws -> UInt { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try primitive(value, as: type, at: codingPath) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try primitive(value, as: type, at: codingPath) }
}

extension _BSONKeyedDecoder {
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 {
        try impl.primitive(try value(key), as: type, at: codingPath + [key])
    }
}

extension _BSONUnkeyedDecoder {
    mutating func decode(_ type: Bool.Type) throws -> Bool {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: String.Type) throws -> String {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: Double.Type) throws -> Double {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: Float.Type) throws -> Float {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: Int.Type) throws -> Int {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: Int8.Type) throws -> Int8 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: Int16.Type) throws -> Int16 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: Int32.Type) throws -> Int32 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: Int64.Type) throws -> Int64 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: UInt.Type) throws -> UInt {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 {
        let index = currentIndex
        return try impl.primitive(try next(type), as: type, at: path(index))
    }
}
