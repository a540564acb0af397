// The `code` collection (DESIGN §3, §8): one document per (name, kind, commit), written only by
// post-receive (and `talus-code record`), kept forever so a task can pin any recorded commit. The
// head of the main branch is kept in `state` (`_id: "code.head"`), so "the newest commit of a
// tool" means the tool as it is on main now, even after a force push or once the tool is deleted.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON
import Mongo
import TalusModel

/// The head of the main branch as last recorded.
public struct CodeHead: Codable, Sendable, Equatable {
    public static let id = "code.head"
    public var id: String
    public var branch: String
    public var commit: String
    public var committed: Date
    public var tools: [String]
    public var components: [String]
    public var updated: Date

    public init(branch: String, commit: String, committed: Date, tools: [String], components: [String], updated: Date = bsonNow()) {
        id = Self.id; self.branch = branch; self.commit = commit; self.committed = committed
        self.tools = tools; self.components = components; self.updated = updated
    }

    enum CodingKeys: String, CodingKey { case id = "_id", branch, commit, committed, tools, components, updated }
}

/// Reads and writes code records.
public struct CodeStore: Sendable {
    public let code: MongoCollection<CodeDocument>
    let state: MongoCollection<CodeHead>

    public init(database: MongoDatabase) {
        code = database.collection(CodeDocument.collection.rawValue, as: CodeDocument.self)
        state = database.collection(Collection.state.rawValue, as: CodeHead.self)
    }

    /// The indexes the hook and the bundle endpoint rely on (idempotent).
    public static let indexes: [IndexModel] = [
        IndexModel(keys: ["name": 1, "kind": 1, "commit": 1], options: .init(unique: true)),
        IndexModel(keys: ["commit": 1]),
    ]

    public func ensureIndexes() async throws {
        try await code.createIndexes(Self.indexes)
    }

    /// Records every unit of `check` (the units without problems) at the snapshot's commit, and
    /// moves the head to it. Idempotent: recording the same commit again changes nothing but the
    /// head's `updated`.
    @discardableResult
    public func record(_ snapshot: CodeSnapshot, check: RepositoryCheck, branch: String) async throws -> [CodeDocument] {
        guard let commit = snapshot.commit else { throw GitError("only a commit can be recorded") }
        var docs: [CodeDocument] = []
        for (key, manifest) in check.manifests.sorted(by: { $0.key < $1.key }) {
            let doc = CodeDocument(name: key.name, kind: key.kind, commit: commit, committed: snapshot.date,
                                   manifest: manifest, path: key.path)
            let filter: BSONDocument = ["name": .string(key.name), "kind": .string(key.kind.rawValue), "commit": .string(commit)]
            do {
                try await code.updateOne(filter, ["$setOnInsert": .document(try BSONEncoder().encode(doc))],
                                         options: UpdateOptions(upsert: true))
            } catch let e as MongoError where e.isDuplicateKey {
                // A concurrent recording of the same commit won the race: the document is there.
            }
            docs.append(doc)
        }
        let head = CodeHead(branch: branch, commit: commit, committed: snapshot.date,
                            tools: docs.filter { $0.kind == .tool }.map(\.name),
                            components: docs.filter { $0.kind == .component }.map(\.name))
        try await state.replaceOne(["_id": .string(CodeHead.id)], head, options: UpdateOptions(upsert: true))
        return docs
    }

    /// The recorded head of main, if any.
    public func head() async throws -> CodeHead? {
        try await state.findOne(["_id": .string(CodeHead.id)])
    }

    /// `name` (of `kind`) at `commit`.
    public func find(name: String, kind: CodeDocument.Kind = .tool, commit: String) async throws -> CodeDocument? {
        try await code.findOne(["name": .string(name), "kind": .string(kind.rawValue), "commit": .string(commit)])
    }

    /// What "the newest commit" of `name` means: the record at the head of main when the tool is
    /// there; nil when it is not on main any more (``latestRecorded(name:kind:)`` finds its last
    /// recording). Without a recorded head (an older database), the newest record by commit date.
    public func newest(name: String, kind: CodeDocument.Kind = .tool) async throws -> CodeDocument? {
        if let head = try await head() {
            return try await find(name: name, kind: kind, commit: head.commit)
        }
        return try await latestRecorded(name: name, kind: kind)
    }

    /// The most recent recording of `name`, by commit date, whether or not it is still on main.
    public func latestRecorded(name: String, kind: CodeDocument.Kind = .tool) async throws -> CodeDocument? {
        try await code.findOne(["name": .string(name), "kind": .string(kind.rawValue)],
                               options: FindOptions(sort: ["committed": -1, "_id": -1]))
    }

    /// Every recording of `name`, newest commit first (at most `limit`).
    public func history(name: String, kind: CodeDocument.Kind = .tool, limit: Int = 100) async throws -> [CodeDocument] {
        try await code.find(["name": .string(name), "kind": .string(kind.rawValue)],
                            options: FindOptions(sort: ["committed": -1, "_id": -1], limit: limit))
    }

    /// The record of `tool` at `commit`, or at the newest commit (the head of main) when nil;
    /// throws ``CodeLookupError`` saying what is wrong (what the API answers, and what task
    /// creation pins).
    public func resolve(tool: String, commit: String?) async throws -> CodeDocument {
        if let commit, !(commit.count == 40 && GitRepository.isFullOID(commit)) {
            throw CodeLookupError.badCommit("commit must be a full commit id (40 lowercase hex digits), not \"\(commit.prefix(80))\"")
        }
        guard ToolManifest.isValidName(tool) else { throw CodeLookupError.unknownTool("there is no tool named \"\(tool.prefix(80))\" (talus code list)") }
        if let commit {
            if let doc = try await find(name: tool, kind: .tool, commit: commit) { return doc }
        } else if let doc = try await newest(name: tool, kind: .tool) {
            return doc
        }
        guard let last = try await latestRecorded(name: tool, kind: .tool) else {
            throw CodeLookupError.unknownTool("there is no tool named \"\(tool)\" in the code repository (talus code list)")
        }
        if let commit {
            throw CodeLookupError.notRecorded("tool \(tool) is not recorded at commit \(commit) (its newest recording is \(last.commit); talus code show \(tool))")
        }
        throw CodeLookupError.notRecorded("tool \(tool) is not on the main branch any more; it was last recorded at \(last.commit): ask for that commit explicitly")
    }
}
