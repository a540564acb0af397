// What the bundle endpoint does, without HTTP: resolve a tool name and an optional commit against
// the recorded tools, then get the bundle from the cache. Only recorded (name, commit) pairs are
// served: the pre-receive hook checked them, and nothing else of the repository is reachable.

import Foundation
import TalusModel

/// Why a tool cannot be found at a commit, or its bundle not built; each case maps to one HTTP
/// status.
public enum CodeLookupError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The commit is not a full lowercase hex commit id (400).
    case badCommit(String)
    /// No tool of that name was ever recorded (404).
    case unknownTool(String)
    /// The tool is not recorded at that commit, or not on main any more when no commit was
    /// given (404).
    case notRecorded(String)
    /// The recorded commit cannot be packed (422): a path trick or a missing component.
    case unbuildable(String)
    /// The commit is recorded but not in the repository the server reads (404; an operator's
    /// problem: the wrong `code.repository`, or a repository restored from an old backup).
    case notInRepository(String)

    public var description: String {
        switch self {
        case .badCommit(let m), .unknownTool(let m), .notRecorded(let m), .unbuildable(let m), .notInRepository(let m): m
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

    /// The bundle of `tool` at `commit` (default: newest), with the record it was built for.
    public func bundle(tool: String, commit: String?) async throws -> (record: CodeDocument, bundle: CachedBundle) {
        let record = try await store.resolve(tool: tool, commit: commit)
        do {
            return (record, try await cache.bundle(tool: record.name, commit: record.commit))
        } catch let e as BundleError where e.kind == .missingCommit {
            throw CodeLookupError.notInRepository("tool \(tool) is recorded at \(record.commit), but \(e.description); ask an administrator")
        } catch let e as BundleError {
            throw CodeLookupError.unbuildable("tool \(tool) at \(record.commit) cannot be bundled: \(e.description)")
        }
    }
}
