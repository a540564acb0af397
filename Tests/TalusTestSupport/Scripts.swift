// Running scripts to completion, and private RabbitMQ vhosts on the shared test broker (so a
// test's daemons use the real exchange and queue names without meeting another test's).

import Foundation

/// Runs a command to completion (on a thread of its own) and returns its exit status and
/// combined output; the command's own deadline is `timeout`.
public func runScript(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                      timeout: Duration = .seconds(600)) async throws -> (status: Int32, output: String) {
    let log = try TestEnvironment.scratchDirectory("script") + "/output.log"
    let p = try TestProcess(executable, arguments, environment: environment, logPath: log)
    do {
        try await waitUntil("\(executable) \(arguments.joined(separator: " ")) to finish", timeout: timeout, interval: .milliseconds(100)) {
            !p.isRunning
        }
    } catch {
        await p.stop(signal: SIGKILL)
        throw TestSupportError("\(error)\n\(p.logTail(4000))")
    }
    return (p.process.terminationStatus, p.logTail(1 << 20))
}

/// A private RabbitMQ vhost on the shared test broker, so the daemons' exchanges and queues never
/// meet another test's.
public struct PrivateVhost: Sendable {
    /// The vhost name (unique).
    public let name: String
    /// `amqp://…/<name>` on the shared broker.
    public let url: String

    /// Creates a fresh vhost with full permissions for `guest`.
    public static func create(_ prefix: String = "vhost") async throws -> PrivateVhost {
        let name = uniqueName(prefix)
        try await rabbitmqctl(["add_vhost", name])
        try await rabbitmqctl(["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])
        let base = try TestEnvironment.amqpURL()
        let url = (base.hasSuffix("/") ? base : base + "/") + name
        return PrivateVhost(name: name, url: url)
    }

    /// Deletes the vhost with everything in it (errors ignored: cleanup).
    public func delete() async {
        _ = try? await Self.rabbitmqctl(["delete_vhost", name])
    }

    /// Runs `rabbitmqctl` against the shared broker (TALUS_TEST_AMQP_MGMT: node and HOME).
    public static func rabbitmqctl(_ arguments: [String]) async throws {
        guard let mgmt = ProcessInfo.processInfo.environment["TALUS_TEST_AMQP_MGMT"] else {
            throw TestSupportError("TALUS_TEST_AMQP_MGMT is not set (run through provisioning/dev/test.sh)")
        }
        let parts = mgmt.split(separator: " ").map(String.init)
        let r = try await runScript("/usr/lib/rabbitmq/bin/rabbitmqctl", ["-q", "-n", parts[0]] + arguments,
                                    environment: ["HOME": parts[1]], timeout: .seconds(60))
        guard r.status == 0 else { throw TestSupportError("rabbitmqctl \(arguments): \(r.output)") }
    }
}
