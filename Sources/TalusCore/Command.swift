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

/// The outcome of a command that ran to completion, with its standard output as bytes (for
/// binary output such as `git cat-file --batch`).
public struct CommandBytesResult: Sendable {
    public let status: Int32
    public let stdout: [UInt8]
    public let stderr: String
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
    let r = try await runCommandBytes(executable, arguments, workingDirectory: workingDirectory, environment: environment,
                                      timeout: timeout, check: check, outputLimit: outputLimit)
    return CommandResult(status: r.status, stdout: String(decoding: r.stdout, as: UTF8.self), stderr: r.stderr)
}

/// ``runCommand(_:_:workingDirectory:environment:timeout:check:outputLimit:)`` with `input`
/// written to the command's standard input (nil: no input) and its standard output kept as bytes.
@discardableResult
public func runCommandBytes(
    _ executable: String, _ arguments: [String], input: [UInt8]? = nil, workingDirectory: String? = nil,
    environment: [String: String]? = nil, timeout: Duration = .seconds(600), check: Bool = true,
    outputLimit: Int = 16 << 20
) async throws -> CommandBytesResult {
    let display = ([executable] + arguments).joined(separator: " ")
    let result: (TerminationStatus, [UInt8], String)
    do {
        result = try await withThrowingTaskGroup(of: (TerminationStatus, [UInt8], String)?.self) { group in
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
                let directory = workingDirectory.map { FilePath($0) }
                if let input {
                    let r = try await run(exe, arguments: Arguments(arguments), environment: env, workingDirectory: directory,
                                          platformOptions: options, input: .array(input), output: .bytes(limit: outputLimit),
                                          error: .string(limit: 1 << 20))
                    return (r.terminationStatus, r.standardOutput, r.standardError)
                }
                let r = try await run(exe, arguments: Arguments(arguments), environment: env, workingDirectory: directory,
                                      platformOptions: options, output: .bytes(limit: outputLimit), error: .string(limit: 1 << 20))
                return (r.terminationStatus, r.standardOutput, r.standardError)
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
    switch result.0 {
    case .exited(let code): status = code
    case .signaled(let signal): status = 128 + signal
    }
    let out = CommandBytesResult(status: status, stdout: result.1, stderr: result.2)
    if check && status != 0 {
        throw CommandError(command: display, status: status,
                           stderr: out.stderr.isEmpty ? String(decoding: out.stdout.prefix(4096), as: UTF8.self) : out.stderr,
                           timedOut: false)
    }
    return out
}
