// Built bundles on disk, by tool and commit: `<dir>/v1/<name>/<commit>.tar.gz` and its
// `.sha256`. A commit's bundle never changes, so an entry is valid forever; files are written to
// a temporary name and renamed, so a reader never sees half a bundle, and one build runs per
// (name, commit) however many requests ask at once.

import Foundation
import TalusCore
import TalusModel

/// A bundle in the cache.
public struct CachedBundle: Sendable, Equatable {
    public let tool: String
    public let commit: String
    /// The tar.gz file.
    public let path: String
    public let sha256: String
    public let size: Int64
}

/// The bundle cache of the API.
public actor BundleCache {
    public let directory: String
    public let repository: GitRepository
    private var building: [String: Task<CachedBundle, any Error>] = [:]

    /// Bundle layout version: a change of the layout changes the directory, never old entries.
    static let layout = "v1"

    public init(directory: String, repository: GitRepository) {
        self.directory = directory
        self.repository = repository
    }

    /// The bundle of `tool` at `commit` (a full commit id), built on first use.
    /// Throws ``BundleError`` when it cannot be built.
    public func bundle(tool: String, commit: String) async throws -> CachedBundle {
        guard ToolManifest.isValidName(tool), GitRepository.isFullOID(commit) else {
            throw BundleError(.notFound, "no bundle for \(tool) at \(commit)")
        }
        let key = tool + "@" + commit
        if let cached = try cached(tool: tool, commit: commit) { return cached }
        if let running = building[key] { return try await running.value }
        let task = Task { try await self.build(tool: tool, commit: commit) }
        building[key] = task
        defer { building[key] = nil }
        return try await task.value
    }

    private func paths(tool: String, commit: String) -> (dir: String, bundle: String, sha: String) {
        let dir = "\(directory)/\(Self.layout)/\(tool)"
        return (dir, "\(dir)/\(commit).tar.gz", "\(dir)/\(commit).sha256")
    }

    private func cached(tool: String, commit: String) throws -> CachedBundle? {
        let p = paths(tool: tool, commit: commit)
        guard let shaData = FileManager.default.contents(atPath: p.sha),
              let attributes = try? FileManager.default.attributesOfItem(atPath: p.bundle),
              let size = (attributes[.size] as? NSNumber)?.int64Value else { return nil }
        let sha = String(decoding: shaData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard sha.count == 64 else { return nil }
        return CachedBundle(tool: tool, commit: commit, path: p.bundle, sha256: sha, size: size)
    }

    private func build(tool: String, commit: String) async throws -> CachedBundle {
        guard try await repository.resolveCommit(commit) == commit else {
            throw BundleError(.missingCommit, "commit \(commit) is not in the code repository \(repository.path)")
        }
        let snapshot = try await CodeSnapshot.load(repository, commit: commit)
        let bundle = try await BundleBuilder.build(tool: tool, from: snapshot)
        let p = paths(tool: tool, commit: commit)
        try FileManager.default.createDirectory(atPath: p.dir, withIntermediateDirectories: true)
        // The sha first, then the bundle: a bundle file present means its sha is there too.
        try writeAtomically(Array((bundle.sha256 + "\n").utf8), to: p.sha)
        try writeAtomically(bundle.bytes, to: p.bundle)
        return CachedBundle(tool: tool, commit: commit, path: p.bundle, sha256: bundle.sha256, size: Int64(bundle.bytes.count))
    }
}

/// Writes `bytes` to a temporary file next to `path`, flushes it, and renames it over `path`.
func writeAtomically(_ bytes: [UInt8], to path: String) throws {
    let temp = path + ".tmp-" + randomToken(bytes: 6)
    let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw POSIXErrorWithPath(errno: errno, path: temp) }
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            let e = errno
            close(fd); unlink(temp)
            throw POSIXErrorWithPath(errno: e, path: temp)
        }
        offset += n
    }
    fsync(fd)
    close(fd)
    guard rename(temp, path) == 0 else {
        let e = errno
        unlink(temp)
        throw POSIXErrorWithPath(errno: e, path: path)
    }
}
