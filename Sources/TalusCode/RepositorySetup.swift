// Creating the code repository: a bare git repository with the hooks installed, and the template
// (example tools and components) pushed as its first commit, so the hooks check and record it
// like any other push.

import Foundation
import TalusAgent
import TalusCore

/// Creates and maintains the bare code repository.
public enum CodeRepositorySetup {
    /// The first commit's author.
    public static let author = (name: "Talus", email: "talus@localhost")

    /// Creates the bare repository at `path` (which must not exist or be an empty directory),
    /// installs hooks that run `hookExecutable`, and pushes `template` as the first commit of
    /// `branch`. Returns the commit and what the hooks printed.
    public static func create(at path: String, template: String, hookExecutable: String, configPath: String?,
                              branch: String = "main", sharedGroup: Bool = true, allowForcePush: Bool = true) async throws -> (commit: String, output: String) {
        let fm = FileManager.default
        if fm.fileExists(atPath: path), !((try? fm.contentsOfDirectory(atPath: path))?.isEmpty ?? false) {
            throw GitError("\(path) exists and is not empty; choose a new path (or use install-hooks on an existing repository)")
        }
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: template + "/tools", isDirectory: &isDir), isDir.boolValue else {
            throw GitError("\(template) is not a code repository template (it has no tools/ directory)")
        }
        var initArgs = ["init", "--quiet", "--bare", "--initial-branch=" + branch]
        if sharedGroup { initArgs.append("--shared=group") }
        try await runCommand("git", initArgs + [path])
        let repo = GitRepository(path: path)
        // Check every object pushed (no malformed trees, no `..` names), and keep reflogs so a
        // force push can be undone by an administrator.
        _ = try await repo.git(["config", "receive.fsckObjects", "true"])
        _ = try await repo.git(["config", "core.logAllRefUpdates", "true"])
        // Force pushes are allowed (`--shared` turns them off): the hooks handle them, and every
        // recorded commit stays reachable through refs/talus/recorded/. Set it to true to forbid them.
        _ = try await repo.git(["config", "receive.denyNonFastForwards", allowForcePush ? "false" : "true"])
        try installHooks(repository: path, executable: hookExecutable, configPath: configPath)

        let work = NSTemporaryDirectory() + "talus-code-init-" + randomToken(bytes: 6)
        try fm.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: work) }
        let env = ["GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email,
                   "GIT_COMMITTER_NAME": author.name, "GIT_COMMITTER_EMAIL": author.email,
                   "GIT_CONFIG_NOSYSTEM": "1", "HOME": work]
        func git(_ args: [String]) async throws -> CommandResult {
            try await runCommand("git", args, workingDirectory: work, environment: env)
        }
        _ = try await git(["init", "--quiet", "--initial-branch=" + branch])
        try await runCommand("cp", ["-R", "-p", template + "/.", work])
        try fm.createDirectory(atPath: work + "/schemas", withIntermediateDirectories: true)
        try (ManifestSchema.text + "\n").write(toFile: work + "/schemas/talus-tool.schema.json", atomically: true, encoding: .utf8)
        _ = try await git(["add", "--all"])
        _ = try await git(["commit", "--quiet", "-m", "Talus code repository template"])
        let push = try await git(["push", "--quiet", path, "HEAD:refs/heads/" + branch])
        guard let commit = try await repo.resolveCommit("refs/heads/" + branch) else {
            throw GitError("the template was not pushed to \(path): \(push.stderr)")
        }
        return (commit, push.stderr + push.stdout)
    }

    /// Writes `hooks/pre-receive` and `hooks/post-receive` of the bare repository at `repository`
    /// to run `executable hook <name>` (with `--config configPath` when given).
    public static func installHooks(repository: String, executable: String, configPath: String?) throws {
        let hooks = repository + "/hooks"
        try FileManager.default.createDirectory(atPath: hooks, withIntermediateDirectories: true)
        for name in ["pre-receive", "post-receive"] {
            let config = configPath.map { " --config " + shellQuote($0) } ?? ""
            let script = """
                #!/bin/sh
                # Talus code repository hook, written by `talus-code init` / `talus-code install-hooks`.
                # Do not edit: run `talus-code install-hooks` again instead.
                exec \(shellQuote(executable)) hook \(name)\(config)

                """
            let path = hooks + "/" + name
            try script.write(toFile: path, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
        }
    }
}
