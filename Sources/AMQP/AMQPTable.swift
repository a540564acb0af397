// AMQP: field tables (queue arguments, message headers, x-death records) and their
// conversion to and from rabbitmq-c's `amqp_table_t`.

import CRabbitMQ

/// A value in an AMQP field table.
///
/// Integer literals become ``int64(_:)``, which RabbitMQ accepts for every integer argument
/// (`x-max-priority`, `x-message-ttl`, ...). Strings are AMQP long strings (`S`); byte arrays
/// that are not text use ``bytes(_:)`` (`x`).
public enum AMQPFieldValue: Sendable, Hashable {
    case bool(Bool)
    case int8(Int8)
    case uint8(UInt8)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case float(Float)
    case double(Double)
    /// A decimal: `value` × 10^-`scale`.
    case decimal(scale: UInt8, value: UInt32)
    case string(String)
    case bytes([UInt8])
    case array([AMQPFieldValue])
    case table(AMQPTable)
    /// Seconds since the Unix epoch.
    case timestamp(UInt64)
    case void

    /// The value as an integer, for any integer kind (and timestamps).
    public var intValue: Int64? {
        switch self {
        case .int8(let v): Int64(v)
        case .uint8(let v): Int64(v)
        case .int16(let v): Int64(v)
        case .uint16(let v): Int64(v)
        case .int32(let v): Int64(v)
        case .uint32(let v): Int64(v)
        case .int64(let v): v
        case .timestamp(let v): Int64(exactly: v)
        default: nil
        }
    }

    /// The value as a string (long strings, and byte strings that are valid UTF-8).
    public var stringValue: String? {
        switch self {
        case .string(let s): s
        case .bytes(let b): String(validating: b, as: UTF8.self)
        default: nil
        }
    }

    /// The value as a Bool, for ``bool(_:)``.
    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// The nested table, for ``table(_:)``.
    public var tableValue: AMQPTable? {
        if case .table(let t) = self { return t }
        return nil
    }

    /// The elements, for ``array(_:)``.
    public var arrayValue: [AMQPFieldValue]? {
        if case .array(let a) = self { return a }
        return nil
    }
}

extension AMQPFieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int64(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(arrayLiteral elements: AMQPFieldValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, AMQPFieldValue)...) {
        self = .table(AMQPTable(elements))
    }
}

/// An AMQP field table: string keys to ``AMQPFieldValue``s. Keys are unique; order does not
/// matter to AMQP, and the library encodes keys sorted so equal tables encode identically.
public struct AMQPTable: Sendable, Hashable, ExpressibleByDictionaryLiteral, Sequence {
    /// The entries.
    public var storage: [String: AMQPFieldValue]

    /// An empty table.
    public init() { storage = [:] }

    /// A table of these entries (a later duplicate key wins).
    public init(_ entries: some Sequence<(String, AMQPFieldValue)>) {
        storage = Dictionary(entries, uniquingKeysWith: { _, new in new })
    }

    public init(dictionaryLiteral elements: (String, AMQPFieldValue)...) { self.init(elements) }

    /// The value for `key`, or `nil`.
    public subscript(key: String) -> AMQPFieldValue? {
        get { storage[key] }
        set { storage[key] = newValue }
    }

    /// True when the table has no entries.
    public var isEmpty: Bool { storage.isEmpty }
    /// The number of entries.
    public var count: Int { storage.count }
    /// The keys.
    public var keys: Dictionary<String, AMQPFieldValue>.Keys { storage.keys }
    /// The entries, in no particular order.
    public func makeIterator() -> Dictionary<String, AMQPFieldValue>.Iterator { storage.makeIterator() }
}

// MARK: - C conversion

