// TalusTestSupport: what every test against the real services needs — where the services are,
// unique names, waiting for a condition with a deadline, and private servers that a test may
// stop and restart (for "the server went away" cases).
//
// The services are started once per test run by `provisioning/dev/services.sh start`, which
// exports the variables read here. `provisioning/dev/test.sh` does that for you.

import Foundation

/// Errors raised by the test support code itself.
public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where the shared test services are, read from the environment that
/// `provisioning/dev/services.sh start` prints.
public enum TestEnvironment {
    static func required(_ name: String) throws -> String {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
            throw TestSupportError(
                "\(name) is not set: run the tests through provisioning/dev/test.sh, or source the env.sh that `provisioning/dev/services.sh start` writes"
            )
        }
        return value
    }

    /// `mongodb://…/?replicaSet=secantus`: a SecantusDB replica set (change streams work).
    public static func mongoURI() throws -> String { try required("TALUS_TEST_MONGO_URI") }
    /// A standalone SecantusDB (no change streams), for error-path tests.
    public static func mongoStandaloneURI() throws -> String { try required("TALUS_TEST_MONGO_STANDALONE_URI") }
    /// `amqp://guest:guest@127.0.0.1:PORT/` of the shared RabbitMQ broker.
    public static func amqpURL() throws -> String { try required("TALUS_TEST_AMQP_URL") }
    /// `qemu:///system` of the running libvirtd.
    public static func libvirtURI() throws -> String { try required("TALUS_TEST_LIBVIRT_URI") }
    /// The run directory of the service set; tests create their own subdirectories in it.
    public static func runDir() throws -> String { try required("TALUS_TEST_RUN_DIR") }
    /// The `secantusd-py` launcher, for tests that run a private server.
    public static func secantusd() throws -> String { try required("TALUS_SECANTUSD") }
    /// `rabbitmq-server`, for tests that run a private broker.
    public static func rabbitmqServer() throws -> String { try required("TALUS_RABBITMQ_SERVER") }

    /// A fresh directory under the run directory, unique to the caller.
    public static func scratchDirectory(_ prefix: String) throws -> String {
        let path = try runDir() + "/scratch/" + uniqueName(prefix)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// A name unique within this test run and across runs (databases, queues, domains, ...).
/// Only `[a-z0-9_-]`, at most 48 characters, so it is valid everywhere these names go.
public func uniqueName(_ prefix: String) -> String {
    let clean = prefix.lowercased().map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }
    let random = UInt64.random(in: 0...UInt64.max)
    let suffix = String(random, radix: 36)
    return String(String(clean).prefix(34)) + "_" + suffix
}

/// Waits until `condition` returns true, polling every `interval`, or throws after `timeout`.
/// The only way tests wait: never a fixed sleep.
public func waitUntil(
    _ what: @autoclosure () -> String,
    timeout: Duration = .seconds(30),
    interval: Duration = .milliseconds(50),
    _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    var lastError: (any Error)?
    while true {
        do {
            if try await condition() { return }
            lastError = nil
        } catch {
            lastError = error
        }
        if clock.now >= deadline {
            let suffix = lastError.map { " (last error: \($0))" } ?? ""
            throw TestSupportError("timed out after \(timeout) waiting for \(what())\(suffix)")
        }
        try await Task.sleep(for: interval)
    }
}

/// Waits until `produce` returns a value, or throws after `timeout`.
public func waitFor<T>(
    _ what: @autoclosure () -> String,
    timeout: Duration = .seconds(30),
    interval: Duration = .milliseconds(50),
    _ produce: () async throws -> T?
) async throws -> T {
    var result: T?
    try await waitUntil(what(), timeout: timeout, interval: interval) {
        result = try await produce()
        return result != nil
    }
    return result!
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for starting a server).
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket() failed: errno \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
    }
    guard bound == 0 else { throw TestSupportError("bind() failed: errno \(errno)") }
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
public func isListening(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

extension TestEnvironment {
    /// The path of a product built by `swift build` (`talus-master`, `talus`, ...): it sits next
    /// to the test bundle in `.build/<triple>/debug/`.
    public static func executable(_ name: String) throws -> String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        // The swift-testing runner may run from inside the .xctest bundle directory.
        if dir.lastPathComponent.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        for candidate in [dir.appendingPathComponent(name).path,
                          FileManager.default.currentDirectoryPath + "/.build/debug/" + name] {
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw TestSupportError("\(name) is not built next to the tests (\(dir.path)): run swift build --build-tests")
    }

    /// The repository root (the directory holding Package.swift), for scripts such as
    /// images/build-test-guest.sh.
    public static func repositoryRoot() throws -> String {
        var dir = URL(fileURLWithPath: #filePath)
        while dir.path != "/" {
            dir = dir.deletingLastPathComponent()
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) { return dir.path }
        }
        throw TestSupportError("cannot find the repository root from \(#filePath)")
    }
}
