// Running external tools (qemu-img, genisoimage, git) with a deadline and a readable error.

import Foundation
import Subprocess
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// The outcome of a command that ran to completion.
public struct CommandResult: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
}

/// A command failed to start, exited non-zero, or ran past its deadline.
public struct CommandError: Error, CustomStringConvertible, Sendable {
    public let command: String
    public let status: Int32?
    public let stderr: String
    public let timedOut: Bool
    public var description: String {
        if timedOut { return "\(command): timed out" }
        let tail = stderr.trimmingCharacters(in: .whitespacesAndNewlines).suffix(600)
        return "\(command): exit status \(status.map(String.init) ?? "?")" + (tail.isEmpty ? "" : ": \(tail)")
    }
}

/// Runs `executable` (a path, or a name looked up in PATH) with `arguments` and returns its
/// output; throws ``CommandError`` on a non-zero exit (unless `check` is false) or after
/// `timeout` (the process gets SIGTERM, then SIGKILL 5 s later).
@discardableResult
public func runCommand(
    _ executable: String, _ arguments: [String], workingDirectory: String? = nil,
    environment: [String: String]? = nil, timeout: Duration = .seconds(600), check: Bool = true,
    outputLimit: Int = 16 << 20
) async throws -> CommandResult {
    let display = ([executable] + arguments).joined(separator: " ")
    let result: ExecutionResult<Void, StringOutput<UTF8>, StringOutput<UTF8>>
    do {
        result = try await withThrowingTaskGroup(of: ExecutionResult<Void, StringOutput<UTF8>, StringOutput<UTF8>>?.self) { group in
            group.addTask {
                let exe: Executable = executable.contains("/") ? .path(FilePath(executable)) : .name(executable)
                var env: Environment = .inherit
                if let environment {
                    env = .inherit.updating(Dictionary(uniqueKeysWithValues: environment.map {
                        (Environment.Key(stringLiteral: $0.key), Optional($0.value))
                    }))
                }
                var options = PlatformOptions()
                options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: .seconds(5))]
                return try await run(exe, arguments: Arguments(arguments), environment: env,
                                     workingDirectory: workingDirectory.map { FilePath($0) }, platformOptions: options,
                                     output: .string(limit: outputLimit), error: .string(limit: 1 << 20))
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            guard let first else { throw CommandError(command: display, status: nil, stderr: "", timedOut: true) }
            return first
        }
    } catch let error as CommandError {
        throw error
    } catch {
        throw CommandError(command: display, status: nil, stderr: "\(error)", timedOut: false)
    }
    let status: Int32
    switch result.terminationStatus {
    case .exited(let code): status = code
    case .signaled(let signal): status = 128 + signal
    }
    let out = CommandResult(status: status, stdout: result.standardOutput ?? "", stderr: result.standardError ?? "")
    if check && status != 0 {
        throw CommandError(command: display, status: status, stderr: out.stderr.isEmpty ? out.stdout : out.stderr, timedOut: false)
    }
    return out
}
