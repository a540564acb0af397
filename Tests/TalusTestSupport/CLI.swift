// Running the built `talus` CLI as a subprocess: its output goes to files readable while it
// runs, and a finished run is parsed back (tables or --json).

import Foundation

/// What a CLI run printed and how it ended.
public struct CLIRun: Sendable, CustomStringConvertible {
    public let status: Int32
    public let stdout: String
    public let stderr: String
    public var description: String { "exit \(status)\n--- stdout\n\(stdout)\n--- stderr\n\(stderr)" }
    /// stdout parsed as JSON.
    public var json: Any? { try? JSONSerialization.jsonObject(with: Data(stdout.utf8), options: [.fragmentsAllowed]) }
    public var object: [String: Any]? { json as? [String: Any] }
    public var array: [[String: Any]]? { json as? [[String: Any]] }
    /// stdout as JSON Lines.
    public var jsonLines: [[String: Any]] {
        stdout.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
    }
}

/// A `talus` process started by a test; its output goes to files readable while it runs.
public final class RunningCLI: @unchecked Sendable {
    // `process` is only read after start (isRunning, terminationStatus are thread-safe).
    public let process: Process
    let dir: String
    public let arguments: [String]

    /// Starts `talus` (the built product) with `arguments`, the test's environment (without
    /// TALUS_URL / TALUS_TOKEN) plus `env`, and `stdin`.
    public init(_ arguments: [String], env: [String: String], stdin: String? = nil) throws {
        self.arguments = arguments
        dir = try TestEnvironment.scratchDirectory("cli")
        FileManager.default.createFile(atPath: dir + "/stdout", contents: nil)
        FileManager.default.createFile(atPath: dir + "/stderr", contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: try TestEnvironment.executable("talus"))
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.filter { $0.key != "TALUS_URL" && $0.key != "TALUS_TOKEN" }
            .merging(env) { $1 }
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/stdout"))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/stderr"))
        if let stdin {
            FileManager.default.createFile(atPath: dir + "/stdin", contents: Data(stdin.utf8))
            process.standardInput = try FileHandle(forReadingFrom: URL(fileURLWithPath: dir + "/stdin"))
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        // The child inherits this thread's signal mask; async test threads block most signals,
        // and the CLI must see SIGINT (Ctrl-C tests).
        var none = sigset_t(), saved = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }
    public var stdout: String { String(decoding: stdoutData, as: UTF8.self) }
    public var stdoutData: Data { FileManager.default.contents(atPath: dir + "/stdout") ?? Data() }
    public var stderr: String { String(decoding: FileManager.default.contents(atPath: dir + "/stderr") ?? Data(), as: UTF8.self) }

    /// Waits for the exit (SIGKILL after `timeout`) and returns what it printed.
    public func finish(timeout: Duration = .seconds(120)) async throws -> CLIRun {
        do {
            try await waitUntil("talus \(arguments.joined(separator: " ")) to exit", timeout: timeout, interval: .milliseconds(20)) {
                !self.process.isRunning
            }
        } catch {
            kill(process.processIdentifier, SIGKILL)
            throw TestSupportError("\(error)\n--- stdout\n\(stdout)\n--- stderr\n\(stderr)")
        }
        let run = CLIRun(status: process.terminationStatus, stdout: stdout, stderr: stderr)
        try? FileManager.default.removeItem(atPath: dir)
        return run
    }
}

/// Runs `talus` with `arguments` to the end (see ``RunningCLI``).
public func runTalus(_ arguments: [String], env: [String: String], stdin: String? = nil,
                     timeout: Duration = .seconds(120)) async throws -> CLIRun {
    try await RunningCLI(arguments, env: env, stdin: stdin).finish(timeout: timeout)
}
