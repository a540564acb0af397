// Private servers for tests that stop and restart a service: a SecantusDB and a RabbitMQ broker
// that belong to one test, on their own ports and data directories.

import Foundation

/// A child process started by a test, stopped by pid (never by name).
public final class TestProcess: @unchecked Sendable {
    public let process: Process
    public let logPath: String

    /// Starts `executable` with `arguments`, stdout and stderr into `logPath`.
    public init(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        logPath: String
    ) throws {
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        self.logPath = logPath
        try Self.withSignalsUnblocked { try process.run() }
    }

    /// Runs `body` with this thread's signal mask cleared. A child inherits the spawning thread's
    /// mask, and async code runs on Dispatch worker threads that block most signals: without this
    /// a server started from a test ignores SIGTERM and `stop()` has to wait for SIGKILL.
    static func withSignalsUnblocked<R>(_ body: () throws -> R) rethrows -> R {
        var none = sigset_t()
        var saved = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        return try body()
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// Sends `signal` and waits up to `timeout` for the process to exit, then SIGKILLs it.
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async {
        guard process.isRunning else { return }
        kill(process.processIdentifier, signal)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while process.isRunning && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
        }
    }

    /// The last `bytes` of the process's log, for failure messages.
    public func logTail(_ bytes: Int = 2000) -> String {
        guard let data = FileManager.default.contents(atPath: logPath) else { return "" }
        return String(decoding: data.suffix(bytes), as: UTF8.self)
    }
}

/// A SecantusDB owned by one test: `start()`, `stop()` and `start()` again on the same port and
/// data directory, so a client sees the server go away and come back.
public final class PrivateSecantus: @unchecked Sendable {
    public let port: Int
    public let directory: String
    public let standalone: Bool
    private var server: TestProcess?

    public init(standalone: Bool = false) throws {
        port = try freeLoopbackPort()
        directory = try TestEnvironment.scratchDirectory("secantus")
        self.standalone = standalone
    }

    /// The URI of this server (with `replicaSet=secantus` unless standalone).
    public var uri: String {
        standalone ? "mongodb://127.0.0.1:\(port)/" : "mongodb://127.0.0.1:\(port)/?replicaSet=secantus"
    }

    /// Starts the server and waits until it accepts connections.
    public func start(timeout: Duration = .seconds(60)) async throws {
        var args = ["--host", "127.0.0.1", "--port", String(port), "--storage-path", directory + "/data",
                    "--log-level", "WARNING"]
        if standalone { args.append("--standalone") }
        let p = try TestProcess(try TestEnvironment.secantusd(), args, logPath: directory + "/server.log")
        server = p
        let port = self.port
        try await waitUntil("SecantusDB on port \(port)", timeout: timeout) {
            guard p.isRunning else { throw TestSupportError("secantusd exited: \(p.logTail())") }
            return isListening(port: port)
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after a bound) and waits until the port is closed.
    public func stop() async {
        await server?.stop()
        server = nil
    }

    deinit {
        if let p = server?.process, p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }
}

/// A RabbitMQ broker owned by one test, restartable on the same port and data directory.
public final class PrivateRabbitMQ: @unchecked Sendable {
    public let port: Int
    public let distributionPort: Int
    public let nodeName: String
    public let directory: String
    private var server: TestProcess?

    public init() throws {
        port = try freeLoopbackPort()
        distributionPort = try freeLoopbackPort()
        nodeName = "talustest\(port)@localhost"
        directory = try TestEnvironment.scratchDirectory("rabbitmq")
    }

    public var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    private var environment: [String: String] {
        let d = directory
        return [
            "HOME": d, "RABBITMQ_CONF_ENV_FILE": d + "/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": d + "/rabbitmq", "RABBITMQ_CONFIG_FILES": d + "/conf.d", "RABBITMQ_ENABLED_PLUGINS_FILE": d + "/enabled_plugins",
            "RABBITMQ_NODENAME": nodeName, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": String(port), "RABBITMQ_DIST_PORT": String(distributionPort),
            "RABBITMQ_MNESIA_BASE": d + "/mnesia", "RABBITMQ_LOG_BASE": d + "/log",
            "RABBITMQ_PID_FILE": d + "/pid", "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        ]
    }

    /// Starts the broker and waits until its AMQP port accepts connections (~7 s).
    public func start(timeout: Duration = .seconds(90)) async throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory + "/mnesia", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: directory + "/log", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: directory + "/conf.d", withIntermediateDirectories: true)  // not the host's /etc/rabbitmq/conf.d
        fm.createFile(atPath: directory + "/rabbitmq-env.conf", contents: Data())
        fm.createFile(
            atPath: directory + "/rabbitmq.conf",
            contents: Data("listeners.tcp.default = 127.0.0.1:\(port)\nconsumer_timeout = 691200000\n".utf8))
        fm.createFile(atPath: directory + "/enabled_plugins", contents: Data("[].\n".utf8))
        let p = try TestProcess(
            try TestEnvironment.rabbitmqServer(), [], environment: environment,
            logPath: directory + "/stdout.log")
        server = p
        let port = self.port
        try await waitUntil("RabbitMQ on port \(port)", timeout: timeout, interval: .milliseconds(200)) {
            guard p.isRunning else { throw TestSupportError("rabbitmq-server exited: \(p.logTail())") }
            return isListening(port: port)
        }
    }

    /// Runs `rabbitmqctl` against this broker (e.g. `["set_vm_memory_high_watermark",
    /// "absolute", "1"]`) and returns its output; throws if it fails.
    public func rabbitmqctl(_ arguments: [String], timeout: Duration = .seconds(60)) async throws -> String {
        let server = try TestEnvironment.rabbitmqServer()
        let ctl = String(server[..<(server.lastIndex(of: "/") ?? server.startIndex)]) + "/rabbitmqctl"
        let logPath = directory + "/rabbitmqctl-\(uniqueName("run")).log"
        let p = try TestProcess(ctl, ["-n", nodeName] + arguments, environment: environment, logPath: logPath)
        try await waitUntil("rabbitmqctl \(arguments.joined(separator: " "))", timeout: timeout, interval: .milliseconds(100)) {
            !p.isRunning
        }
        let output = p.logTail(20_000)
        guard p.process.terminationStatus == 0 else {
            throw TestSupportError("rabbitmqctl \(arguments) failed (\(p.process.terminationStatus)): \(output)")
        }
        return output
    }

    /// Stops the broker: SIGTERM to the Erlang VM (its pid file), SIGKILL if it is still
    /// there after 30 s, then waits for the launcher.
    public func stop() async {
        if let pidText = try? String(contentsOfFile: directory + "/pid", encoding: .utf8),
           let pid = Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGTERM)
        }
        await server?.stop(timeout: .seconds(30))
        server = nil
        let port = self.port
        try? await waitUntil("RabbitMQ port \(port) closed", timeout: .seconds(30)) { !isListening(port: port) }
    }

    deinit {
        if let p = server?.process, p.isRunning { kill(p.processIdentifier, SIGKILL) }
        if let pidText = try? String(contentsOfFile: directory + "/pid", encoding: .utf8),
           let pid = Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGKILL)
        }
    }
}
