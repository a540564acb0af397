// Running a tool with the Talus contract (DESIGN §8): the entry command under `/bin/sh -c` in the
// tool's directory, with `TALUS_PARAMS`, `TALUS_OUTPUT` and `TALUS_EVENTS`, in its own process
// group so everything it started can be stopped. Used by the guest agent and by
// `talus tool run-local`. Glibc and FoundationEssentials only (the agent is linked statically).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import BSON
import TalusModel

/// A failed system call.
public struct AgentError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
    static func errno(_ what: String) -> AgentError { AgentError("\(what): \(String(cString: strerror(Glibc.errno)))") }
}

/// The files and directories of one tool run.
public struct ToolWorkspace: Sendable {
    /// Directory the entry command runs in (the unpacked tool).
    public let toolDirectory: String
    /// Where the tool writes output files (`TALUS_OUTPUT`).
    public let outputDirectory: String
    /// The JSON file with the parameters (`TALUS_PARAMS`).
    public let paramsFile: String
    /// The JSON-lines file the tool appends events to (`TALUS_EVENTS`).
    public let eventsFile: String

    /// Creates `root/output`, writes `root/params.json` and an empty `root/events.jsonl`.
    public static func prepare(root: String, toolDirectory: String, params: BSONDocument) throws -> ToolWorkspace {
        try makeDirectories(root + "/output")
        let paramsFile = root + "/params.json"
        let json = try TalusJSON.encoder(pretty: true).encode(params)
        try writeFile(paramsFile, Array(json))
        let eventsFile = root + "/events.jsonl"
        try writeFile(eventsFile, [])
        return ToolWorkspace(toolDirectory: toolDirectory, outputDirectory: root + "/output",
                             paramsFile: paramsFile, eventsFile: eventsFile)
    }

    /// The `PATH` a tool gets.
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// The whole environment of a tool run, the same in the guest and for `talus tool run-local`:
    /// the Talus variables, the run's identity, `TALUS_COMPONENTS`, `HOME`, `PATH` and `TERM=dumb`,
    /// nothing else.
    public func runEnvironment(job: String, idx: Int, attempt: Int, run: String, tool: String, components: String,
                               home: String, path: String = ToolWorkspace.defaultPath) -> [String: String] {
        environment(extra: [
            "TALUS_JOB": job, "TALUS_IDX": String(idx), "TALUS_ATTEMPT": String(attempt), "TALUS_RUN": run,
            "TALUS_TOOL": tool, "TALUS_COMPONENTS": components, "HOME": home,
        ], inherit: ["PATH": path, "TERM": "dumb"])
    }

    /// The environment of the entry command: the caller's plus the Talus variables.
    public func environment(extra: [String: String] = [:], inherit: [String: String]) -> [String: String] {
        var env = inherit
        env["TALUS_PARAMS"] = paramsFile
        env["TALUS_OUTPUT"] = outputDirectory
        env["TALUS_EVENTS"] = eventsFile
        if env["PATH"] == nil { env["PATH"] = Self.defaultPath }
        for (k, v) in extra { env[k] = v }
        return env
    }
}

/// The entry command running in its own process group, with its stdout and stderr on pipes.
public final class ToolProcess {
    public let pid: pid_t
    /// Read ends of the child's stdout and stderr (non-blocking).
    public private(set) var stdoutFD: Int32
    public private(set) var stderrFD: Int32
    public private(set) var exitStatus: Int32?

    /// Starts `/bin/sh -c entry` in `directory` with exactly `environment`.
    public init(entry: String, directory: String, environment: [String: String]) throws {
        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw AgentError.errno("pipe") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        for fd in [outPipe[0], outPipe[1], errPipe[0], errPipe[1]] { posix_spawn_file_actions_addclose(&actions, fd) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigmask(&attr, &noSignals)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        // `cd` in the shell: posix_spawn_file_actions_addchdir_np is not visible from Swift here.
        let argv = ["/bin/sh", "-c", "cd \(shellQuote(directory)) || exit 127\n" + entry]
        let envp = environment.map { "\($0.key)=\($0.value)" }
        var child: pid_t = 0
        let rc = withCStrings(argv) { cArgv in
            withCStrings(envp) { cEnv in posix_spawn(&child, "/bin/sh", &actions, &attr, cArgv, cEnv) }
        }
        close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw AgentError("cannot start /bin/sh -c \(entry): \(String(cString: strerror(rc)))")
        }
        pid = child
        stdoutFD = outPipe[0]
        stderrFD = errPipe[0]
        for fd in [stdoutFD, stderrFD] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    }

    deinit {
        if stdoutFD >= 0 { close(stdoutFD) }
        if stderrFD >= 0 { close(stderrFD) }
    }

    /// Reaps the child if it exited. Returns its status: the exit code, or −signal when killed.
    @discardableResult
    public func poll() -> Int32? {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        guard r == pid else { return nil }
        let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : -(status & 0x7F)
        exitStatus = code
        return code
    }

