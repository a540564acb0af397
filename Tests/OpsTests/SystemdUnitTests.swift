// The unit files in systemd/: they verify offline, are hardened (every standard protection is
// set, or a comment in the unit says why not), and agree with what provisioning creates.

import Foundation
import Testing
import TalusTestSupport

@Suite struct SystemdUnitTests {
    static let root = (try? TestEnvironment.repositoryRoot()) ?? "."

    static func units() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: root + "/systemd").filter { $0.hasSuffix(".service") }.sorted()
    }

    static func text(_ unit: String) throws -> String {
        try String(contentsOfFile: root + "/systemd/" + unit, encoding: .utf8)
    }

    /// `Key=value` lines of a unit (comments and sections dropped).
    static func directives(_ text: String) -> [(key: String, value: String)] {
        text.split(separator: "\n").compactMap { line in
            let l = line.trimmingCharacters(in: .whitespaces)
            guard !l.hasPrefix("#"), !l.hasPrefix("["), let eq = l.firstIndex(of: "=") else { return nil }
            return (String(l[..<eq]), String(l[l.index(after: eq)...]))
        }
    }

    /// The unit with the installed executables' paths replaced by what this build has, so the
    /// offline verification finds them (systemd-analyze checks that ExecStart is executable).
    static func localCopy(_ unit: String, in directory: String) throws -> String {
        var text = try Self.text(unit)
        for name in ["talus-api", "talus-master", "talus-slave"] {
            text = text.replacingOccurrences(of: "/usr/local/bin/\(name) ", with: try TestEnvironment.executable(name) + " ")
        }
        text = text.replacingOccurrences(of: "/opt/talus/secantusdb/bin/secantusd-py ", with: try TestEnvironment.secantusd() + " ")
        let path = directory + "/" + unit
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func thereAreUnitsForEveryDaemon() throws {
        let units = try Self.units()
        for daemon in ["talus-api.service", "talus-master.service", "talus-slave.service", "talus-secantusdb.service"] {
            #expect(units.contains(daemon), "systemd/\(daemon) is missing")
        }
    }

    @Test(arguments: try SystemdUnitTests.units())
    func verifiesOffline(unit: String) async throws {
        let dir = try TestEnvironment.scratchDirectory("unit")
        let path = try Self.localCopy(unit, in: dir)
        let result = try await runScript("/usr/bin/systemd-analyze", ["verify", path], timeout: .seconds(120))
        // Any output is a warning (unknown directive, bad value, missing dependency): none allowed.
        #expect(result.status == 0 && result.output.isEmpty, "systemd-analyze verify \(unit):\n\(result.output)")
    }

    @Test(arguments: try SystemdUnitTests.units())
    func exposureIsLow(unit: String) async throws {
        let dir = try TestEnvironment.scratchDirectory("unit")
        let path = try Self.localCopy(unit, in: dir)
        let result = try await runScript("/usr/bin/systemd-analyze", ["security", "--offline=yes", "--no-pager", path],
                                         timeout: .seconds(120))
        let line = try #require(result.output.split(separator: "\n").first { $0.contains("Overall exposure level") },
                                "no exposure level in:\n\(result.output)")
        // "→ Overall exposure level for talus-api.service: 1.3 OK 🙂"
        let score = try #require(line.split(separator: ":").last?.split(separator: " ").first.flatMap { Double($0) })
        #expect(score <= 2.0, "\(unit): \(line)")
    }

    /// Every standard protection is either set in the unit or named in a comment that says why not.
    @Test(arguments: try SystemdUnitTests.units())
    func everyRelaxationIsExplained(unit: String) throws {
        let text = try Self.text(unit)
        let set = Dictionary(Self.directives(text).map { ($0.key, $0.value) }, uniquingKeysWith: { a, b in a + " " + b })
        let comments = text.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }.joined(separator: "\n")
        let protections: [(String, String?)] = [
            ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
            ("PrivateMounts", "yes"), ("PrivateUsers", "yes"), ("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", ""),
            ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes"), ("MemoryDenyWriteExecute", "yes"),
            ("RestrictRealtime", "yes"), ("RestrictNamespaces", "yes"), ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"), ("ProtectKernelLogs", "yes"), ("ProtectControlGroups", "yes"),
            ("ProtectClock", "yes"), ("ProtectHostname", "yes"), ("RestrictAddressFamilies", nil),
            ("SystemCallFilter", nil), ("SystemCallArchitectures", "native"), ("UMask", nil),
        ]
        for (key, wanted) in protections {
            if let value = set[key] {
                if let wanted { #expect(value == wanted, "\(unit): \(key)=\(value), expected \(key)=\(wanted)") }
            } else {
                #expect(comments.contains(key + "="), "\(unit): \(key)= is neither set nor explained in a comment")
            }
        }
        #expect(set["User"] != nil && set["User"] != "root", "\(unit): runs as a dedicated user")
        #expect(set["Restart"] == "on-failure", "\(unit): Restart=on-failure")
    }

    @Test(arguments: ["talus-api.service", "talus-master.service", "talus-slave.service"])
    func daemonUnitsUseTheNotifyProtocol(unit: String) throws {
        let set = Dictionary(Self.directives(try Self.text(unit)).map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        let daemon = unit.replacingOccurrences(of: ".service", with: "")
        #expect(set["Type"] == "notify")
        #expect(set["NotifyAccess"] == "main")
        let config = "/etc/talus/\(daemon.replacingOccurrences(of: "talus-", with: "")).yaml"
        #expect(set["ExecStart"] == "/usr/local/bin/\(daemon) serve --config \(config)")
        #expect(set["RestartPreventExitStatus"] == "78", "a bad configuration (EX_CONFIG) is not restarted")
    }

    /// With ProtectSystem=strict a unit whose ReadWritePaths do not exist fails to start: every
    /// one of them must be a directory the provisioning scripts create.
    @Test(arguments: try SystemdUnitTests.units())
    func writablePathsAreProvisioned(unit: String) throws {
        let scripts = try ["master.sh", "hypervisor.sh"].map {
            try String(contentsOfFile: Self.root + "/provisioning/" + $0, encoding: .utf8)
        }.joined(separator: "\n")
        let paths = Self.directives(try Self.text(unit)).filter { $0.key == "ReadWritePaths" }
            .flatMap { $0.value.split(separator: " ").map(String.init) }
        #expect(!paths.isEmpty, "\(unit): ProtectSystem=strict needs the writable paths listed")
        for path in paths {
            #expect(scripts.contains("ensure_dir \(path) "), "\(unit): \(path) is not created by provisioning/")
        }
    }
}
