// The `talus` command: login state, shared options, the entry point with documented exit codes.

import ArgumentParser
import Foundation
import TalusModel

/// Where `talus login` keeps the API URL and token.
struct CLIConfig: Codable {
    var url: String
    var token: String

    /// `$XDG_CONFIG_HOME/talus/config.json`, else `~/.config/talus/config.json`.
    static var path: String {
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ((env["HOME"] ?? NSHomeDirectory()) + "/.config")
        return base + "/talus/config.json"
    }

    static func load() -> CLIConfig? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(CLIConfig.self, from: data)
    }

    /// The URL and token to use: `TALUS_URL` / `TALUS_TOKEN` override the login file.
    static func credentials() throws -> (url: String, token: String) {
        let env = ProcessInfo.processInfo.environment
        let saved = load()
        let url = env["TALUS_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? saved?.url
        let token = env["TALUS_TOKEN"].flatMap { $0.isEmpty ? nil : $0 } ?? saved?.token
        guard let url, let token else {
            throw CLIError.usage("not logged in: run `talus login URL` (or set TALUS_URL and TALUS_TOKEN)")
        }
        return (url, token)
    }

    /// Writes the file with mode 0600 (its directory 0700), atomically.
    func save() throws {
        let path = Self.path
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temp = path + ".tmp"
        let data = try JSONEncoder().encode(self)
        let fd = open(temp, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIError.failure("cannot write \(temp): \(String(cString: strerror(errno)))") }
        fchmod(fd, 0o600)
        let ok = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) == $0.count }
        close(fd)
        guard ok, rename(temp, path) == 0 else { throw CLIError.failure("cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .long, help: "Print JSON (stable, sorted keys) instead of tables.")
    var json = false
}

/// Options of list commands.
struct ListOptions: ParsableArguments {
    @Option(help: "Show at most this many, newest first.")
    var limit: Int = 50
    @Flag(help: "Show every one (follows all pages).")
    var all = false
    @Option(help: "Only those with this tag.")
    var tag: String?

    var max: Int? { all ? nil : limit }
    func query(_ extra: [(String, String?)]) -> [(String, String)] {
        (extra + [("tag", tag)]).compactMap { k, v in v.map { (k, $0) } }
    }
}

/// Runs `body` with a client for the logged-in API, shutting it down afterwards.
func withAPI<T>(_ body: (APIClient) async throws -> T) async throws -> T {
    let (url, token) = try CLIConfig.credentials()
    let client = APIClient(baseURL: url, token: token)
    do {
        let result = try await body(client)
        await client.shutdown()
        return result
    } catch {
        await client.shutdown()
        throw error
    }
}

/// The `talus` command line.
public struct Talus: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "talus",
        abstract: "Command line client of the Talus REST API.",
        discussion: """
            Log in once with `talus login URL`; TALUS_URL and TALUS_TOKEN override the saved login. \
            Every command prints a table by default and JSON with --json. Names or ids name things.

            Exit codes: 0 success; 1 usage or invalid input; 2 the server refused the request (4xx: \
            not found, forbidden, conflict, invalid); 3 the server failed (5xx) or could not be reached; \
            4 what was waited for ended badly (image error, job failed or cancelled); 130 interrupted (Ctrl-C).
            """,
        subcommands: [
            Login.self, OSCommand.self, ImageCommand.self, UploadCommand.self, CodeCommand.self, TaskCommand.self,
            JobCommand.self, ResultCommand.self, CrashCommand.self, SlaveCommand.self, FileCommand.self, FileSetCommand.self,
            TokenCommand.self, UserCommand.self, ToolCommand.self,
        ])

    public init() {}
}

/// The entry point: parses, runs, maps errors to exit codes.
public enum TalusCLIMain {
    public static func run(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) async -> Int32 {
        do {
            var command = try Talus.parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            return 0
        } catch let exit as ExitCode {
            return exit.rawValue   // `tool run-local` ends with the tool's status
        } catch let error as CLIError {
            FileHandle.standardError.write(Data(("talus: " + error.description + "\n").utf8))
            return error.exitCode
        } catch {
            let code = Talus.exitCode(for: error)
            let message = Talus.fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { print(message) }
                return 0
            }
            FileHandle.standardError.write(Data((message + "\n").utf8))
            return 1
        }
    }
}
