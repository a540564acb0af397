// The cache on its own: one fetch however many parts wait, sha256 checks that notice flipped
// bytes, least-recently-used eviction that never touches a file in use. The fetches here write
// local bytes (the HTTP path is tested against the real API).

import Foundation
import Synchronization
import TalusCore
import TalusTestSupport
import Testing
@testable import TalusSlave

private func sha256Hex(_ data: Data) throws -> String {
    let path = try TestEnvironment.scratchDirectory("sha") + "/f"
    try data.write(to: URL(fileURLWithPath: path))
    return try sha256OfFile(path).hex
}

/// How often a fetch ran.
private final class Calls: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

/// A fetch that writes `bytes` and counts how often it ran.
private func countingFetch(_ bytes: Data, calls: Calls, delay: Duration = .zero) -> CacheFetch {
    { partial in
        calls.increment()
        try await Task.sleep(for: delay)
        try bytes.write(to: URL(fileURLWithPath: partial))
        let result = try sha256OfFile(partial)
        return (result.hex, result.size)
    }
}

@Suite("File cache")
struct FileCacheTests {
    @Test func concurrentAcquiresFetchOnce() async throws {
        let cache = try FileCache(root: try TestEnvironment.scratchDirectory("cache"), maxBytes: 1 << 30)
        let bytes = Data((0..<100_000).map { UInt8(truncatingIfNeeded: $0) })
        let sha = try sha256Hex(bytes)
        let calls = Calls()
        let fetch = countingFetch(bytes, calls: calls, delay: .milliseconds(300))
        let paths = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<12 { group.addTask { try await cache.acquire("images/a.qcow2", sha256: sha, fetch: fetch) } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(calls.value == 1)
        #expect(Set(paths).count == 1)
        #expect(FileManager.default.contents(atPath: paths[0]) == bytes)
        #expect(await cache.pinCount("images/a.qcow2") == 12)
    }

    @Test func flippedBytesAreDetectedAndFetchedAgain() async throws {
        let root = try TestEnvironment.scratchDirectory("cache")
        let cache = try FileCache(root: root, maxBytes: 1 << 30)
        let bytes = Data((0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let sha = try sha256Hex(bytes)
        let calls = Calls()
        let fetch = countingFetch(bytes, calls: calls)
        let path = try await cache.acquire("images/b.qcow2", sha256: sha, fetch: fetch)
        await cache.release("images/b.qcow2")
        _ = try await cache.acquire("images/b.qcow2", sha256: sha, fetch: fetch)
        await cache.release("images/b.qcow2")
        #expect(calls.value == 1, "an intact cached file is used as it is")

        // Flip bytes in place (as disk corruption or a stray writer would).
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: 1234)
        handle.write(Data([0xFF, 0x00, 0xFF]))
        try handle.close()
        _ = try await cache.acquire("images/b.qcow2", sha256: sha, fetch: fetch)
        #expect(calls.value == 2, "the corrupted copy was replaced")
        #expect(FileManager.default.contents(atPath: path) == bytes)
        await cache.release("images/b.qcow2")

        // Corruption that keeps size and mtime is found by `always`, and by a new process
        // (metadata read from disk) once the check is older than the interval.
        var st = stat()
        stat(path, &st)
        let handle2 = try #require(FileHandle(forUpdatingAtPath: path))
        try handle2.seek(toOffset: 10)
        handle2.write(Data([0xAA]))
        try handle2.close()
        var times = [st.st_atim, st.st_mtim]
        utimensat(AT_FDCWD, path, &times, 0)
        let strict = try FileCache(root: root, maxBytes: 1 << 30, policy: .always)
        _ = try await strict.acquire("images/b.qcow2", sha256: sha, fetch: fetch)
        #expect(calls.value == 3)
        #expect(FileManager.default.contents(atPath: path) == bytes)
    }

    @Test func aWrongFetchIsRefusedAndNothingIsCached() async throws {
        let cache = try FileCache(root: try TestEnvironment.scratchDirectory("cache"), maxBytes: 1 << 30)
        let calls = Calls()
        await #expect(throws: CacheError.self) {
            _ = try await cache.acquire("images/c.qcow2", sha256: String(repeating: "0", count: 64),
                                        fetch: countingFetch(Data("not it".utf8), calls: calls))
        }
        #expect(await cache.keys.isEmpty)
        await #expect(throws: CacheError.self) { _ = try await cache.acquire("images/d.qcow2", sha256: nil, fetch: nil) }
    }

    @Test func leastRecentlyUsedFilesGoFirstAndFilesInUseNever() async throws {
        let root = try TestEnvironment.scratchDirectory("cache")
        let cache = try FileCache(root: root, maxBytes: 25_000)
        let calls = Calls()
        func file(_ n: UInt8) -> Data { Data(repeating: n, count: 10_000) }
        for n in UInt8(1)...3 {
            _ = try await cache.acquire("images/\(n).qcow2", sha256: try sha256Hex(file(n)), fetch: countingFetch(file(n), calls: calls))
        }
        // All three pinned: over the budget, but nothing may go.
        #expect(await cache.keys.count == 3)
        await cache.release("images/3.qcow2")
        #expect(await cache.keys == ["images/1.qcow2", "images/2.qcow2"], "the only unpinned file went")
        await cache.release("images/1.qcow2")
        await cache.release("images/2.qcow2")
        // Use 1 again, then bring in 4: 2 is now the least recently used.
        _ = try await cache.acquire("images/1.qcow2", sha256: try sha256Hex(file(1)), fetch: nil)
        await cache.release("images/1.qcow2")
        _ = try await cache.acquire("images/4.qcow2", sha256: try sha256Hex(file(4)), fetch: countingFetch(file(4), calls: calls))
        #expect(await cache.keys == ["images/1.qcow2", "images/4.qcow2"])
        #expect(await cache.totalBytes == 20_000)
        // A new process sees the same files.
        let reopened = try FileCache(root: root, maxBytes: 25_000)
        #expect(await reopened.keys == ["images/1.qcow2", "images/4.qcow2"])
        #expect(try await reopened.acquire("images/4.qcow2", sha256: try sha256Hex(file(4)), fetch: nil).hasSuffix("images/4.qcow2"))
    }

    @Test func addedFilesKeepTheirChecksum() async throws {
        let dir = try TestEnvironment.scratchDirectory("cache")
        let source = dir + "/source.bin"
        try Data("bundle bytes".utf8).write(to: URL(fileURLWithPath: source))
        let cache = try FileCache(root: dir + "/c", maxBytes: 1 << 20)
        let sha = try await cache.add("bundles/t/abc.tar.gz", copying: source)
        #expect(sha == (try sha256OfFile(source).hex))
        // Bundles are asked for without a checksum: the recorded one is used.
        let path = try await cache.acquire("bundles/t/abc.tar.gz", sha256: nil, fetch: nil)
        #expect(FileManager.default.contents(atPath: path) == Data("bundle bytes".utf8))
    }
}
