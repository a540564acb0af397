// The slave's file cache (DESIGN §7): images and tool bundles under one size budget. Every file is
// identified by its sha256; it is fetched at most once at a time however many parts wait for it,
// written to a temporary file and renamed into place only once its sha256 matched, checked again
// before use (see `CacheVerifyPolicy`), and evicted least-recently-used past the budget, never
// while a part uses it.

import Foundation
import Logging
import TalusCore

/// A cached file could not be provided.
public struct CacheError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Fetches one file into `partialPath` (which may already hold the first bytes of an earlier,
/// interrupted fetch, to be resumed) and returns the sha256 and size of the complete file.
public typealias CacheFetch = @Sendable (_ partialPath: String) async throws -> (sha256: String, size: Int64)

/// A file cache with single-flight fetches, sha256 verification and LRU eviction.
public actor FileCache {
    /// What the cache remembers about a file, in `<file>.meta.json` next to it.
    struct Meta: Codable, Sendable, Equatable {
        var sha256: String
        var size: Int64
        var mtimeNs: Int64
        var inode: UInt64
        /// When the whole file was last hashed.
        var verified: Date
        var lastUsed: Date
    }

    struct Entry {
        var meta: Meta?
        var size: Int64
        var lastUsed: Date
    }

    public nonisolated let root: String
    public let maxBytes: Int64
    let policy: CacheVerifyPolicy
    let verifyInterval: Duration
    let logger: Logger
    let metrics: SlaveMetrics?
    private var entries: [String: Entry] = [:]
    private var pins: [String: Int] = [:]
    private var inflight: [String: Task<Void, any Error>] = [:]

    /// Opens the cache in `root` (created if missing), reading what is already there.
    public init(root: String, maxBytes: Int64, policy: CacheVerifyPolicy = .changed, verifyInterval: Duration = .seconds(86400),
                logger: Logger = Logger(label: "talus.slave.cache"), metrics: SlaveMetrics? = nil) throws {
        self.root = root
        self.maxBytes = maxBytes
        self.policy = policy
        self.verifyInterval = verifyInterval
        self.logger = logger
        self.metrics = metrics
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/tmp", withIntermediateDirectories: true)
        // QEMU runs as another user and must reach the images through these directories.
        chmod(root, 0o755)
        entries = FileCache.scan(root)
    }

    /// The absolute path of `key` (a relative path such as `images/<id>.qcow2`).
    public nonisolated func path(_ key: String) -> String { root + "/" + key }

    /// Bytes of all cached files.
    public var totalBytes: Int64 { entries.values.reduce(0) { $0 + $1.size } }

    /// Keys currently cached.
    public var keys: [String] { entries.keys.sorted() }

    /// Makes sure `key` holds a file whose sha256 is `sha256` — checking a cached copy, or
    /// fetching it with `fetch` — and pins it until ``release(_:)``. Returns its path.
    ///
    /// - Parameter sha256: the expected sha256, or nil to accept what `fetch` returns (the
    ///   fetch verifies it against the server's own checksum) or any cached copy whose recorded
    ///   checksum still matches its bytes.
    public func acquire(_ key: String, sha256: String?, fetch: CacheFetch?) async throws -> String {
        precondition(!key.hasPrefix("/") && !key.contains(".."), "cache keys are relative paths")
        while true {
            if let running = inflight[key] {
                // Someone is checking or fetching this file: its outcome serves this caller too.
                try await running.value
                if justVerified(key, sha256) { break }
                continue
            }
            if let meta = entries[key]?.meta, sha256 == nil || meta.sha256 == sha256, isStillValid(key, meta) { break }
            let task = Task {
                // Cleared by the task itself, in the same actor turn as its end, so waiters that
                // wake up find either the file or no fetch in flight.
                defer { self.inflight[key] = nil }
                try await self.verifyOrFetch(key, sha256: sha256, fetch: fetch)
            }
            inflight[key] = task
            try await task.value
            if justVerified(key, sha256) { break }
            // Evicted or replaced between the check and now: check again.
        }
        pin(key)
        return path(key)
    }

    /// The file was verified or fetched a moment ago and is still there.
    private func justVerified(_ key: String, _ sha256: String?) -> Bool {
        guard let meta = entries[key]?.meta, sha256 == nil || meta.sha256 == sha256 else { return false }
        return FileCache.stat(path(key)).map { $0.size == meta.size && $0.mtimeNs == meta.mtimeNs && $0.inode == meta.inode } ?? false
    }

    /// Unpins `key` (once per ``acquire(_:sha256:fetch:)``) and evicts past the budget.
    public func release(_ key: String) {
        if let n = pins[key] { pins[key] = n > 1 ? n - 1 : nil }
        evictIfNeeded()
    }

    /// Puts a copy of the local file `source` into the cache as `key` (pre-loading a host without
    /// a download, and tests). Returns its sha256.
    @discardableResult
    public func add(_ key: String, copying source: String) async throws -> String {
        precondition(!key.hasPrefix("/") && !key.contains(".."), "cache keys are relative paths")
        while let running = inflight[key] { _ = await running.result }
        let copy: CacheFetch = { partial in
            try? FileManager.default.removeItem(atPath: partial)
            try FileManager.default.copyItem(atPath: source, toPath: partial)
            let result = try await blockingIO { try sha256OfFile(partial) }
            return (result.hex, result.size)
        }
        deleteFiles(key)
        let task = Task {
            defer { self.inflight[key] = nil }
            try await self.verifyOrFetch(key, sha256: nil, fetch: copy)
        }
        inflight[key] = task
        try await task.value
        return entries[key]?.meta?.sha256 ?? ""
    }

    /// Removes a cached file (not while pinned); for operators and tests.
    public func remove(_ key: String) throws {
        guard pins[key] == nil else { throw CacheError("\(key) is in use") }
        deleteFiles(key)
    }

    /// How many parts use `key` now.
    public func pinCount(_ key: String) -> Int { pins[key] ?? 0 }

    // MARK: - Internals

    private func pin(_ key: String) {
        pins[key, default: 0] += 1
        let now = Date()
        entries[key]?.lastUsed = now
        if var meta = entries[key]?.meta {
            meta.lastUsed = now
            entries[key]?.meta = meta
            writeMeta(key, meta)
        }
    }

    /// True when the file still looks like the one last verified (cheap: one stat) and policy
    /// does not ask for a full hash now.
    private func isStillValid(_ key: String, _ meta: Meta) -> Bool {
        guard policy == .changed, let st = FileCache.stat(path(key)) else { return false }
        guard st.size == meta.size, st.mtimeNs == meta.mtimeNs, st.inode == meta.inode else {
            logger.info("cached file changed on disk: checking it again", metadata: ["file": "\(key)"])
            return false
        }
        return Date().timeIntervalSince(meta.verified) < verifyInterval.secondsDouble
    }

    private func verifyOrFetch(_ key: String, sha256 expected: String?, fetch: CacheFetch?) async throws {
        let file = path(key)
        if FileManager.default.fileExists(atPath: file) {
            // A file put here by another process (`add` from a pre-loading tool) carries its
            // checksum in its metadata file.
            let known = entries[key]?.meta?.sha256 ?? FileCache.readMeta(path(key))?.sha256
            let clock = ContinuousClock()
            let start = clock.now
            let (hex, size) = try await blockingIO { try sha256OfFile(file) }
            metrics?.imageVerifySeconds.record(duration: clock.now - start)
            if let wanted = expected ?? known, hex == wanted {
                try record(key, sha256: hex, size: size)
                logger.debug("cached file verified", metadata: ["file": "\(key)", "bytes": "\(size)"])
                return
            }
            logger.warning("cached file does not match its sha256: fetching it again",
                           metadata: ["file": "\(key)", "sha256": "\(hex)", "expected": "\(expected ?? known ?? "unknown")"])
            deleteFiles(key)
        }
        guard let fetch else { throw CacheError("\(key) is not cached and there is no source to fetch it from") }
        let partial = root + "/tmp/" + key.replacingOccurrences(of: "/", with: "__") + ".part"
        let (hex, _) = try await fetch(partial)
        if let expected, hex != expected {
            try? FileManager.default.removeItem(atPath: partial)
            throw CacheError("\(key): fetched file has sha256 \(hex), expected \(expected)")
        }
        try FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        chmod((file as NSString).deletingLastPathComponent, 0o755)
        chmod(partial, 0o644)
        guard rename(partial, file) == 0 else { throw POSIXErrorWithPath(errno: errno, path: file) }
        let size = FileCache.stat(file)?.size ?? 0
        try record(key, sha256: hex, size: size)
        evictIfNeeded()
    }

    private func record(_ key: String, sha256: String, size: Int64) throws {
        guard let st = FileCache.stat(path(key)) else { throw CacheError("\(key) vanished while being recorded") }
        let now = Date()
        let meta = Meta(sha256: sha256, size: st.size, mtimeNs: st.mtimeNs, inode: st.inode, verified: now,
                        lastUsed: entries[key]?.lastUsed ?? now)
        entries[key] = Entry(meta: meta, size: st.size, lastUsed: meta.lastUsed)
        writeMeta(key, meta)
    }

    private func writeMeta(_ key: String, _ meta: Meta) {
        let target = path(key) + ".meta.json"
        do {
            let data = try JSONEncoder().encode(meta)
            try data.write(to: URL(fileURLWithPath: target), options: .atomic)
        } catch {
            logger.warning("cannot write cache metadata", metadata: ["file": "\(target)", "error": "\(error)"])
        }
    }

    private func deleteFiles(_ key: String) {
        try? FileManager.default.removeItem(atPath: path(key))
        try? FileManager.default.removeItem(atPath: path(key) + ".meta.json")
        entries[key] = nil
    }

    private func evictIfNeeded() {
        var total = totalBytes
        guard total > maxBytes else { return }
        let candidates = entries.filter { pins[$0.key] == nil && inflight[$0.key] == nil }.sorted { $0.value.lastUsed < $1.value.lastUsed }
        for (key, entry) in candidates where total > maxBytes {
            logger.info("evicting from the cache", metadata: ["file": "\(key)", "bytes": "\(entry.size)"])
            deleteFiles(key)
            metrics?.cacheEvictions.increment()
            total -= entry.size
        }
        if total > maxBytes {
            logger.warning("the cache is over its budget with files in use",
                           metadata: ["bytes": "\(total)", "budget": "\(maxBytes)"])
        }
    }

    struct FileStat { var size: Int64; var mtimeNs: Int64; var inode: UInt64 }

    static func stat(_ path: String) -> FileStat? {
        var st = Glibc.stat()
        guard fstatat(AT_FDCWD, path, &st, 0) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return FileStat(size: Int64(st.st_size), mtimeNs: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
                        inode: UInt64(st.st_ino))
    }

    /// The metadata recorded next to the cached file at `file`, if any.
    static func readMeta(_ file: String, _ decoder: JSONDecoder = JSONDecoder()) -> Meta? {
        (try? Data(contentsOf: URL(fileURLWithPath: file + ".meta.json"))).flatMap { try? decoder.decode(Meta.self, from: $0) }
    }

    /// Cached files (with their metadata when present) below `root`.
    static func scan(_ root: String) -> [String: Entry] {
        var out: [String: Entry] = [:]
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: root) else { return out }
        let decoder = JSONDecoder()
        while let relative = walker.nextObject() as? String {
            if relative.hasPrefix("tmp") || relative.hasSuffix(".meta.json") { continue }
            guard let st = stat(root + "/" + relative) else { continue }
            var meta = readMeta(root + "/" + relative, decoder)
            if let m = meta, m.size != st.size || m.mtimeNs != st.mtimeNs || m.inode != st.inode { meta?.verified = .distantPast }
            let lastUsed = meta?.lastUsed ?? Date(timeIntervalSince1970: Double(st.mtimeNs) / 1e9)
            out[relative] = Entry(meta: meta, size: st.size, lastUsed: lastUsed)
        }
        return out
    }
}
