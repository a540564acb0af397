import Foundation
import Testing
@testable import TalusCore

@Suite struct HashingTests {
    @Test func sha256OfBytesMatchesTheKnownDigests() throws {
        #expect(hexString(sha256([UInt8]())) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hexString(sha256(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let path = NSTemporaryDirectory() + "talus-hash-\(UUID().uuidString)"
        try Data("abc".utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try sha256OfFile(path)
        #expect(file.hex == hexString(sha256(Array("abc".utf8))))
        #expect(file.size == 3)
    }
}
