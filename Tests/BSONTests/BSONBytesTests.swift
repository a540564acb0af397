// BSON bytes: every type round-trips exactly, known encodings from bsonspec.org, malformed input
// throws (never traps).

import BSON
import Foundation
import Testing

/// A document holding every BSON type, including the deprecated pass-through ones.
func everyTypeDocument() -> BSONDocument {
    [
        "double": .double(5.05),
        "negZero": .double(-0.0),
        "nan": .double(.nan),
        "inf": .double(-.infinity),
        "string": "héllo wörld ✓",
        "emptyString": "",
        "embeddedNUL": .string("a\u{0}b"),
        "document": ["a": 1, "b": ["c": "d"]],
        "emptyDocument": .document([:]),
        "array": [1, "two", 3.0, ["four": 4], [5]],
        "emptyArray": [],
        "binary": .binary(BSONBinary(subtype: .generic, bytes: [0, 1, 2, 255])),
        "binaryUUID": .binary(BSONBinary(subtype: .uuid, bytes: Array(0..<16))),
        "binaryOld": .binary(BSONBinary(subtype: .binaryOld, bytes: [3, 0, 0, 0, 7, 8, 9])),
        "binaryUser": .binary(BSONBinary(subtype: .userDefined, bytes: [])),
        "undefined": .undefined,
        "objectId": .objectId(ObjectId("5f1d3c2b1a0987654321abcd")!),
        "true": true,
        "false": false,
        "datetime": .datetime(Date(timeIntervalSince1970: 1_700_000_000.123)),
        "datetimePre1970": .datetime(Date(timeIntervalSince1970: -86_400 * 365 * 30 - 0.001)),
        "null": nil,
        "regex": .regex(BSONRegex(pattern: "^a.*b$", options: "mi")),
        "dbPointer": .dbPointer(BSONDBPointer(ref: "db.coll", id: ObjectId("000000000000000000000001")!)),
        "javascript": .javascript("function() { return 1; }"),
        "symbol": .symbol("sym"),
        "codeWithScope": .javascriptWithScope(BSONCodeWithScope(code: "x + y", scope: ["x": 1, "y": .int32(2)])),
        "int32": .int32(-2_147_483_648),
        "timestamp": .timestamp(BSONTimestamp(t: 1_700_000_000, i: 42)),
        "int64": .int64(Int64.max),
        "decimal128": .decimal128(BSONDecimal128(high: 0x3040_0000_0000_0000, low: 1)),
        "minKey": .minKey,
        "maxKey": .maxKey,
    ]
}

@Suite struct BSONBytesTests {
    @Test func knownEncodingsFromTheSpec() throws {
        let hello: BSONDocument = ["hello": "world"]
        let helloBytes: [UInt8] = [0x16, 0, 0, 0, 0x02] + Array("hello".utf8) + [0, 6, 0, 0, 0] + Array("world".utf8) + [0, 0]
        #expect(try hello.toBytes() == helloBytes)
        #expect(try BSONDocument(bytes: helloBytes) == hello)

        let awesome: BSONDocument = ["BSON": ["awesome", 5.05, .int32(1986)]]
        let awesomeBytes: [UInt8] = [
            0x31, 0x00, 0x00, 0x00, 0x04, 0x42, 0x53, 0x4F, 0x4E, 0x00, 0x26, 0x00, 0x00, 0x00, 0x02, 0x30, 0x00,
            0x08, 0x00, 0x00, 0x00, 0x61, 0x77, 0x65, 0x73, 0x6F, 0x6D, 0x65, 0x00, 0x01, 0x31, 0x00, 0x33, 0x33,
            0x33, 0x33, 0x33, 0x33, 0x14, 0x40, 0x10, 0x32, 0x00, 0xC2, 0x07, 0x00, 0x00, 0x00, 0x00,
        ]
        #expect(try awesome.toBytes() == awesomeBytes)
        #expect(try BSONDocument(bytes: awesomeBytes) == awesome)
        #expect(try BSONDocument().toBytes() == [5, 0, 0, 0, 0])
    }

