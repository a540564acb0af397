// talus-agent: runs inside the guest (DESIGN §7). Reads `config.json` from the config ISO, says
// hello with the per-VM token on the virtio-serial port, unpacks and runs the tool, streams its
// events, output files and logs as frames, sends heartbeats, obeys `cancel`, and reports the end.
// The boot hook powers the guest off when the agent exits.
//
// One thread, one poll(2) loop over the port, the tool's stdout and stderr; the events file is
// read on every turn. Glibc and FoundationEssentials only: the binary is linked statically.

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

/// What the agent needs from its command line.
public struct AgentOptions: Sendable {
    /// `config.json` on the config ISO.
    public var configPath: String
    /// The virtio-serial port device, or `unix:/path` to connect to a unix socket (tests, and
    /// `talus tool run-local --agent`).
    public var portPath: String
    /// Scratch directory for the bundle, params, events and output (tmpfs in the guest).
    public var workRoot: String
    public var version: String

    public init(configPath: String, portPath: String, workRoot: String = "/run/talus", version: String = agentVersion) {
        self.configPath = configPath; self.portPath = portPath; self.workRoot = workRoot; self.version = version
    }
}

/// The agent's version, sent in `hello`.
public let agentVersion = "talus-agent/1"

/// Limits that keep a misbehaving tool from flooding the channel.
public struct AgentLimits: Sendable {
    /// Event lines handled per loop turn (the rest wait for the next turn).
    public var linesPerTurn = 500
    /// Log frames from stdout/stderr per second; lines beyond are counted and summarized.
    public var logLinesPerSecond = 50
    /// Total log bytes relayed; beyond it only a summary is sent.
    public var logBytesTotal = 1 << 20
    /// Bytes of a file chunk (before base64).
    public var chunkBytes = 192 << 10
    public init() {}
}

/// The guest agent. `run()` returns the process exit code (0 once `finished` was sent).
public final class GuestAgent {
    let options: AgentOptions
    let limits: AgentLimits
    private var port: Int32 = -1
    private var portQuietUntil: ContinuousClock.Instant?
    private var decoder = FrameDecoder()
    private var welcomed = false
    private var lastHello: ContinuousClock.Instant?
    private var lastHeartbeat = ContinuousClock.now
    private var cancelReason: String?
    private var logWindowStart = ContinuousClock.now
    private var logLinesInWindow = 0
    private var logLinesDropped = 0
    private var logBytesSent = 0
    private var stdoutLine: [UInt8] = []
    private var stderrLine: [UInt8] = []
    private let clock = ContinuousClock()

    public init(options: AgentOptions, limits: AgentLimits = AgentLimits()) {
        self.options = options
        self.limits = limits
    }

    /// Runs the part to its end. Never throws: every failure becomes a `finished` frame with a
    /// reason (when the port works) and a message on stderr (the serial console).
    public func run() -> Int32 {
        let config: GuestConfig
        do {
            config = try TalusJSON.decoder().decode(GuestConfig.self, from: Data(try readFile(options.configPath)))
        } catch {
            note("cannot read \(options.configPath): \(error)")
            return 2
        }
        do {
            try openPort()
        } catch {
            note("cannot open the port \(options.portPath): \(error)")
            return 3
        }
        send(.hello(token: config.token, agent: options.version))
        lastHello = clock.now

        let exit: (code: Int, reason: String?)
        do {
            exit = try runTool(config)
        } catch {
            exit = (-1, "\(error)")
        }
        send(.finished(exitCode: exit.code, reason: exit.reason))
        note("finished exit_code=\(exit.code)" + (exit.reason.map { " reason=\($0)" } ?? ""))
        return 0
    }

    // MARK: - The tool

