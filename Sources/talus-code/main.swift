// talus-code: the code repository's git hooks and its administration (DESIGN §8).
//
//   talus-code init /var/lib/talus/code.git            create the bare repository, hooks, template
//   talus-code hook pre-receive|post-receive            run by git (installed by init)
//   talus-code record [--commit REV]                    record main's tip again (after an outage)
//   talus-code check [--commit REV]                     check every tool and component at a commit
//   talus-code bundle NAME [--commit REV] -o FILE        build a tool bundle
//   talus-code config-reference                         every configuration key

import ArgumentParser
import Foundation
import Logging
import Mongo
import TalusCode
import TalusCore

struct TalusCodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "talus-code",
        abstract: "The Talus code repository: git hooks, creation, recording and bundles.",
        discussion: """
            Configuration: /etc/talus/code.yaml (or --config), overridden by TALUS_* environment variables \
            (TALUS_MONGO_URI, TALUS_MONGO_DATABASE, TALUS_CODE_REPOSITORY, TALUS_CODE_BRANCH...). \
            `talus-code config-reference` lists every key.
            """,
        subcommands: [Init.self, InstallHooks.self, Hook.self, Record.self, Check.self, Bundle.self, ConfigReference.self])
}

/// `--config`, shared by every subcommand that reads the configuration.
struct ConfigOptions: ParsableArguments {
    @Option(help: "Configuration file (YAML). Default: /etc/talus/code.yaml when it exists.")
    var config: String?

    func load() async throws -> CodeConfig {
        do {
            let settings = try await Settings(filePath: config ?? "/etc/talus/code.yaml", required: config != nil)
            let loaded = try CodeConfig(settings: settings)
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = loaded.logLevel
                return handler
            }
            return loaded
        } catch {
            fail("talus-code: \(error)")
        }
    }
}

/// This executable's absolute path (what the hooks run).
func selfPath() -> String {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
}

/// Writes `lines` to stderr (git shows a hook's output to the pusher as `remote: …`).
func say(_ lines: [String]) {
    guard !lines.isEmpty else { return }
    FileHandle.standardError.write(Data((lines.joined(separator: "\n") + "\n").utf8))
}

func fail(_ message: String, status: Int32 = 1) -> Never {
    say([message])
    exit(status)
}

/// Reads all of standard input.
func readStandardInput() -> String {
    String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
}

/// Runs `body` against the configured database, closing the client afterwards.
func withStore<T>(_ config: CodeConfig, _ body: (CodeStore) async throws -> T) async throws -> T {
    let client = try MongoClient(uri: config.mongoURI, logger: Logger(label: "talus.code.mongo"))
    do {
        let result = try await body(CodeStore(database: client.database(config.database)))
        await client.close()
        return result
    } catch {
        await client.close()
        throw error
    }
}

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the bare code repository with its hooks and push the template as the first commit.",
        discussion: """
            The hooks run this executable (--hook-executable) with --config when given. Users reach the \
            repository over ssh (git-shell accounts in the repository's group) or, on the master, as a path.
            """)
    @OptionGroup var options: ConfigOptions
    @Argument(help: "Where to create the bare repository (default: code.repository from the configuration).")
    var path: String?
    @Option(help: "The template directory (tools/, components/). Default: <prefix>/share/talus/code-template.")
    var template: String?
    @Option(help: "What the hooks run. Default: this executable.")
    var hookExecutable: String?
    @Flag(help: "Do not make the repository group-shared (core.sharedRepository=group).")
    var notShared = false
    @Flag(help: "Refuse force pushes (receive.denyNonFastForwards). By default they are allowed: recorded commits stay reachable anyway.")
    var denyForcePush = false

    func run() async throws {
        let config = try await options.load()
        let path = path ?? config.repository
        guard let template = template ?? Self.defaultTemplate() else {
            fail("talus-code init: no template found; give --template DIR (code-template/ in the Talus sources)")
        }
        do {
            let (commit, output) = try await CodeRepositorySetup.create(
                at: path, template: template, hookExecutable: hookExecutable ?? selfPath(), configPath: options.config,
                branch: config.branch, sharedGroup: !notShared, allowForcePush: !denyForcePush)
            if !output.isEmpty { say([output.trimmingCharacters(in: .whitespacesAndNewlines)]) }
            print("Created \(path) (\(config.branch) at \(commit)). Clone it with: git clone \(path)")
        } catch {
            fail("talus-code init: \(error)")
        }
    }

    static func defaultTemplate() -> String? {
        let exeDir = URL(fileURLWithPath: selfPath()).deletingLastPathComponent()
        let candidates = [exeDir.appendingPathComponent("../share/talus/code-template").standardizedFileURL.path,
                          "/usr/local/share/talus/code-template", "/usr/share/talus/code-template"]
        return candidates.first { FileManager.default.fileExists(atPath: $0 + "/tools") }
    }
}

struct InstallHooks: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install-hooks", abstract: "(Re)write the hooks of an existing code repository.")
    @OptionGroup var options: ConfigOptions
    @Argument(help: "The bare repository (default: code.repository).") var path: String?
    @Option(help: "What the hooks run. Default: this executable.") var hookExecutable: String?

    func run() async throws {
        let config = try await options.load()
        do {
            try CodeRepositorySetup.installHooks(repository: path ?? config.repository, executable: hookExecutable ?? selfPath(),
                                                 configPath: options.config)
        } catch {
            fail("talus-code install-hooks: \(error)")
        }
    }
}