    @Test func everyTypeRoundTripsExactlyThroughBytes() throws {
        let doc = everyTypeDocument()
        let bytes = try doc.toBytes()
        let parsed = try BSONDocument(bytes: bytes)
        #expect(parsed == doc)
        #expect(parsed.keys == doc.keys)
        #expect(try parsed.toBytes() == bytes)
        // Through Data and through a non-contiguous collection as well.
        #expect(try BSONDocument(data: Data(bytes)) == doc)
        #expect(try BSONDocument(bytes: bytes.lazy.map { $0 }) == doc)
        // Each type on its own, so a failure names it.
        for (key, value) in doc {
            let single: BSONDocument = [key: value]
            #expect(try BSONDocument(bytes: single.toBytes()) == single, "\(key)")
        }
    }

    @Test func typeBytesMatchTheSpec() {
        let doc = everyTypeDocument()
        let expected: [String: UInt8] = [
            "double": 1, "string": 2, "document": 3, "array": 4, "binary": 5, "undefined": 6, "objectId": 7,
            "true": 8, "datetime": 9, "null": 10, "regex": 11, "dbPointer": 12, "javascript": 13, "symbol": 14,
            "codeWithScope": 15, "int32": 16, "timestamp": 17, "int64": 18, "decimal128": 19, "minKey": 255,
            "maxKey": 127,
        ]
        for (key, type) in expected { #expect(doc[key]?.typeByte == type, "\(key)") }
    }

    @Test func datetimesKeepMillisecondsIncludingBefore1970() throws {
        let cases: [Int64] = [0, 1, -1, 1001, -1001, 1_700_000_000_123, -62_135_596_800_000, 253_402_300_799_999, -5]
        for ms in cases {
            let date = Date(timeIntervalSince1970: Double(ms) / 1000)
            let bytes = try ((["d": .datetime(date)]) as BSONDocument).toBytes()
            // The int64 on the wire is exactly the milliseconds.
            let wire = bytes[7..<15].reversed().reduce(Int64(0)) { $0 << 8 | Int64($1) }
            #expect(wire == ms, "\(ms)")
            let back = try BSONDocument(bytes: bytes)["d"]?.dateValue
            #expect(back == date, "\(ms)")
        }
        // Sub-millisecond precision is truncated towards the past.
        let fine = try BSONDocument(bytes: ((["d": .datetime(Date(timeIntervalSince1970: 1.0007))]) as BSONDocument).toBytes())
        #expect(fine["d"]?.dateValue == Date(timeIntervalSince1970: 1.0))
        let finePre = try BSONDocument(bytes: ((["d": .datetime(Date(timeIntervalSince1970: -1.0007))]) as BSONDocument).toBytes())
        #expect(finePre["d"]?.dateValue == Date(timeIntervalSince1970: -1.001))
    }

    @Test func unrepresentableValuesThrowWhenWriting() {
        #expect(throws: BSONError.self) { try ((["a\u{0}b": 1]) as BSONDocument).toBytes() }
        #expect(throws: BSONError.self) { try ((["r": .regex(BSONRegex(pattern: "a\u{0}", options: ""))]) as BSONDocument).toBytes() }
        #expect(throws: BSONError.self) { try ((["d": .datetime(Date(timeIntervalSince1970: 1e300))]) as BSONDocument).toBytes() }
    }

    @Test func everyTruncationThrows() throws {
        let bytes = try everyTypeDocument().toBytes()
        for n in 0..<bytes.count {
            #expect(throws: BSONError.self, "prefix \(n)") { try BSONDocument(bytes: bytes[0..<n]) }
        }
        // A longer buffer with a correct inner length: trailing bytes are an error too.
        #expect(throws: BSONError.self) { try BSONDocument(bytes: bytes + [0]) }
    }

    @Test func malformedInputThrows() {
        func bad(_ bytes: [UInt8], _ kind: BSONError.Kind, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                let doc = try BSONDocument(bytes: bytes)
                Issue.record("parsed \(doc) from \(bytes)", sourceLocation: sourceLocation)
            } catch let error as BSONError {
                #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
            } catch {
                Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
            }
        }
        bad([], .truncated)
        bad([4, 0, 0, 0], .malformed)  // length below the minimum
        bad([5, 0, 0, 0, 1], .truncated)  // no terminator: element type 1 with nothing after it
        bad([6, 0, 0, 0, 0, 0], .malformed)  // terminator before the announced end
        bad([0xFF, 0xFF, 0xFF, 0x7F, 0], .truncated)  // announces 2 GiB
        bad([0xFF, 0xFF, 0xFF, 0xFF, 0], .malformed)  // negative length
        bad([8, 0, 0, 0, 0x20, 0x61, 0, 0], .malformed)  // unknown type 0x20
        bad([9, 0, 0, 0, 0x08, 0x61, 0, 2, 0], .malformed)  // boolean byte 2
        bad([13, 0, 0, 0, 0x02, 0x61, 0, 0, 0, 0, 0, 0, 0], .malformed)  // string length 0
        bad([14, 0, 0, 0, 0x02, 0x61, 0, 2, 0, 0, 0, 0x62, 0x63, 0], .malformed)  // string without NUL
        bad([14, 0, 0, 0, 0x02, 0x61, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x62, 0, 0], .malformed)  // negative length
        bad([14, 0, 0, 0, 0x02, 0x61, 0, 2, 0, 0, 0, 0xC3, 0, 0], .invalidUTF8)  // truncated UTF-8
        bad([10, 0, 0, 0, 0x0A, 0xFF, 0xFE, 0, 0, 0], .invalidUTF8)  // key not UTF-8
        bad([8, 0, 0, 0, 0x0A, 0x61, 0x62, 0], .truncated)  // key runs into the terminator
        bad([12, 0, 0, 0, 0x03, 0x61, 0, 5, 0, 0, 0, 0], .truncated)  // nested document overruns
        bad([12, 0, 0, 0, 0x05, 0x61, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], .malformed)  // negative binary length
        bad([17, 0, 0, 0, 0x05, 0x61, 0, 4, 0, 0, 0, 2, 9, 0, 0, 0, 0], .malformed)  // binary subtype 2, bad inner length
    }

