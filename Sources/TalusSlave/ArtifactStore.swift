// What a part needs from the cache: its image with the whole backing chain, and its tool bundle,
// fetched from the API when missing (DESIGN §7).

import BSON
import Foundation
import Logging
import TalusCore
import TalusModel

/// Images and tool bundles for parts, from the ``FileCache`` or the API.
public final class ArtifactStore: Sendable {
    public let cache: FileCache
    let downloader: APIDownloader?
    let logger: Logger
    let metrics: SlaveMetrics?
    private let checkedChains = ChainMemo()

    /// - Parameter downloader: nil when nothing may be downloaded (everything must be cached).
    public init(cache: FileCache, downloader: APIDownloader?, logger: Logger = Logger(label: "talus.slave.cache"),
                metrics: SlaveMetrics? = nil) {
        self.cache = cache
        self.downloader = downloader
        self.logger = logger
        self.metrics = metrics
    }

    /// The cache key of an image file: the master's file name (`<id>.qcow2`), so relative
    /// backing references between chain members resolve inside the cache.
    public static func imageKey(_ id: ObjectId) -> String { "images/\(id.hex).qcow2" }

    /// The cache key of a tool bundle.
    public static func bundleKey(name: String, commit: String) throws -> String {
        let ok: (String) -> Bool = { s in
            !s.isEmpty && s.count <= 200 && !s.hasPrefix(".") && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }
        }
        guard ok(name), ok(commit) else { throw CacheError("invalid tool name or commit: \(name)@\(commit)") }
        return "bundles/\(name)/\(commit).tar.gz"
    }

    /// The chain of `image`, top first; a part without a chain runs on the image alone.
    static func chain(of image: PartImage) -> [ImageChainEntry] {
        image.chain.isEmpty ? [ImageChainEntry(id: image.id, sha256: image.sha256, size: -1, backing: nil)] : image.chain
    }

    /// Makes sure the image and every file of its backing chain are cached and intact, pins them,
    /// and returns the path of the top file. Files are fetched in parallel.
    public func acquireImage(_ image: PartImage, logger: Logger? = nil) async throws -> ImageLease {
        let chain = Self.chain(of: image)
        guard chain.first?.id == image.id else { throw CacheError("the image chain of \(image.id.hex) does not start with it") }
        let keys = chain.map { Self.imageKey($0.id) }
        var acquired: [String] = []
        do {
            try await withThrowingTaskGroup(of: String.self) { group in
                for entry in chain {
                    group.addTask { try await self.acquireImageFile(entry, logger: logger ?? self.logger) }
                }
                for try await key in group { acquired.append(key) }
            }
            for entry in chain { try await checkBacking(entry) }
        } catch {
            for key in acquired { await cache.release(key) }
            throw error
        }
        return ImageLease(path: cache.path(keys[0]), keys: keys, store: self)
    }

    private func acquireImageFile(_ entry: ImageChainEntry, logger: Logger) async throws -> String {
        let key = Self.imageKey(entry.id)
        let fetch: CacheFetch? = downloader.map { downloader in
            let metrics = self.metrics
            return { partial in
                var log = logger
                log[metadataKey: "image"] = "\(entry.id.hex)"
                log.info("downloading image", metadata: ["bytes": "\(entry.size)"])
                let clock = ContinuousClock()
                let start = clock.now
                let result = try await downloader.download(downloader.imageURL(entry.id.hex), to: partial,
                                                           expectedSHA256: entry.sha256,
                                                           onBytes: { metrics?.imageSyncBytes.increment(by: $0) })
                let took = clock.now - start
                metrics?.imageSyncSeconds.record(duration: took)
                log.info("image downloaded", metadata: ["bytes": "\(result.size)", "seconds": "\(took)"])
                return result
            }
        }
        _ = try await cache.acquire(key, sha256: entry.sha256, fetch: fetch)
        return key
    }

    /// Refuses a chain member whose backing reference would not resolve in the cache.
    private func checkBacking(_ entry: ImageChainEntry) async throws {
        let key = Self.imageKey(entry.id) + "@" + entry.sha256
        if await checkedChains.contains(key) { return }
        let result = try await runCommand("qemu-img", ["info", "--output=json", "-U", cache.path(Self.imageKey(entry.id))],
                                          timeout: .seconds(60))
        struct Info: Decodable { var format: String?; var backingFilename: String?
            enum CodingKeys: String, CodingKey { case format; case backingFilename = "backing-filename" } }
        let info = try JSONDecoder().decode(Info.self, from: Data(result.stdout.utf8))
        let expected = entry.backing.map { "\($0.hex).qcow2" }
        guard info.backingFilename == expected else {
            throw CacheError("image \(entry.id.hex) has backing file \(info.backingFilename ?? "none"), expected \(expected ?? "none") (a relative name in the same directory)")
        }
        await checkedChains.insert(key)
    }

    /// Makes sure the tool bundle `name@commit` is cached, pins it and returns its lease.
    public func acquireBundle(name: String, commit: String) async throws -> BundleLease {
        let key = try Self.bundleKey(name: name, commit: commit)
        var fetch: CacheFetch?
        if let downloader {
            let url = downloader.bundleURL(name: name, commit: commit)
            fetch = { partial in try await downloader.download(url, to: partial) }
        }
        let path = try await cache.acquire(key, sha256: nil, fetch: fetch)
        return BundleLease(path: path, key: key, store: self)
    }

    func release(_ keys: [String]) async {
        for key in keys { await cache.release(key) }
    }
}

private actor ChainMemo {
    var seen = Set<String>()
    func contains(_ key: String) -> Bool { seen.contains(key) }
    func insert(_ key: String) { seen.insert(key) }
}

/// An image chain pinned in the cache for one part.
public struct ImageLease: Sendable {
    /// The top image file; overlays are created on it.
    public let path: String
    let keys: [String]
    let store: ArtifactStore
    public func release() async { await store.release(keys) }
}

/// A tool bundle pinned in the cache for one part.
public struct BundleLease: Sendable {
    public let path: String
    let key: String
    let store: ArtifactStore
    public func release() async { await store.release([key]) }
}
