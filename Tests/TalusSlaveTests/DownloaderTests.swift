// The slave's downloader against the real API: a whole image through the hash/write pipeline,
// a resumed download (Range + If-Range with the remembered ETag), a stale partial file that
// starts over, and a checksum the part does not expect.

import Foundation
import Synchronization
import TalusAPITestSupport
import TalusTestSupport
import Testing
@testable import TalusSlave

@Suite("API downloads")
struct DownloaderTests {
    @Test func downloadsVerifiesResumesAndRefusesAnUnexpectedChecksum() async throws {
        let api = try await APITestServer.start("dl")
        do {
            let dir = try TestEnvironment.scratchDirectory("dl")
            // Not a multiple of the batch size; many batches through a shallow pipeline.
            let size = (3 << 20) + 12_345
            guard let contents = FileHandle(forReadingAtPath: "/dev/urandom")?.readData(ofLength: size), contents.count == size else {
                throw TestSupportError("cannot read /dev/urandom")
            }
            let sha = sha256Hex(contents)
            let id = try await api.insertReadyImage(contents: contents, sha256: sha)
            var downloader = APIDownloader(client: api.http, baseURL: api.baseURL, token: api.adminToken)
            downloader.batchBytes = 64 << 10
            downloader.maxBatchesInFlight = 3
            let url = downloader.imageURL(id.hex)

            // The whole file.
            let whole = dir + "/whole.partial"
            let first = try await downloader.download(url, to: whole, expectedSHA256: sha)
            #expect(first.sha256 == sha)
            #expect(first.size == Int64(size))
            #expect(FileManager.default.contents(atPath: whole) == contents)
            #expect(!FileManager.default.fileExists(atPath: whole + ".etag"))

            // A partial file with the ETag it came with: only the rest is fetched.
            let etag = try #require(try await api.request(.HEAD, "/api/v1/images/\(id.hex)/file", token: api.adminToken).header("ETag"))
            let resumed = dir + "/resumed.partial"
            let have = (1 << 20) + 777
            try contents.prefix(have).write(to: URL(fileURLWithPath: resumed))
            try etag.write(toFile: resumed + ".etag", atomically: true, encoding: .utf8)
            let received = Counter()
            let second = try await downloader.download(url, to: resumed, expectedSHA256: sha) { received.add($0) }
            #expect(second.sha256 == sha)
            #expect(second.size == Int64(size))
            #expect(received.value == size - have)
            #expect(FileManager.default.contents(atPath: resumed) == contents)

            // A partial file whose ETag the server no longer has: the server sends it all (200),
            // the stale bytes are dropped.
            let stale = dir + "/stale.partial"
            try Data(repeating: 0xAB, count: 5000).write(to: URL(fileURLWithPath: stale))
            try "\"not-the-etag\"".write(toFile: stale + ".etag", atomically: true, encoding: .utf8)
            let third = try await downloader.download(url, to: stale, expectedSHA256: sha)
            #expect(third.sha256 == sha)
            #expect(FileManager.default.contents(atPath: stale) == contents)

            // The API serves another file than the part expects: a permanent error, no retries.
            let other = String(repeating: "0", count: 64)
            await #expect {
                _ = try await downloader.download(url, to: dir + "/other.partial", expectedSHA256: other)
            } throws: { ($0 as? DownloadError)?.permanent == true }
        } catch {
            await api.stop()
            throw error
        }
        await api.stop()
    }
}

/// Bytes reported by a download's `onBytes`.
private final class Counter: Sendable {
    private let total = Mutex(0)
    func add(_ n: Int) { total.withLock { $0 += n } }
    var value: Int { total.withLock { $0 } }
}
