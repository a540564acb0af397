import BSON
import Foundation
import Mongo
import TalusCode
import TalusCore
import TalusModel
import TalusTestSupport

/// A real code repository for one test: created by the built `talus-code init` (hooks that run
/// the built binary, the template pushed and recorded), a clone to commit in, and a database of
/// its own on the shared SecantusDB.
final class CodeRepositoryFixture: @unchecked Sendable {
    // Used by one test at a time; the client is thread-safe.
    let dir: String
    let bare: String
    let clone: String
    let databaseName: String
    let client: MongoClient
    let store: CodeStore
    let talusCode: String

    /// The environment of every git command: an isolated HOME and identity, and the hook's
    /// database settings (git passes them on to the hooks).
    var env: [String: String] {
        ["HOME": dir, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "Tess Author", "GIT_AUTHOR_EMAIL": "tess@example.org",
         "GIT_COMMITTER_NAME": "Tess Author", "GIT_COMMITTER_EMAIL": "tess@example.org",
         "TALUS_MONGO_URI": mongoURI, "TALUS_MONGO_DATABASE": databaseName, "TALUS_LOG_LEVEL": "warning"]
    }
    let mongoURI: String

    private init(dir: String, mongoURI: String, databaseName: String, client: MongoClient, talusCode: String) {
        self.dir = dir
        bare = dir + "/code.git"
        clone = dir + "/work"
        self.mongoURI = mongoURI
        self.databaseName = databaseName
        self.client = client
        store = CodeStore(database: client.database(databaseName))
        self.talusCode = talusCode
    }

    /// Creates the repository with `talus-code init` and clones it.
    static func make(_ name: String = "code") async throws -> CodeRepositoryFixture {
        let dir = try TestEnvironment.scratchDirectory(name)
        let uri = try TestEnvironment.mongoURI()
        let db = uniqueName("code")
        let f = CodeRepositoryFixture(dir: dir, mongoURI: uri, databaseName: db, client: try MongoClient(uri: uri),
                                      talusCode: try TestEnvironment.executable("talus-code"))
        let r = try await runCommand(f.talusCode, ["init", f.bare, "--template", try TestEnvironment.repositoryRoot() + "/code-template"],
                                     environment: f.env, timeout: .seconds(120))
        f.initOutput = r.stdout + r.stderr
        try await f.git(["clone", "--quiet", f.bare, f.clone], in: dir)
        return f
    }

    var initOutput = ""

    /// Runs git in the clone (or `directory`); throws on failure.
    @discardableResult
    func git(_ args: [String], in directory: String? = nil) async throws -> CommandResult {
        try await runCommand("git", args, workingDirectory: directory ?? clone, environment: env, timeout: .seconds(120))
    }

    /// Runs git in the clone and returns the result whatever the status.
    func gitResult(_ args: [String]) async throws -> CommandResult {
        try await runCommand("git", args, workingDirectory: clone, environment: env, timeout: .seconds(120), check: false)
    }

    /// Writes `text` to `path` in the clone (creating directories).
    func write(_ path: String, _ text: String, executable: Bool = false) throws {
        let full = clone + "/" + path
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: full, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: executable ? 0o755 : 0o644], ofItemAtPath: full)
    }

    /// Commits everything and pushes `HEAD` to `ref` (default main). Returns (succeeded, output).
    func commitAndPush(_ message: String, to ref: String = "main", force: Bool = false) async throws -> (ok: Bool, output: String) {
        try await git(["add", "--all"])
        try await git(["commit", "--quiet", "--allow-empty", "-m", message])
        return try await push(to: ref, force: force)
    }

    func push(_ refspec: String? = nil, to ref: String = "main", force: Bool = false) async throws -> (ok: Bool, output: String) {
        var args = ["push", "origin", refspec ?? "HEAD:refs/heads/\(ref)"]
        if force { args.insert("--force", at: 1) }
        let r = try await gitResult(args)
        return (r.status == 0, r.stdout + r.stderr)
    }

    /// The commit `rev` names in the bare repository (nil when none).
    func remoteCommit(_ rev: String = "refs/heads/main") async throws -> String? {
        try await GitRepository(path: bare).resolveCommit(rev)
    }

    func head() async throws -> String {
        try await git(["rev-parse", "HEAD"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Every code document, for "the database is unchanged" checks.
    func allRecords() async throws -> [CodeDocument] {
        try await store.code.find([:], options: FindOptions(sort: ["_id": 1]))
    }

    func records(at commit: String) async throws -> [CodeDocument] {
        try await store.code.find(["commit": .string(commit)], options: FindOptions(sort: ["kind": 1, "name": 1]))
    }

    func close() async {
        try? await client.database(databaseName).drop()
        await client.close()
    }
}

/// The manifest text of a small valid tool.
func toolManifest(_ name: String, params: String = "[]", components: String = "[]", entry: String = "./run.sh") -> String {
    """
    {
      "name": "\(name)",
      "description": "test tool \(name)",
      "entry": "\(entry)",
      "params": \(params),
      "components": \(components)
    }
    """
}