struct Hook: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a git hook (git calls this; the input is `<old> <new> <ref>` lines on stdin).")
    enum Name: String, ExpressibleByArgument, CaseIterable { case preReceive = "pre-receive", postReceive = "post-receive" }
    @OptionGroup var options: ConfigOptions
    @Argument(help: "pre-receive or post-receive.") var name: Name

    func run() async throws {
        let config = try await options.load()
        // git runs hooks in the repository with GIT_DIR set (usually ".").
        let gitDir = ProcessInfo.processInfo.environment["GIT_DIR"].map {
            URL(fileURLWithPath: $0, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL.path
        } ?? FileManager.default.currentDirectoryPath
        let hooks = CodeHooks(repository: GitRepository(path: gitDir), branch: config.branch)
        let updates: [RefUpdate]
        do { updates = try RefUpdate.parse(readStandardInput()) } catch { fail("talus: \(error)") }
        switch name {
        case .preReceive:
            do {
                let verdict = try await hooks.preReceive(updates)
                say(verdict.lines)
                if !verdict.accepted { throw ExitCode(1) }
            } catch let e as ExitCode {
                throw e
            } catch {
                fail("talus: the push could not be checked, so it was refused (nothing changed): \(error)")
            }
        case .postReceive:
            do {
                let lines = try await withStore(config) { store in
                    try await withThrowingTaskGroup(of: [String]?.self) { group in
                        group.addTask { try await hooks.postReceive(updates, store: store) }
                        group.addTask { try await Task.sleep(for: .seconds(120)); return nil }
                        let first = try await group.next()!
                        group.cancelAll()
                        guard let first else { throw GitError("recording took longer than 120 s") }
                        return first
                    }
                }
                say(lines)
            } catch {
                fail("talus: WARNING: the push was accepted but its tools were not recorded: \(error)\n"
                     + "talus: an administrator can record them with `talus-code record` on the master.")
            }
        }
    }
}

/// `--repository` and `--commit`, for the commands that read a commit of the repository.
struct CommitOptions: ParsableArguments {
    @Option(help: "The bare repository (default: code.repository).") var repository: String?
    @Option(help: "The commit (default: the tip of the configured branch).") var commit: String?

    /// The repository and the full commit id, or exits with a message naming `command`.
    func resolve(_ config: CodeConfig, command: String) async throws -> (GitRepository, String) {
        let repo = GitRepository(path: repository ?? config.repository)
        let rev = commit ?? "refs/heads/" + config.branch
        guard let resolved = try await repo.resolveCommit(rev) else {
            fail("talus-code \(command): \(rev) is not a commit of \(repo.path)")
        }
        return (repo, resolved)
    }
}

struct Record: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Record the tools and components at main's tip (or --commit) in the database, as post-receive does.")
    @OptionGroup var options: ConfigOptions
    @OptionGroup var target: CommitOptions

    func run() async throws {
        let config = try await options.load()
        do {
            let (repo, commit) = try await target.resolve(config, command: "record")
            let hooks = CodeHooks(repository: repo, branch: config.branch)
            say(try await withStore(config) { try await hooks.record(commit: commit, store: $0) })
        } catch {
            fail("talus-code record: \(error)")
        }
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every tool and component at a commit with the pre-receive rules (exit 1 on problems).")
    @OptionGroup var options: ConfigOptions
    @OptionGroup var target: CommitOptions

    func run() async throws {
        let config = try await options.load()
        do {
            let (repo, commit) = try await target.resolve(config, command: "check")
            let result = RepositoryCheck.check(try await CodeSnapshot.load(repo, commit: commit))
            if result.problems.isEmpty {
                print("\(commit): \(result.manifests.count) tools and components, no problems")
            } else {
                for p in result.problems { print(p) }
                throw ExitCode(1)
            }
        } catch let e as ExitCode {
            throw e
        } catch {
            fail("talus-code check: \(error)")
        }
    }
}

struct Bundle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Build the bundle of a tool at a commit (what the API serves).")
    @OptionGroup var options: ConfigOptions
    @OptionGroup var target: CommitOptions
    @Argument(help: "The tool.") var name: String
    @Option(name: .shortAndLong, help: "Where to write the tar.gz.") var output: String

    func run() async throws {
        let config = try await options.load()
        do {
            let (repo, commit) = try await target.resolve(config, command: "bundle")
            let bundle = try await BundleBuilder.build(tool: name, from: try await CodeSnapshot.load(repo, commit: commit))
            try Data(bundle.bytes).write(to: URL(fileURLWithPath: output))
            print("\(output): \(name) at \(commit), \(bundle.bytes.count) bytes, sha256 \(bundle.sha256)")
        } catch {
            fail("talus-code bundle: \(error)")
        }
    }
}

struct ConfigReference: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config-reference", abstract: "Print every configuration key with its default (Markdown).")
    func run() {
        print(settingsReference(title: "talus-code", file: "/etc/talus/code.yaml", keys: CodeConfig.keys))
    }
}

/// Parses and runs the command. (Top-level `await TalusCodeCommand.main()` resolves to the
/// synchronous `main`, which would print help instead of running async subcommands.)
func runTalusCode() async -> Int32 {
    do {
        var command = try TalusCodeCommand.parseAsRoot()
        if var asyncCommand = command as? any AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
        return 0
    } catch {
        TalusCodeCommand.exit(withError: error)
    }
}

exit(await runTalusCode())
