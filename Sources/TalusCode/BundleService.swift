// What the bundle endpoint does, without HTTP: resolve a tool name and an optional commit against
// the recorded tools, then get the bundle from the cache. Only recorded (name, commit) pairs are
// served: the pre-receive hook checked them, and nothing else of the repository is reachable.

import Foundation
import TalusModel

/// Why a bundle request cannot be answered; each case maps to one HTTP status.
public enum BundleRequestError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The commit is not a full lowercase hex commit id (400).
    case badCommit(String)
    /// No tool of that name was ever recorded (404).
    case unknownTool(String)
    /// The tool is not recorded at that commit, or not on main any more when no commit was
    /// given (404).
    case notRecorded(String)
    /// The recorded commit cannot be packed (422): a path trick or a missing component.
    case unbuildable(String)

    public var description: String {
        switch self {
        case .badCommit(let m), .unknownTool(let m), .notRecorded(let m), .unbuildable(let m): m
        }
    }
}

/// Tool bundles by name and commit.
public struct BundleService: Sendable {
    public let store: CodeStore
    public let cache: BundleCache

    public init(store: CodeStore, cache: BundleCache) {
        self.store = store
        self.cache = cache
    }

    /// The record of `tool` at `commit`, or at the newest commit (the head of main) when nil.
    public func resolve(tool: String, commit: String?) async throws -> CodeDocument {
        if let commit, !(commit.count == 40 && GitRepository.isFullOID(commit)) {
            throw BundleRequestError.badCommit("commit must be a full commit id (40 lowercase hex digits), not \"\(commit.prefix(80))\"")
        }
        guard ToolManifest.isValidName(tool) else { throw BundleRequestError.unknownTool("there is no tool named \"\(tool.prefix(80))\"") }
        if let commit {
            if let doc = try await store.find(name: tool, kind: .tool, commit: commit) { return doc }
        } else if let doc = try await store.newest(name: tool, kind: .tool) {
            return doc
        }
        guard let last = try await store.latestRecorded(name: tool, kind: .tool) else {
            throw BundleRequestError.unknownTool("there is no tool named \"\(tool)\" in the code repository (talus code list)")
        }
        if let commit {
            throw BundleRequestError.notRecorded("tool \(tool) is not recorded at commit \(commit) (its newest recording is \(last.commit))")
        }
        throw BundleRequestError.notRecorded("tool \(tool) is not on the main branch any more; it was last recorded at \(last.commit): ask for that commit explicitly")
    }

    /// The bundle of `tool` at `commit` (default: newest), with the record it was built for.
    public func bundle(tool: String, commit: String?) async throws -> (record: CodeDocument, bundle: CachedBundle) {
        let record = try await resolve(tool: tool, commit: commit)
        do {
            return (record, try await cache.bundle(tool: record.name, commit: record.commit))
        } catch let e as BundleError {
            throw BundleRequestError.unbuildable("tool \(tool) at \(record.commit) cannot be bundled: \(e.description)")
        }
    }
}