    private func runTool(_ config: GuestConfig) throws -> (code: Int, reason: String?) {
        let root = options.workRoot
        let bundleDir = root + "/bundle"
        try makeDirectories(bundleDir)
        let configDir = String(options.configPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/"))
        let bundle = (configDir.isEmpty ? "." : configDir) + "/" + config.bundle
        do {
            try unpackBundle(bundle, into: bundleDir)
        } catch {
            return (-1, "\(error)")
        }
        let toolDir = bundleDir + "/tool"
        let workspace = try ToolWorkspace.prepare(root: root, toolDirectory: toolDir, params: config.params)
        let env = workspace.runEnvironment(job: config.job.hex, idx: config.idx, attempt: config.attempt, run: config.run,
                                           tool: config.tool.name, components: bundleDir + "/components", home: root)
        guard let entry = try entryCommand(config, toolDirectory: toolDir) else {
            return (-1, "the tool has no entry command (neither in the part nor in tool/\(ToolManifest.fileName))")
        }
        let tool = try ToolProcess(entry: entry, directory: toolDir, environment: env)
        send(.started)
        var tail = EventsFileTail(path: workspace.eventsFile)

        var turnsWithoutPipes = 0
        while tool.poll() == nil {
            // A tool that closed both pipes is usually exiting: look again within milliseconds,
            // backing off to the usual 100 ms for one that runs on without them.
            var timeout: Int32 = 100
            if tool.stdoutFD < 0 && tool.stderrFD < 0 {
                timeout = min(100, 5 << min(turnsWithoutPipes, 5))
                turnsWithoutPipes += 1
            }
            pollOnce(tool, timeoutMs: timeout)
            handleEventLines(tail.readLines(maxBytes: 256 << 10), workspace: workspace, config: config)
            heartbeatIfDue(config)
            if let reason = cancelReason {
                tool.terminate()
                return (-1, reason)
            }
        }
        // Drain what the tool left behind.
        while let bytes = ToolProcess.readAvailable(tool.stdoutFD), !bytes.isEmpty { relayOutput(bytes, stderr: false) }
        while let bytes = ToolProcess.readAvailable(tool.stderrFD), !bytes.isEmpty { relayOutput(bytes, stderr: true) }
        flushOutputLines()
        handleEventLines(tail.flush(), workspace: workspace, config: config)
        if logLinesDropped > 0 { sendLog("warning", "\(logLinesDropped) output lines were not relayed (rate limit)") }
        let code = Int(tool.exitStatus ?? -1)
        return (code, code == 0 ? nil : (code < 0 ? "the tool was killed by signal \(-code)" : "the tool exited with status \(code)"))
    }

    /// The entry from the config, else from the bundle's manifest.
    private func entryCommand(_ config: GuestConfig, toolDirectory: String) throws -> String? {
        if let e = config.entry, !e.trimmingSpaces.isEmpty { return e }
        let path = toolDirectory + "/" + ToolManifest.fileName
        guard let bytes = try? readFile(path) else { return nil }
        let manifest = try TalusJSON.decoder().decode(ToolManifest.self, from: Data(bytes))
        return manifest.entry
    }

    private func pollOnce(_ tool: ToolProcess, timeoutMs: Int32) {
        var fds: [pollfd] = []
        let portActive = port >= 0 && (portQuietUntil.map { clock.now >= $0 } ?? true)
        if portActive { fds.append(pollfd(fd: port, events: Int16(POLLIN), revents: 0)) }
        if tool.stdoutFD >= 0 { fds.append(pollfd(fd: tool.stdoutFD, events: Int16(POLLIN), revents: 0)) }
        if tool.stderrFD >= 0 { fds.append(pollfd(fd: tool.stderrFD, events: Int16(POLLIN), revents: 0)) }
        _ = Glibc.poll(&fds, nfds_t(fds.count), timeoutMs)
        for p in fds where p.revents != 0 {
            if p.fd == port { readPort() }
            else if p.fd == tool.stdoutFD {
                if let bytes = ToolProcess.readAvailable(p.fd) { relayOutput(bytes, stderr: false) } else { tool.closeStdout() }
            } else if p.fd == tool.stderrFD {
                if let bytes = ToolProcess.readAvailable(p.fd) { relayOutput(bytes, stderr: true) } else { tool.closeStderr() }
            }
        }
    }

    private func heartbeatIfDue(_ config: GuestConfig) {
        let now = clock.now
        if now - lastHeartbeat >= .seconds(max(1, config.heartbeatSeconds)) {
            send(.heartbeat)
            lastHeartbeat = now
        }
        // No welcome yet (the host was not listening): say hello again every few seconds.
        if !welcomed, let last = lastHello, now - last >= .seconds(5) {
            send(.hello(token: config.token, agent: options.version))
            lastHello = now
        }
    }

    // MARK: - Tool events

    private func handleEventLines(_ lines: [String], workspace: ToolWorkspace, config: GuestConfig) {
        var pendingProgress = 0
        func flushProgress() {
            if pendingProgress > 0 { send(.report(.progress(amount: pendingProgress))); pendingProgress = 0 }
        }
        for line in lines {
            let trimmed = line.trimmingSpaces
            if trimmed.isEmpty { continue }
            let event: ToolEvent
            do {
                event = try ToolEvent.parse(trimmed)
            } catch {
                flushProgress()
                sendLog("warning", "malformed event line ignored: \(trimmed.prefix(200))")
                continue
            }
            switch event {
            case .report(.progress(let amount)):
                pendingProgress += amount   // coalesce bursts into one frame
            case .report(.crash(let signature, let data, let file)):
                flushProgress()
                let sent = file.map { sendFile($0, workspace: workspace, config: config) } ?? false
                send(.report(.crash(signature: signature, data: data, file: sent ? file : nil)))
            case .report(.result(let kind, let data, let files)):
                flushProgress()
                let sent = files.filter { sendFile($0, workspace: workspace, config: config) }
                send(.report(.result(kind: kind, data: data, files: sent)))
            case .report(let other):
                flushProgress()
                send(.report(other))
            case .sendFile(let path):
                flushProgress()
                if sendFile(path, workspace: workspace, config: config) {
                    send(.report(.result(kind: "file", data: ["path": .string(path)], files: [path])))
                }
            }
        }
        flushProgress()
    }

    /// Sends `name` (relative to TALUS_OUTPUT) as file chunks. False (with a log frame) when the
    /// name is unsafe, the file is missing, or it is larger than allowed.
    private func sendFile(_ name: String, workspace: ToolWorkspace, config: GuestConfig) -> Bool {
        guard FileChunk.isSafeName(name) else {
            sendLog("warning", "file \(name) ignored: not a relative path inside TALUS_OUTPUT"); return false
        }
        let path = workspace.outputDirectory + "/" + name
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            sendLog("warning", "file \(name) not found in TALUS_OUTPUT"); return false
        }
        guard Int64(st.st_size) <= config.maxFileBytes else {
            sendLog("warning", "file \(name) is \(st.st_size) bytes, over the limit of \(config.maxFileBytes): not sent"); return false
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { sendLog("warning", "file \(name) cannot be read"); return false }
        defer { close(fd) }
        var offset: Int64 = 0
        var buffer = [UInt8](repeating: 0, count: limits.chunkBytes)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; sendLog("warning", "file \(name): read error"); return false }
            let last = n == 0 || offset + Int64(n) >= Int64(st.st_size)
            let chunk = FileChunk(name: name, offset: offset, data: Data(buffer[0..<max(0, n)]), last: last,
                                  size: last ? offset + Int64(max(0, n)) : nil)
            send(.report(.file(chunk)))
            offset += Int64(max(0, n))
            if last { return true }
        }
    }

    // MARK: - Tool output → log frames (rate limited)

    private func relayOutput(_ bytes: [UInt8], stderr: Bool) {
        // Echo to our stderr: it goes to the serial console, whose tail the slave reports on failure.
        bytes.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
        for b in bytes {
            if b == UInt8(ascii: "\n") {
                if stderr { emitLine(&stderrLine, stderr: true) } else { emitLine(&stdoutLine, stderr: false) }
            } else if stderr {
                if stderrLine.count < 4096 { stderrLine.append(b) }
            } else if stdoutLine.count < 4096 {
                stdoutLine.append(b)
            }
        }
    }

    private func flushOutputLines() {
        if !stdoutLine.isEmpty { emitLine(&stdoutLine, stderr: false) }
        if !stderrLine.isEmpty { emitLine(&stderrLine, stderr: true) }
    }

    private func emitLine(_ line: inout [UInt8], stderr: Bool) {
        defer { line.removeAll(keepingCapacity: true) }
        let now = clock.now
        if now - logWindowStart >= .seconds(1) { logWindowStart = now; logLinesInWindow = 0 }
        guard logLinesInWindow < limits.logLinesPerSecond, logBytesSent < limits.logBytesTotal else {
            logLinesDropped += 1
            return
        }
        logLinesInWindow += 1
        logBytesSent += line.count
        sendLog(stderr ? "stderr" : "stdout", String(decoding: line, as: UTF8.self))
    }

    private func sendLog(_ level: String, _ message: String) {
        send(.report(.log(level: level, message: message)))
    }

    // MARK: - The port

    private func openPort() throws {
        let deadline = clock.now.advanced(by: .seconds(30))
        while true {
            if options.portPath.hasPrefix("unix:") {
                port = try connectUnix(String(options.portPath.dropFirst(5)))
            } else {
                port = open(options.portPath, O_RDWR | O_CLOEXEC)
            }
            if port >= 0 { return }
            if clock.now >= deadline { throw AgentError.errno("open \(options.portPath)") }
            usleep(200_000)
        }
    }

    private func readPort() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = buffer.withUnsafeMutableBytes { read(port, $0.baseAddress, $0.count) }
        if n <= 0 {
            // No host connected (virtio-serial reads EOF): look again a little later.
            portQuietUntil = clock.now.advanced(by: .milliseconds(250))
            return
        }
        decoder.append(buffer[0..<n])
        while let item = decoder.next() {
            switch item {
            case .frame(.welcome): welcomed = true
            case .frame(.cancel(let reason)): cancelReason = "cancelled: \(reason)"
            case .frame(let other): note("unexpected frame from the host: \(other.type)")
            case .garbage, .oversized, .malformed: note("unreadable bytes from the host ignored")
            }
        }
    }

    private func send(_ frame: GuestFrame) {
        guard port >= 0, let bytes = try? FrameEncoder.encode(frame) else { return }
        do {
            try writeAll(port, bytes[...])
        } catch {
            note("write to the port failed: \(error)")
        }
    }

    private func note(_ message: String) {
        let line = "talus-agent: \(message)\n"
        line.utf8CString.withUnsafeBufferPointer { _ = write(2, $0.baseAddress, $0.count - 1) }
    }
}

func connectUnix(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw AgentError.errno("socket") }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { close(fd); throw AgentError("socket path too long") }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if rc != 0 { close(fd); return -1 }
    return fd
}

/// `'…'` quoting for /bin/sh.
public func shellQuote(_ s: String) -> String {
    var out = "'"
    for c in s { if c == "'" { out += "'\\''" } else { out.append(c) } }
    return out + "'"
}

extension String {
    var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