/// Memory for the C structures built from Swift values for one call into rabbitmq-c;
/// everything is freed by ``reset()`` (or when the arena goes away).
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer {
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: alignment)
        allocations.append(pointer)
        return pointer
    }

    func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        allocate(byteCount: MemoryLayout<T>.stride * count, alignment: MemoryLayout<T>.alignment)
            .bindMemory(to: T.self, capacity: count)
    }

    /// A copy of `raw` as `amqp_bytes_t` ({0, NULL} when empty).
    func bytes(_ raw: UnsafeRawBufferPointer) -> amqp_bytes_t {
        guard raw.count > 0, let base = raw.baseAddress else { return amqp_bytes_t(len: 0, bytes: nil) }
        let pointer = allocate(byteCount: raw.count, alignment: 1)
        pointer.copyMemory(from: base, byteCount: raw.count)
        return amqp_bytes_t(len: raw.count, bytes: pointer)
    }

    func bytes(_ string: String) -> amqp_bytes_t {
        var string = string
        return string.withUTF8 { bytes(UnsafeRawBufferPointer($0)) }
    }

    func bytes(_ array: [UInt8]) -> amqp_bytes_t {
        array.withUnsafeBytes { bytes($0) }
    }

    /// A NUL-terminated copy of `string`.
    func cString(_ string: String) -> UnsafePointer<CChar> {
        var string = string
        return string.withUTF8 { utf8 in
            let pointer = allocate(CChar.self, count: utf8.count + 1)
            if let base = utf8.baseAddress { UnsafeMutableRawPointer(pointer).copyMemory(from: base, byteCount: utf8.count) }
            pointer[utf8.count] = 0
            return UnsafePointer(pointer)
        }
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        guard !table.isEmpty else { return amqp_table_t(num_entries: 0, entries: nil) }
        let entries = allocate(amqp_table_entry_t.self, count: table.count)
        for (index, key) in table.keys.sorted().enumerated() {
            entries[index] = amqp_table_entry_t(key: bytes(key), value: field(table.storage[key]!))
        }
        return amqp_table_t(num_entries: Int32(table.count), entries: entries)
    }

    func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var result = amqp_field_value_t()
        func kind(_ k: amqp_field_value_kind_t) { result.kind = UInt8(truncatingIfNeeded: k.rawValue) }
        switch value {
        case .bool(let v): kind(AMQP_FIELD_KIND_BOOLEAN); result.value.boolean = v ? 1 : 0
        case .int8(let v): kind(AMQP_FIELD_KIND_I8); result.value.i8 = v
        case .uint8(let v): kind(AMQP_FIELD_KIND_U8); result.value.u8 = v
        case .int16(let v): kind(AMQP_FIELD_KIND_I16); result.value.i16 = v
        case .uint16(let v): kind(AMQP_FIELD_KIND_U16); result.value.u16 = v
        case .int32(let v): kind(AMQP_FIELD_KIND_I32); result.value.i32 = v
        case .uint32(let v): kind(AMQP_FIELD_KIND_U32); result.value.u32 = v
        case .int64(let v): kind(AMQP_FIELD_KIND_I64); result.value.i64 = v
        case .float(let v): kind(AMQP_FIELD_KIND_F32); result.value.f32 = v
        case .double(let v): kind(AMQP_FIELD_KIND_F64); result.value.f64 = v
        case .decimal(let scale, let v):
            kind(AMQP_FIELD_KIND_DECIMAL); result.value.decimal = amqp_decimal_t(decimals: scale, value: v)
        case .string(let v): kind(AMQP_FIELD_KIND_UTF8); result.value.bytes = bytes(v)
        case .bytes(let v): kind(AMQP_FIELD_KIND_BYTES); result.value.bytes = bytes(v)
        case .array(let elements):
            kind(AMQP_FIELD_KIND_ARRAY)
            let entries = elements.isEmpty ? nil : allocate(amqp_field_value_t.self, count: elements.count)
            for (index, element) in elements.enumerated() { entries![index] = field(element) }
            result.value.array = amqp_array_t(num_entries: Int32(elements.count), entries: entries)
        case .table(let t): kind(AMQP_FIELD_KIND_TABLE); result.value.table = table(t)
        case .timestamp(let v): kind(AMQP_FIELD_KIND_TIMESTAMP); result.value.u64 = v
        case .void: kind(AMQP_FIELD_KIND_VOID)
        }
        return result
    }

    /// Frees everything allocated so far.
    func reset() {
        for pointer in allocations { pointer.deallocate() }
        allocations.removeAll(keepingCapacity: true)
    }

    deinit { reset() }
}

extension AMQPTable {
    /// A copy of a table decoded by rabbitmq-c.
    init(_ table: amqp_table_t) {
        self.init()
        guard table.num_entries > 0, let entries = table.entries else { return }
        for index in 0..<Int(table.num_entries) {
            storage[entries[index].key.string] = AMQPFieldValue(entries[index].value)
        }
    }
}

extension AMQPFieldValue {
    /// A copy of a field value decoded by rabbitmq-c.
    init(_ field: amqp_field_value_t) {
        switch UInt32(field.kind) {
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: self = .bool(field.value.boolean != 0)
        case AMQP_FIELD_KIND_I8.rawValue: self = .int8(field.value.i8)
        case AMQP_FIELD_KIND_U8.rawValue: self = .uint8(field.value.u8)
        case AMQP_FIELD_KIND_I16.rawValue: self = .int16(field.value.i16)
        case AMQP_FIELD_KIND_U16.rawValue: self = .uint16(field.value.u16)
        case AMQP_FIELD_KIND_I32.rawValue: self = .int32(field.value.i32)
        case AMQP_FIELD_KIND_U32.rawValue: self = .uint32(field.value.u32)
        case AMQP_FIELD_KIND_I64.rawValue: self = .int64(field.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue:
            self = Int64(exactly: field.value.u64).map { .int64($0) } ?? .timestamp(field.value.u64)
        case AMQP_FIELD_KIND_F32.rawValue: self = .float(field.value.f32)
        case AMQP_FIELD_KIND_F64.rawValue: self = .double(field.value.f64)
        case AMQP_FIELD_KIND_DECIMAL.rawValue:
            self = .decimal(scale: field.value.decimal.decimals, value: field.value.decimal.value)
        case AMQP_FIELD_KIND_UTF8.rawValue: self = .string(field.value.bytes.string)
        case AMQP_FIELD_KIND_BYTES.rawValue: self = .bytes(field.value.bytes.array)
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            let array = field.value.array
            var elements: [AMQPFieldValue] = []
            if array.num_entries > 0, let entries = array.entries {
                elements.reserveCapacity(Int(array.num_entries))
                for index in 0..<Int(array.num_entries) { elements.append(AMQPFieldValue(entries[index])) }
            }
            self = .array(elements)
        case AMQP_FIELD_KIND_TABLE.rawValue: self = .table(AMQPTable(field.value.table))
        case AMQP_FIELD_KIND_TIMESTAMP.rawValue: self = .timestamp(field.value.u64)
        default: self = .void
        }
    }
}
