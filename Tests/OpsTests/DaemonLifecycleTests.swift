// Each daemon as systemd runs it, against the real services: started with NOTIFY_SOCKET on a
// socket the test listens on, it sends READY=1 only once it serves (/healthz answers the moment
// READY arrives), exposes Prometheus text on /metrics with the metric families operators need,
// and on SIGTERM sends STOPPING=1 and exits 0.

import Foundation
import Testing
import TalusTestSupport

/// A daemon started the way its unit starts it (`serve --config FILE`), with a notify socket.
struct DaemonUnderTest {
    let name: String
    let process: TestProcess
    let notify: NotifyListener
    let opsPort: Int
    let directory: String

    /// The configuration of each daemon for a test: private database, vhost and namespace,
    /// scratch directories, free loopback ports. Returns the YAML and the /healthz port.
    static func configuration(_ daemon: String, directory: String, vhost: PrivateVhost) throws -> (yaml: String, port: Int) {
        let port = try freeLoopbackPort()
        let mongo = try TestEnvironment.mongoURI()
        let database = uniqueName("ops")
        let fm = FileManager.default
        for sub in ["uploads", "images", "cache", "run", "bundles", "code"] {
            try fm.createDirectory(atPath: directory + "/" + sub, withIntermediateDirectories: true)
        }
        switch daemon {
        case "talus-api":
            return ("""
                http:
                  listen: "127.0.0.1:\(port)"
                  metrics_public: "true"
                mongo:
                  uri: "\(mongo)"
                  database: "\(database)"
                storage:
                  uploads: "\(directory)/uploads"
                  images: "\(directory)/images"

                """, port)
        case "talus-master":
            return ("""
                mongo:
                  uri: "\(mongo)"
                  database: "\(database)"
                amqp:
                  url: "\(vhost.url)"
                metrics:
                  listen: "127.0.0.1:\(port)"
                images:
                  store: "\(directory)/images"
                storage:
                  uploads: "\(directory)/uploads"
                libvirt:
                  domain_type: "qemu"

                """, port)
        case "talus-slave":
            return ("""
                slave:
                  id_file: "\(directory)/slave-id"
                amqp:
                  url: "\(vhost.url)"
                api:
                  url: "http://127.0.0.1:1"
                  token: "unused"
                cache:
                  dir: "\(directory)/cache"
                run:
                  dir: "\(directory)/run"
                agent:
                  path: "\(try TestEnvironment.executable("talus-agent"))"
                libvirt:
                  domain_type: "qemu"
                metrics:
                  listen: "127.0.0.1:\(port)"

                """, port)
        default:
            throw TestSupportError("no test configuration for \(daemon)")
        }
    }

    static func start(_ daemon: String, vhost: PrivateVhost) throws -> DaemonUnderTest {
        let dir = try TestEnvironment.scratchDirectory(daemon)
        let (yaml, port) = try configuration(daemon, directory: dir, vhost: vhost)
        try yaml.write(toFile: dir + "/config.yaml", atomically: true, encoding: .utf8)
        let notify = try NotifyListener(directory: dir)
        let p = try TestProcess(try TestEnvironment.executable(daemon), ["serve", "--config", dir + "/config.yaml"],
                                environment: ["NOTIFY_SOCKET": notify.path], logPath: dir + "/output.log")
        return DaemonUnderTest(name: daemon, process: p, notify: notify, opsPort: port, directory: dir)
    }
}

@Suite struct DaemonLifecycleTests {
    /// The metric families each daemon must expose (DESIGN §10, issue 8 §4), present from the
    /// start so dashboards and alerts see zeros rather than gaps.
    static let families: [String: [String]] = [
        "talus-api": ["talus_api_requests_total", "talus_api_request_duration_seconds"],
        "talus-master": ["talus_master_parts", "talus_master_change_stream_lag_seconds", "talus_master_reconciles_total",
                         "talus_master_reconcile_errors_total", "talus_master_amqp_reconnects_total"],
        "talus-slave": ["talus_slave_parts_running", "talus_slave_parts_done_total", "talus_slave_parts_failed_total",
                        "talus_slave_vm_boot_seconds", "talus_slave_image_sync_bytes_total", "talus_slave_image_sync_seconds",
                        "talus_slave_amqp_reconnects_total", "talus_slave_guest_protocol_errors_total"],
    ]

    @Test(.timeLimit(.minutes(5)), arguments: ["talus-api", "talus-master", "talus-slave"])
    func notifyHealthMetricsAndShutdown(daemon: String) async throws {
        let vhost = try await PrivateVhost.create("ops")
        let d = try DaemonUnderTest.start(daemon, vhost: vhost)
        defer { d.notify.close() }
        do {
            // READY=1 only once it serves: the moment it arrives, /healthz answers.
            try await waitUntil("\(daemon) to send READY=1", timeout: .seconds(120), interval: .milliseconds(10)) {
                guard d.process.isRunning else { throw TestSupportError("\(daemon) exited:\n\(d.process.logTail())") }
                return d.notify.has("READY=1")
            }
            let first = try await httpGet(port: d.opsPort, path: "/healthz")
            #expect([200, 503].contains(first.status), "\(daemon) /healthz right after READY=1: \(first.status) \(first.body)")
            try await waitUntil("\(daemon) /healthz 200", timeout: .seconds(60), interval: .milliseconds(100)) {
                try await httpGet(port: d.opsPort, path: "/healthz").status == 200
            }
            #expect(d.notify.messages.filter { $0.contains("READY=1") }.count == 1, "\(d.notify.messages)")
            #expect(!d.notify.has("STOPPING=1"))

            // Prometheus text that parses, with the families operators need.
            let metrics = try await httpGet(port: d.opsPort, path: "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.headers["content-type"]?.hasPrefix("text/plain") == true)
            let (samples, types) = try parsePrometheusText(metrics.body)
            for family in Self.families[daemon] ?? [] {
                let present = types[family] != nil || samples.contains { $0.name == family || $0.name.hasPrefix(family + "_") }
                #expect(present, "\(daemon) /metrics lacks \(family)")
            }

            // SIGTERM: STOPPING=1, then exit 0.
            kill(d.process.pid, SIGTERM)
            try await waitUntil("\(daemon) to send STOPPING=1", timeout: .seconds(60)) { d.notify.has("STOPPING=1") }
            try await waitUntil("\(daemon) to exit", timeout: .seconds(90)) { !d.process.isRunning }
            #expect(d.process.process.terminationReason == .exit && d.process.process.terminationStatus == 0,
                    "\(daemon) exit status \(d.process.process.terminationStatus):\n\(d.process.logTail())")
        } catch {
            await d.process.stop(signal: SIGKILL)
            await vhost.delete()
            throw error
        }
        await vhost.delete()
    }
}