    @Test func deepNestingThrowsInsteadOfOverflowingTheStack() throws {
        // 10 000 nested documents: {"a": {"a": ...}}
        let depth = 10_000
        var bytes: [UInt8] = []
        for _ in 0..<depth { bytes += [0, 0, 0, 0, 0x03, 0x61, 0] }
        bytes += [5, 0, 0, 0, 0]
        bytes += [UInt8](repeating: 0, count: depth)
        // Patch the lengths from the inside out.
        for i in 0..<depth {
            let start = i * 7
            let length = UInt32(bytes.count - start - i)
            withUnsafeBytes(of: length.littleEndian) { for (j, b) in $0.enumerated() { bytes[start + j] = b } }
        }
        #expect(throws: BSONError.self) { try BSONDocument(bytes: bytes) }

        var shallow: BSONValue = ["leaf": true]
        for _ in 0..<200 { shallow = ["a": shallow] }
        let doc = shallow.documentValue!
        #expect(try BSONDocument(bytes: doc.toBytes()) == doc)
    }

    @Test func randomGarbageNeverTraps() {
        var rng = SplitMix64(seed: 0x7A1)
        let valid = (try? everyTypeDocument().toBytes()) ?? []
        for round in 0..<5000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                if bytes.count >= 4 {
                    withUnsafeBytes(of: UInt32(bytes.count).littleEndian) { for (j, b) in $0.enumerated() { bytes[j] = b } }
                }
            } else {
                // Flip a few bytes of a valid document.
                bytes = valid
                for _ in 0..<(1 + Int(rng.next() % 3)) {
                    bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            if let doc = try? BSONDocument(bytes: bytes) {
                // Whatever parses must serialize again.
                _ = try? doc.toBytes()
            }
        }
    }
}

/// A small deterministic generator for the fuzz-style test.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
