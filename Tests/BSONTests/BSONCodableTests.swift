// BSONEncoder / BSONDecoder: Swift models <-> BSON documents.

import BSON
import Foundation
import Testing

enum Color: String, Codable, Equatable { case red, green }
enum Level: Int, Codable, Equatable { case low = 1, high = 9 }

struct Inner: Codable, Equatable {
    var name: String
    var tags: [String]
}

struct Model: Codable, Equatable {
    var _id: ObjectId
    var created: Date
    var old: Date
    var blob: Data
    var raw: BSONBinary
    var uuid: UUID
    var inner: Inner
    var inners: [Inner]
    var matrix: [[Int]]
    var maybe: String?
    var missing: Int?
    var color: Color
    var level: Level
    var counts: [String: Int]
    var nested: [String: Inner]
    var i: Int
    var i8: Int8
    var i16: Int16
    var i32: Int32
    var i64: Int64
    var u8: UInt8
    var u16: UInt16
    var u32: UInt32
    var u64: UInt64
    var d: Double
    var f: Float
    var flag: Bool
    var params: BSONDocument
    var any: BSONValue
    var ts: BSONTimestamp
}

func sampleModel() -> Model {
    Model(
        _id: ObjectId(), created: Date(timeIntervalSince1970: 1_700_000_000.456),
        old: Date(timeIntervalSince1970: -1_234_567_890.123), blob: Data([1, 2, 3, 0, 255]),
        raw: BSONBinary(subtype: .userDefined, bytes: [9, 8]), uuid: UUID(),
        inner: Inner(name: "x", tags: ["a", "b"]), inners: [Inner(name: "y", tags: []), Inner(name: "z", tags: ["c"])],
        matrix: [[1, 2], [], [3]], maybe: "here", missing: nil, color: .green, level: .high,
        counts: ["a": 1, "b": 2], nested: ["k": Inner(name: "n", tags: ["t"])], i: Int.min, i8: -8, i16: 16,
        i32: Int32.max, i64: Int64.min, u8: 255, u16: 65535, u32: UInt32.max, u64: UInt64(Int64.max), d: 0.1,
        f: 1.5, flag: true, params: ["fuzz": ["iterations": 10, "dict": "/x"], "seed": .int32(3)],
        any: [1, "two", nil], ts: BSONTimestamp(t: 7, i: 8))
}

@Suite struct BSONCodableTests {
    let encoder = BSONEncoder()
    let decoder = BSONDecoder()

    @Test func modelRoundTripsThroughDocumentAndBytes() throws {
        let model = sampleModel()
        let doc = try encoder.encode(model)
        #expect(try decoder.decode(Model.self, from: doc) == model)
        let bytes = try encoder.encodeBytes(model)
        #expect(try decoder.decode(Model.self, from: Data(bytes)) == model)
    }

    @Test func typesMapToTheDocumentedBSONTypes() throws {
        let model = sampleModel()
        let doc = try encoder.encode(model)
        #expect(doc.keys.first == "_id")
        #expect(doc["_id"] == .objectId(model._id))
        #expect(doc["created"] == .datetime(model.created))
        #expect(doc["blob"] == .binary(BSONBinary(subtype: .generic, bytes: [1, 2, 3, 0, 255])))
        #expect(doc["raw"]?.binaryValue?.subtype == .userDefined)
        #expect(doc["uuid"]?.binaryValue?.subtype == .uuid)
        #expect(doc["inner"] == ["name": "x", "tags": ["a", "b"]])
        #expect(doc["matrix"] == [[.int64(1), .int64(2)], [], [.int64(3)]])
        #expect(doc["maybe"] == "here")
        #expect(doc.hasKey("missing") == false)
        #expect(doc["color"] == "green")
        #expect(doc["level"] == .int64(9))
        // Swift dictionaries have no order: compare by key.
        let counts = doc["counts"]?.documentValue.map { Dictionary(uniqueKeysWithValues: $0.map { ($0.key, $0.value) }) }
        #expect(counts == ["a": .int64(1), "b": .int64(2)])
        #expect(doc["i"] == .int64(Int64(Int.min)))
        #expect(doc["i8"] == .int32(-8))
        #expect(doc["i16"] == .int32(16))
        #expect(doc["i32"] == .int32(Int32.max))
        #expect(doc["i64"] == .int64(Int64.min))
        #expect(doc["u8"] == .int32(255))
        #expect(doc["u16"] == .int32(65535))
        #expect(doc["u32"] == .int64(Int64(UInt32.max)))
        #expect(doc["u64"] == .int64(Int64.max))
        #expect(doc["d"] == .double(0.1))
        #expect(doc["f"] == .double(1.5))
        #expect(doc["flag"] == true)
        #expect(doc["params"] == ["fuzz": ["iterations": 10, "dict": "/x"], "seed": .int32(3)])
        #expect(doc["any"] == [1, "two", nil])
        #expect(doc["ts"] == .timestamp(BSONTimestamp(t: 7, i: 8)))
    }

