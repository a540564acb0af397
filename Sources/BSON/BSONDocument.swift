// BSONDocument: an ordered map from unique string keys to BSON values.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An ordered BSON document: keys keep their insertion order and are unique.
///
/// Setting an existing key replaces its value in place; setting a value to `nil` removes the key.
/// Lookups are linear for small documents and hashed beyond ``indexThreshold`` keys, so building or
/// reading large documents is never quadratic.
///
/// ```swift
/// let filter: BSONDocument = ["status.name": "running", "priority": ["$gt": 2]]
/// ```
public struct BSONDocument: Sendable, Hashable {
    public typealias Element = (key: String, value: BSONValue)

    /// Above this many keys a hash index backs lookups.
    public static let indexThreshold = 16

    private var elements: [Element] = []
    private var index: [String: Int]?

    /// An empty document.
    public init() {}

    /// A document from key-value pairs in order; a repeated key keeps its first position and its
    /// last value.
    public init(_ pairs: some Sequence<(String, BSONValue)>) {
        for (k, v) in pairs { self[k] = v }
    }

    /// The number of keys.
    public var count: Int { elements.count }
    public var isEmpty: Bool { elements.isEmpty }
    /// The keys, in order.
    public var keys: [String] { elements.map(\.key) }
    /// The values, in key order.
    public var values: [BSONValue] { elements.map(\.value) }

    private func position(of key: String) -> Int? {
        if let index { return index[key] }
        return elements.firstIndex { $0.key == key }
    }

    /// True when the document has `key`.
    public func hasKey(_ key: String) -> Bool { position(of: key) != nil }

    /// The value at `key`; setting nil removes the key, setting a new key appends it.
    public subscript(key: String) -> BSONValue? {
        get { position(of: key).map { elements[$0].value } }
        set {
            if let newValue {
                setValue(newValue, forKey: key)
            } else {
                removeValue(forKey: key)
            }
        }
    }

    /// Sets `value` at `key`: replaces in place when the key exists, else appends.
    public mutating func setValue(_ value: BSONValue, forKey key: String) {
        if let i = position(of: key) {
            elements[i].value = value
            return
        }
        elements.append((key, value))
        if index != nil {
            index![key] = elements.count - 1
        } else if elements.count > Self.indexThreshold {
            rebuildIndex()
        }
    }

    /// Removes `key` and returns its value (nil if absent).
    @discardableResult
    public mutating func removeValue(forKey key: String) -> BSONValue? {
        guard let i = position(of: key) else { return nil }
        let old = elements.remove(at: i).value
        if index != nil {
            if elements.count > Self.indexThreshold { rebuildIndex() } else { index = nil }
        }
        return old
    }

    /// Inserts `value` at `key` as the first key (an existing `key` is moved to the front).
    public mutating func prepend(_ value: BSONValue, forKey key: String) {
        removeValue(forKey: key)
        elements.insert((key, value), at: 0)
        if index != nil || elements.count > Self.indexThreshold { rebuildIndex() }
    }

    /// Reserves room for `n` keys.
    public mutating func reserveCapacity(_ n: Int) { elements.reserveCapacity(n) }

    private mutating func rebuildIndex() {
        var map = [String: Int](minimumCapacity: elements.count)
        for (i, e) in elements.enumerated() { map[e.key] = i }
        index = map
    }

    /// A copy with the keys of `other` set over this document's (new keys appended in `other`'s
    /// order).
    public func merging(_ other: BSONDocument) -> BSONDocument {
        var out = self
        for (k, v) in other { out[k] = v }
        return out
    }

    public static func == (lhs: BSONDocument, rhs: BSONDocument) -> Bool {
        guard lhs.elements.count == rhs.elements.count else { return false }
        for (a, b) in zip(lhs.elements, rhs.elements) where a.key != b.key || a.value != b.value {
            return false
        }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(elements.count)
        for e in elements {
            hasher.combine(e.key)
            hasher.combine(e.value)
        }
    }
}

extension BSONDocument: Sequence {
    public func makeIterator() -> IndexingIterator<[Element]> { elements.makeIterator() }
    public var underestimatedCount: Int { elements.count }
}

extension BSONDocument: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, BSONValue)...) {
        self.init(elements)
    }
}

extension BSONDocument: CustomStringConvertible {
    /// Relaxed Extended JSON.
    public var description: String { ExtendedJSON.render(.document(self), mode: .relaxed) }

    /// The document as Extended JSON (relaxed for logs, canonical when types must show).
    public func extendedJSON(_ mode: ExtendedJSON.Mode = .relaxed) -> String {
        ExtendedJSON.render(.document(self), mode: mode)
    }
}

// MARK: - Bytes

extension BSONDocument {
    /// Parses and validates one BSON document that spans exactly `bytes`.
    /// - Throws: ``BSONError`` for truncated, oversized, malformed or non-UTF-8 input.
    public init(bytes: some Collection<UInt8>) throws {
        if let doc = try bytes.withContiguousStorageIfAvailable({ try BSONReader.document(UnsafeRawBufferPointer($0)) }) {
            self = doc
        } else {
            self = try Array(bytes).withUnsafeBytes { try BSONReader.document($0) }
        }
    }

    /// Parses and validates one BSON document that spans exactly `data`.
    public init(data: Data) throws {
        self = try data.withUnsafeBytes { try BSONReader.document($0) }
    }

    /// Parses a document from raw memory that spans exactly one document.
    public init(buffer: UnsafeRawBufferPointer) throws {
        self = try BSONReader.document(buffer)
    }

    /// The BSON bytes of this document.
    /// - Throws: ``BSONError`` when a key or regex contains a NUL byte (not representable).
    public func toBytes() throws -> [UInt8] {
        var writer = BSONWriter()
        try writer.append(self)
        return writer.bytes
    }

    /// The BSON bytes as `Data`.
    public func toData() throws -> Data { Data(try toBytes()) }
}
