// BSONDocument API, literals, Extended JSON and Decimal128 rendering.

import BSON
import Foundation
import Testing

@Suite struct BSONDocumentTests {
    @Test func keysKeepInsertionOrderAndStayUnique() {
        var doc: BSONDocument = ["b": 1, "a": 2]
        doc["c"] = 3
        doc["b"] = "replaced"
        #expect(doc.keys == ["b", "a", "c"])
        #expect(doc["b"] == "replaced")
        doc["a"] = nil
        #expect(doc.keys == ["b", "c"])
        #expect(doc.removeValue(forKey: "zz") == nil)
        doc.prepend(.objectId(ObjectId()), forKey: "_id")
        #expect(doc.keys == ["_id", "b", "c"])
        let literal: BSONDocument = ["x": 1, "x": 2]
        #expect(literal.keys == ["x"])
        #expect(literal["x"] == 2)
    }

    @Test func nestedLiteralsBuildQueries() {
        let filter: BSONDocument = ["a": 1, "b": ["$gt": 2], "c": ["$in": ["x", "y"]], "d": nil, "e": 1.5, "f": true]
        #expect(filter["b"]?["$gt"] == .int64(2))
        #expect(filter["c"]?["$in"]?.arrayValue == ["x", "y"])
        #expect(filter["d"] == .null)
        #expect(filter["e"] == .double(1.5))
        #expect(filter["f"]?.boolValue == true)
        #expect(filter["missing"] == nil)
    }

    @Test func largeDocumentsAreNotQuadratic() throws {
        let n = 50_000
        let clock = ContinuousClock()
        let start = clock.now
        var doc = BSONDocument()
        for i in 0..<n { doc["k\(i)"] = .int32(Int32(i)) }
        for i in stride(from: 0, to: n, by: 2) { doc["k\(i)"] = .int32(-1) }
        #expect(doc.count == n)
        #expect(doc["k49999"] == .int32(49999))
        #expect(doc["k2"] == .int32(-1))
        let parsed = try BSONDocument(bytes: doc.toBytes())
        #expect(parsed == doc)
        doc["k0"] = nil
        #expect(doc.count == n - 1 && doc["k1"] == .int32(1))
        // Quadratic behaviour would take minutes at this size.
        #expect(clock.now - start < .seconds(20))
    }

    @Test func valueAccessors() {
        #expect(BSONValue.int32(3).intValue == 3)
        #expect(BSONValue.double(3).intValue == 3)
        #expect(BSONValue.double(3.5).intValue == nil)
        #expect(BSONValue.int64(4).doubleValue == 4)
        #expect(BSONValue.null.isNull && BSONValue.undefined.isNull)
        #expect(BSONValue.double(.nan) == .double(.nan))
        #expect(BSONValue.double(0) != .double(-0.0))
        #expect(BSONValue.int32(1) != .int64(1))
        #expect(BSONValue.binary(subtype: .md5, bytes: [1]) == .binary(BSONBinary(subtype: .md5, bytes: [1])))
        let set: Set<BSONValue> = [.int32(1), .int32(1), .string("a")]
        #expect(set.count == 2)
    }

    @Test func extendedJSONRendering() {
        let id = ObjectId("5f1d3c2b1a0987654321abcd")!
        let doc: BSONDocument = [
            "i": .int32(1), "l": .int64(2), "d": 1.0, "s": "q\"\n", "id": .objectId(id),
            "t": .datetime(Date(timeIntervalSince1970: 0.001)), "ts": .timestamp(BSONTimestamp(t: 3, i: 4)),
            "n": nil, "a": [true], "nan": .double(.nan),
        ]
        #expect(doc.extendedJSON(.relaxed) == #"{"i": 1, "l": 2, "d": 1.0, "s": "q\"\n", "id": {"$oid": "5f1d3c2b1a0987654321abcd"}, "t": {"$date": "1970-01-01T00:00:00.001Z"}, "ts": {"$timestamp": {"t": 3, "i": 4}}, "n": null, "a": [true], "nan": {"$numberDouble": "NaN"}}"#)
        #expect(doc.extendedJSON(.canonical) == #"{"i": {"$numberInt": "1"}, "l": {"$numberLong": "2"}, "d": {"$numberDouble": "1.0"}, "s": "q\"\n", "id": {"$oid": "5f1d3c2b1a0987654321abcd"}, "t": {"$date": {"$numberLong": "1"}}, "ts": {"$timestamp": {"t": 3, "i": 4}}, "n": null, "a": [true], "nan": {"$numberDouble": "NaN"}}"#)
        #expect(BSONValue.datetime(Date(timeIntervalSince1970: -1)).description == #"{"$date": {"$numberLong": "-1000"}}"#)
        #expect("\(doc)" == doc.extendedJSON())
    }

    @Test func decimal128Strings() {
        let cases: [(UInt64, UInt64, String)] = [
            (0x3040_0000_0000_0000, 0, "0"),
            (0x3040_0000_0000_0000, 1, "1"),
            (0xB040_0000_0000_0000, 1, "-1"),
            (0x303E_0000_0000_0000, 1, "0.1"),
            (0x3034_0000_0000_0000, 1234, "0.001234"),
            (0x3046_0000_0000_0000, 1, "1E+3"),
            (0x3028_0000_0000_0000, 1, "1E-12"),
            (0x7800_0000_0000_0000, 0, "Infinity"),
            (0xF800_0000_0000_0000, 0, "-Infinity"),
            (0x7C00_0000_0000_0000, 0, "NaN"),
        ]
        for (high, low, text) in cases {
            let d = BSONDecimal128(high: high, low: low)
            #expect(d.description == text)
            #expect(d.high == high && d.low == low)
        }
    }

    @Test func timestampsOrderByTimeThenIncrement() {
        #expect(BSONTimestamp(t: 1, i: 5) < BSONTimestamp(t: 2, i: 0))
        #expect(BSONTimestamp(t: 2, i: 1) > BSONTimestamp(t: 2, i: 0))
        #expect(BSONTimestamp(rawValue: BSONTimestamp(t: 9, i: 10).rawValue) == BSONTimestamp(t: 9, i: 10))
    }
}