    @Test func nilIsOmittedByDefaultOrWrittenAsNull() throws {
        struct Opt: Codable, Equatable {
            var a: Int?
            var b: String?
            var c: Inner?
        }
        #expect(try encoder.encode(Opt()) == [:])
        var nulls = BSONEncoder()
        nulls.nilEncodingStrategy = .null
        #expect(try nulls.encode(Opt()) == ["a": nil, "b": nil, "c": nil])
        // Missing keys and nulls both decode as nil.
        #expect(try decoder.decode(Opt.self, from: [:]) == Opt())
        #expect(try decoder.decode(Opt.self, from: ["a": nil, "b": .undefined, "c": nil]) == Opt())
        #expect(try decoder.decode([Int?].self, fromValue: [1, nil, 3]) == [1, nil, 3])
    }

    @Test func integerFieldsAcceptInt32Int64AndIntegralDoubles() throws {
        struct N: Codable, Equatable { var n: Int; var s: Int8; var u: UInt64; var d: Double }
        #expect(try decoder.decode(N.self, from: ["n": .int32(5), "s": .int64(-3), "u": .double(7), "d": .int32(2)])
            == N(n: 5, s: -3, u: 7, d: 2))
        #expect(try decoder.decode(N.self, from: ["n": .double(-4e15), "s": .double(127), "u": .int64(0), "d": .int64(9)])
            == N(n: -4_000_000_000_000_000, s: 127, u: 0, d: 9))
        // A fraction, an overflow, a negative unsigned and a string all fail, with the path.
        for bad: BSONDocument in [
            ["n": .double(1.5), "s": 1, "u": 1, "d": 1],
            ["n": 1, "s": .int32(128), "u": 1, "d": 1],
            ["n": 1, "s": 1, "u": .int64(-1), "d": 1],
            ["n": "1", "s": 1, "u": 1, "d": 1],
            ["n": 1, "s": 1, "u": 1, "d": "x"],
        ] {
            #expect(throws: DecodingError.self, "\(bad)") { try decoder.decode(N.self, from: bad) }
        }
        #expect(throws: EncodingError.self) { try encoder.encode(["big": UInt64.max]) }
    }

    @Test func decodingErrorsCarryTheCodingPath() throws {
        do {
            _ = try decoder.decode(Model.self, from: try encoder.encode(sampleModel()).merging(["inners": [["name": 1, "tags": []]]]))
            Issue.record("decoded a bad model")
        } catch DecodingError.typeMismatch(_, let context) {
            #expect(context.codingPath.map(\.stringValue) == ["inners", "Index 0", "name"]
                || context.codingPath.map(\.stringValue) == ["inners", "0", "name"])
        }
        do {
            _ = try decoder.decode(Inner.self, from: ["tags": []])
            Issue.record("decoded without a required key")
        } catch DecodingError.keyNotFound(let key, _) {
            #expect(key.stringValue == "name")
        }
        #expect(throws: DecodingError.self) { try decoder.decode(Inner.self, fromValue: .int32(1)) }
        #expect(throws: (any Error).self) { try decoder.decode(Inner.self, from: Data([1, 2, 3])) }
    }

    @Test func datesKeepMillisecondPrecisionThroughCodable() throws {
        struct D: Codable, Equatable { var d: Date }
        for seconds in [0.001, -0.001, 1_700_000_000.999, -2_208_988_800.5, 4_102_444_800.0] {
            let v = D(d: Date(timeIntervalSince1970: seconds))
            let bytes = try encoder.encodeBytes(v)
            #expect(try decoder.decode(D.self, from: Data(bytes)) == v, "\(seconds)")
        }
    }

    @Test func freeFormDocumentsAndValuesAreCodableFields() throws {
        struct Tool: Codable, Equatable { var name: String; var params: BSONDocument; var extra: BSONValue? }
        let tool = Tool(name: "afl", params: ["timeout": 5, "args": ["-m", "none"], "when": .datetime(Date(timeIntervalSince1970: 1))], extra: .objectId(ObjectId()))
        let doc = try encoder.encode(tool)
        #expect(doc["params"]?["args"] == ["-m", "none"])
        #expect(try decoder.decode(Tool.self, from: doc) == tool)
        // Top-level BSONDocument / BSONValue encode as themselves.
        #expect(try encoder.encode(tool.params) == tool.params)
        #expect(try encoder.encodeValue(BSONValue.int32(3)) == .int32(3))
        #expect(try decoder.decode(BSONValue.self, fromValue: .minKey) == .minKey)
        #expect(throws: EncodingError.self) { try encoder.encode(3) }
    }

    @Test func dictionariesAndNonStringKeys() throws {
        let byInt: [Int: String] = [1: "a", 2: "b"]
        let doc = try encoder.encodeValue(byInt)
        #expect(try decoder.decode([Int: String].self, fromValue: doc) == byInt)
        let deep: [String: [String: [Int]]] = ["x": ["y": [1, 2]], "z": [:]]
        #expect(try decoder.decode([String: [String: [Int]]].self, fromValue: encoder.encodeValue(deep)) == deep)
    }

    @Test func objectIdIsBSONObjectIdButHexInJSON() throws {
        struct Ref: Codable, Equatable { var id: ObjectId }
        let ref = Ref(id: ObjectId())
        #expect(try encoder.encode(ref)["id"] == .objectId(ref.id))
        let json = try JSONEncoder().encode(ref)
        #expect(String(decoding: json, as: UTF8.self) == "{\"id\":\"\(ref.id.hex)\"}")
        #expect(try JSONDecoder().decode(Ref.self, from: json) == ref)
        // Calling encode(to:) directly on a BSON encoder still gives an objectId.
        struct Direct: Encodable {
            var id: ObjectId
            func encode(to encoder: any Encoder) throws { try id.encode(to: encoder) }
        }
        #expect(try encoder.encodeValue(Direct(id: ref.id)) == .objectId(ref.id))
    }

    @Test func bsonDocumentsThroughJSONUseExtendedJSON() throws {
        let id = ObjectId()
        let doc: BSONDocument = [
            "s": "x", "n": 3, "d": 1.5, "b": true, "z": nil, "a": [1, ["k": "v"]], "id": .objectId(id),
            "t": .datetime(Date(timeIntervalSince1970: 1.5)), "bin": .binary(BSONBinary(bytes: [1, 2])),
            "ts": .timestamp(BSONTimestamp(t: 1, i: 2)),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(doc), as: UTF8.self)
        #expect(json.contains("\"id\":{\"$oid\":\"\(id.hex)\"}"))
        #expect(json.contains("\"t\":{\"$date\":\"1970-01-01T00:00:01.500Z\"}"))
        #expect(json.contains("\"n\":3"))
        let back = try JSONDecoder().decode(BSONDocument.self, from: Data(json.utf8))
        // JSON objects are unordered through JSONDecoder: compare by key.
        for key in doc.keys { #expect(back[key] == doc[key], "\(key)") }
    }
}
