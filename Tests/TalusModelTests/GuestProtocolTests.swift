import BSON
import Foundation
import Testing
@testable import TalusModel

@Suite struct GuestProtocolTests {
    func decodeAll(_ bytes: [UInt8], max: Int = 1 << 20, chunk: Int = Int.max) -> [FrameDecoder.Item] {
        var decoder = FrameDecoder(maxFrameSize: max)
        var out: [FrameDecoder.Item] = []
        var i = 0
        while i < bytes.count {
            let end = min(bytes.count, i + chunk)
            decoder.append(bytes[i..<end])
            i = end
            while let item = decoder.next() { out.append(item) }
        }
        return out
    }

    let frames: [GuestFrame] = [
        .hello(token: "secret", agent: "1.0"), .started, .report(.progress(amount: 1)),
        .report(.crash(signature: "SEGV", data: ["x": 1], file: "c1")),
        .report(.file(FileChunk(name: "c1", offset: 0, data: Data((0..<200).map { UInt8($0) }), last: true, size: 200, sha256: "x"))),
        .heartbeat, .finished(exitCode: 0, reason: nil), .welcome, .cancel(reason: "job cancelled"),
    ]

    @Test func framesRoundTripWholeAndByteByByte() throws {
        let bytes = try frames.flatMap { try FrameEncoder.encode($0) }
        #expect(decodeAll(bytes) == frames.map { .frame($0) })
        #expect(decodeAll(bytes, chunk: 1) == frames.map { .frame($0) })
        #expect(decodeAll(bytes, chunk: 7) == frames.map { .frame($0) })
    }

    @Test func garbageIsSkippedAndReported() throws {
        let good = try FrameEncoder.encode(.heartbeat)
        let items = decodeAll(Array("hello garbage".utf8) + good + [0xFF, 0x00] + good)
        let frames = items.compactMap { if case .frame(let f) = $0 { f } else { nil } }
        let garbage = items.reduce(0) { if case .garbage(let n) = $1 { $0 + n } else { $0 } }
        #expect(frames == [.heartbeat, .heartbeat])
        #expect(garbage == 13 + 2)
    }

    @Test func oversizedFrameIsDroppedAndStreamResyncs() throws {
        var bytes = FrameEncoder.magic + [0x7F, 0xFF, 0xFF, 0xFF] + Array(repeating: UInt8(0x41), count: 100)
        bytes += try FrameEncoder.encode(.started)
        let items = decodeAll(bytes, max: 1024)
        #expect(items.first == .oversized(length: 0x7FFF_FFFF))
        #expect(items.last == .frame(.started))
    }

    @Test func malformedPayloadIsReported() throws {
        let payload = Array(#"{"type":"progress","amount":"lots"}"#.utf8)
        let n = UInt32(payload.count)
        let bytes = FrameEncoder.magic + [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] + payload
        let items = decodeAll(bytes + (try FrameEncoder.encode(.heartbeat)))
        guard case .malformed = items.first else { Issue.record("expected malformed, got \(items)"); return }
        #expect(items.last == .frame(.heartbeat))
    }

    @Test func randomBytesNeverCrashAndMemoryStaysBounded() {
        var rng = SystemRandomNumberGenerator()
        var decoder = FrameDecoder(maxFrameSize: 4096)
        for _ in 0..<200 {
            var bytes = (0..<Int.random(in: 1...2000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if Bool.random(using: &rng) { bytes.insert(contentsOf: FrameEncoder.magic, at: Int.random(in: 0..<bytes.count, using: &rng)) }
            decoder.append(bytes)
            while decoder.next() != nil {}
            #expect(decoder.buffered <= 4096 + 8)
        }
    }

    @Test func toolEventLines() throws {
        #expect(try ToolEvent.parse(#"{"type":"progress","amount":2}"#) == .report(.progress(amount: 2)))
        #expect(try ToolEvent.parse(#"{"type":"progress"}"#) == .report(.progress(amount: 1)))
        #expect(try ToolEvent.parse(#"{"type":"crash","signature":"SEGV in f","file":"crashes/c1"}"#)
                == .report(.crash(signature: "SEGV in f", data: [:], file: "crashes/c1")))
        #expect(try ToolEvent.parse(#"{"type":"file","path":"out/log.txt"}"#) == .sendFile(path: "out/log.txt"))
        #expect(throws: (any Error).self) { try ToolEvent.parse(#"{"type":"file","path":"../etc/passwd"}"#) }
        #expect(throws: (any Error).self) { try ToolEvent.parse(#"{"type":"progress","amount":-5}"#) }
        #expect(throws: (any Error).self) { try ToolEvent.parse("not json") }
    }

    @Test func safeNames() {
        #expect(FileChunk.isSafeName("a/b.txt"))
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/", String(repeating: "x", count: 300)] {
            #expect(!FileChunk.isSafeName(bad), "\(bad)")
        }
    }
}