    /// SIGTERM to the whole process group, then SIGKILL after `grace` if still running.
    public func terminate(grace: Duration = .seconds(5)) {
        guard poll() == nil else { return }
        kill(-pid, SIGTERM)
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: grace)
        while poll() == nil && clock.now < deadline { usleep(20_000) }
        if poll() == nil {
            kill(-pid, SIGKILL)
            while poll() == nil { usleep(10_000) }
        }
        kill(-pid, SIGKILL)   // stragglers in the group
    }

    /// Reads what is available on `fd` (non-blocking); nil at end of file.
    public static func readAvailable(_ fd: Int32, max: Int = 65536) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: max)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, max) }
        if n > 0 { return Array(buffer[0..<n]) }
        if n == 0 { return nil }
        return (errno == EAGAIN || errno == EINTR) ? [] : nil
    }

    public func closeStdout() { if stdoutFD >= 0 { close(stdoutFD); stdoutFD = -1 } }
    public func closeStderr() { if stderrFD >= 0 { close(stderrFD); stderrFD = -1 } }
}

/// Unpacks the tool bundle (tar.gz) at `bundle` into `directory` (which must exist) with
/// `tar -xzf`, as the guest does. Throws with tar's message when it fails.
public func unpackBundle(_ bundle: String, into directory: String) throws {
    let unpack = try ToolProcess(entry: "tar -xzf \(shellQuote(bundle)) -C \(shellQuote(directory))", directory: directory,
                                 environment: ["PATH": ToolWorkspace.defaultPath])
    var output: [UInt8] = []
    while unpack.poll() == nil {
        if let bytes = ToolProcess.readAvailable(unpack.stderrFD) { output += bytes.prefix(4096 - min(4096, output.count)) }
        usleep(10_000)
    }
    if let bytes = ToolProcess.readAvailable(unpack.stderrFD) { output += bytes.prefix(4096 - min(4096, output.count)) }
    guard unpack.exitStatus == 0 else {
        throw AgentError("cannot unpack the tool bundle \(bundle): \(String(decoding: output, as: UTF8.self))")
    }
}

/// Follows the tool's events file: returns complete new lines, keeps a partial last line for
/// later, and bounds what one call returns.
public struct EventsFileTail {
    public let path: String
    private var offset: Int64 = 0
    private var partial: [UInt8] = []

    public init(path: String) { self.path = path }

    /// New complete lines (at most `maxBytes` read per call). Lines longer than `maxLine` are
    /// returned truncated so the caller can report them as malformed.
    public mutating func readLines(maxBytes: Int = 1 << 20, maxLine: Int = 4 << 20) -> [String] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: maxBytes)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, maxBytes, off_t(offset)) }
        guard n > 0 else { return [] }
        offset += Int64(n)
        var lines: [String] = []
        var start = 0
        for i in 0..<n where buffer[i] == UInt8(ascii: "\n") {
            partial += buffer[start..<i]
            if !partial.isEmpty { lines.append(String(decoding: partial, as: UTF8.self)) }
            partial.removeAll(keepingCapacity: true)
            start = i + 1
        }
        partial += buffer[start..<n]
        if partial.count > maxLine {
            lines.append(String(decoding: partial.prefix(maxLine), as: UTF8.self))
            partial.removeAll()
        }
        return lines
    }

    /// Whatever is left after the tool ended: a last line without a newline.
    public mutating func flush() -> [String] {
        var lines = readLines()
        if !partial.isEmpty { lines.append(String(decoding: partial, as: UTF8.self)); partial.removeAll() }
        return lines
    }
}

// MARK: - Small file helpers (no FileManager: it needs NSS-backed bits the guest lacks)

/// `mkdir -p`.
public func makeDirectories(_ path: String) throws {
    var current = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        current += "/" + part
        if mkdir(current, 0o755) != 0 && errno != EEXIST { throw AgentError.errno("mkdir \(current)") }
    }
}

/// Writes `bytes` to `path` (truncating).
public func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw AgentError.errno("open \(path)") }
    defer { close(fd) }
    try writeAll(fd, bytes[...])
}

/// Reads the whole file at `path`.
public func readFile(_ path: String, limit: Int = 64 << 20) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw AgentError.errno("open \(path)") }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while out.count <= limit {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; throw AgentError.errno("read \(path)") }
        if n == 0 { return out }
        out += buffer[0..<n]
    }
    throw AgentError("\(path) is larger than \(limit) bytes")
}

/// Writes all of `bytes` to `fd`, retrying short writes and EINTR/EAGAIN.
public func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) throws {
    var rest = bytes
    while !rest.isEmpty {
        let n = rest.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            if errno == EAGAIN { var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0); _ = Glibc.poll(&p, 1, 1000); continue }
            throw AgentError.errno("write")
        }
        rest = rest.dropFirst(n)
    }
}

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
