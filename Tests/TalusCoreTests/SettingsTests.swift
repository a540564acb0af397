import Foundation
import Testing
@testable import TalusCore

@Suite struct SettingsTests {
    let url = SettingKey("amqp.url", type: "url", default: "amqp://localhost", secret: true, doc: "broker")
    let slots = SettingKey("slave.vms", type: "int", default: "2", doc: "VMs")
    let debug = SettingKey("debug", type: "bool", default: "false", doc: "debug")
    let grace = SettingKey("shutdown.grace", type: "duration", default: "30s", doc: "grace")

    func write(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "talus-settings-\(UUID().uuidString).yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func fileThenEnvironmentThenDefault() async throws {
        let path = try write("amqp:\n  url: amqp://file:5672/\nslave:\n  vms: 4\n")
        let s = try await Settings(filePath: path, environment: ["TALUS_SLAVE_VMS": "6"])
        #expect(try s.string(url) == "amqp://file:5672/")
        #expect(try s.int(slots) == 6)
        #expect(try s.bool(debug) == false)
        #expect(try s.duration(grace) == .seconds(30))
        try s.checkUnknownKeys([url, slots, debug, grace])
    }

    @Test func renderedYAMLReadsBackTheSameValues() async throws {
        let values = ["amqp.url": "amqp://u:p\"q\\@host:5672/", "slave.vms": "3", "shutdown.grace": "5s"]
        let yaml = Settings.yaml(values, header: "written by a test")
        #expect(yaml.hasPrefix("# written by a test\namqp:\n"))
        let s = try await Settings(filePath: try write(yaml), environment: [:])
        #expect(try s.string(url) == values["amqp.url"])
        #expect(try s.int(slots) == 3)
        #expect(try s.duration(grace) == .seconds(5))
        try s.checkUnknownKeys([url, slots, debug, grace])
    }

    @Test func badValuesNameTheKey() async throws {
        let path = try write("slave:\n  vms: many\ndebug: perhaps\n")
        let s = try await Settings(filePath: path, environment: [:])
        #expect { try s.int(slots) } throws: { ($0 as? SettingsError)?.key == "slave.vms" }
        #expect { try s.bool(debug) } throws: { ($0 as? SettingsError)?.description.contains("debug") == true }
        #expect { try s.int(SettingKey("slave.vms", type: "int", default: "99", doc: ""), range: 1...8) } throws: { _ in true }
    }

    @Test func unknownKeysAreReportedWithASuggestion() async throws {
        let path = try write("amqp:\n  urll: x\n")
        let s = try await Settings(filePath: path, environment: [:])
        #expect { try s.checkUnknownKeys([url, slots]) } throws: {
            let e = $0 as? SettingsError
            return e?.key == "amqp.urll" && e?.problem.contains("did you mean amqp.url") == true
        }
    }

    @Test func secretsFromFiles() async throws {
        let secretPath = NSTemporaryDirectory() + "talus-secret-\(UUID().uuidString)"
        try "amqp://user:pw@broker/\n".write(toFile: secretPath, atomically: true, encoding: .utf8)
        let s = try await Settings(filePath: nil, environment: ["TALUS_AMQP_URL_FILE": secretPath])
        #expect(try s.string(url) == "amqp://user:pw@broker/")
        let missing = try await Settings(filePath: nil, environment: ["TALUS_AMQP_URL_FILE": "/nonexistent/x"])
        #expect { try missing.string(url) } throws: { ($0 as? SettingsError)?.key == "amqp.url_file" }
    }

    @Test func missingRequiredFileAndBadYAML() async throws {
        await #expect(throws: SettingsError.self) { _ = try await Settings(filePath: "/nonexistent.yaml", required: true, environment: [:]) }
        let bad = try write("a: [unclosed\n")
        await #expect(throws: SettingsError.self) { _ = try await Settings(filePath: bad, environment: [:]) }
    }

    @Test func durations() {
        #expect(Settings.parseDuration("250ms") == .milliseconds(250))
        #expect(Settings.parseDuration("2h") == .seconds(7200))
        #expect(Settings.parseDuration("1.5") == .milliseconds(1500))
        #expect(Settings.parseDuration("soon") == nil)
        #expect(Settings.parseDuration("-1s") == nil)
    }

    @Test func referenceListsEveryKey() throws {
        let text = settingsReference(title: "talus-slave", file: "/etc/talus/slave.yaml", keys: [url, slots])
        #expect(text.contains("`amqp.url`") && text.contains("`TALUS_AMQP_URL`") && text.contains("**Secret.**"))
        #expect(text.contains("`slave.vms`"))
        let piped = settingsReference(title: "t", file: "f", keys: [SettingKey("x", type: "auto|kvm", default: "a|b", doc: "one | two")])
        let row = try #require(piped.split(separator: "\n").last)
        #expect(row == "| `x` | `TALUS_X` | auto\\|kvm | `a\\|b` | one \\| two |")
    }
}

@Suite struct SystemdNotifyTests {
    /// Listens on a unix datagram socket like systemd does and checks what the daemon sends.
    @Test func notifyProtocolReachesTheSocket() throws {
        let path = NSTemporaryDirectory() + "notify-\(UUID().uuidString.prefix(8)).sock"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        func receive() -> String {
            var buffer = [UInt8](repeating: 0, count: 512)
            let n = recv(fd, &buffer, buffer.count, 0)
            return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
        }
        #expect(SystemdNotifier.send("READY=1\nSTATUS=serving", environment: ["NOTIFY_SOCKET": path]))
        #expect(receive() == "READY=1\nSTATUS=serving")
        #expect(SystemdNotifier.send("STOPPING=1", environment: ["NOTIFY_SOCKET": path]))
        #expect(receive() == "STOPPING=1")
        #expect(!SystemdNotifier.send("READY=1", environment: [:]))
    }
}

@Suite struct CommandTests {
    @Test func outputAndFailures() async throws {
        let ok = try await runCommand("/bin/sh", ["-c", "echo out; echo err >&2"])
        #expect(ok.stdout == "out\n" && ok.stderr == "err\n" && ok.status == 0)
        await #expect { try await runCommand("/bin/sh", ["-c", "echo boom >&2; exit 3"]) } throws: {
            let e = $0 as? CommandError
            return e?.status == 3 && e?.description.contains("boom") == true
        }
        await #expect { try await runCommand("/nonexistent/tool", []) } throws: { $0 is CommandError }
    }

    @Test func timeoutKillsTheProcess() async throws {
        let clock = ContinuousClock()
        let start = clock.now
        await #expect { try await runCommand("/bin/sleep", ["30"], timeout: .milliseconds(300)) } throws: {
            ($0 as? CommandError)?.timedOut == true
        }
        #expect(clock.now - start < .seconds(10))
    }

    @Test func hashing() throws {
        let path = NSTemporaryDirectory() + "hash-\(UUID().uuidString)"
        try Data("abc".utf8).write(to: URL(fileURLWithPath: path))
        let (hex, size) = try sha256OfFile(path)
        #expect(hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(size == 3)
        #expect(randomVNCPassword().count == 8)
        #expect(randomToken().count >= 40)
    }
}
