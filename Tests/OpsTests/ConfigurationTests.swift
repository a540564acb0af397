// Configuration (DESIGN §10): docs/configuration.md is generated from the daemons' own key
// declarations and must match them; a daemon started with a bad configuration exits at once
// with a message naming the key and status 78 (EX_CONFIG, which the units do not restart).

import Foundation
import Testing
import TalusTestSupport

@Suite struct ConfigurationTests {
    @Test func referencePageIsCurrent() async throws {
        let root = try TestEnvironment.repositoryRoot()
        let bin = (try TestEnvironment.executable("talus-api") as NSString).deletingLastPathComponent
        let r = try await runScript(root + "/docs/generate-configuration.sh", ["--check", "--bin", bin], timeout: .seconds(120))
        #expect(r.status == 0, "docs/configuration.md is stale; run docs/generate-configuration.sh:\n\(r.output.suffix(4000))")
    }

    /// Every key of every daemon is on the page, with its default.
    @Test(arguments: ["talus-api", "talus-master", "talus-slave", "talus-code"])
    func everyKeyIsDocumented(daemon: String) async throws {
        let root = try TestEnvironment.repositoryRoot()
        let page = try String(contentsOfFile: root + "/docs/configuration.md", encoding: .utf8)
        let r = try await runScript(try TestEnvironment.executable(daemon), ["config-reference"], timeout: .seconds(60))
        #expect(r.status == 0)
        let rows = r.output.split(separator: "\n").filter { $0.hasPrefix("| `") }
        #expect(!rows.isEmpty, "\(daemon) config-reference printed no keys")
        for row in rows { #expect(page.contains(row), "docs/configuration.md lacks: \(row)") }
    }

    /// (daemon, YAML, the key the error must name)
    static let badConfigurations: [(String, String, String)] = [
        ("talus-api", "http:\n  listen: \"nowhere\"\n", "http.listen"),
        ("talus-api", "mongo:\n  databse: \"talus\"\n", "mongo.databse"),
        ("talus-master", "jobs:\n  window: \"many\"\n", "jobs.window"),
        ("talus-master", "amqp:\n  url_fil: \"/x\"\n", "amqp.url_fil"),
        ("talus-slave", "slave:\n  vms: \"many\"\n", "slave.vms"),
        ("talus-slave", "amqp:\n  url_file: \"/nonexistent/amqp-url\"\n", "amqp.url_file"),
    ]

    @Test(arguments: badConfigurations.indices)
    func badConfigurationNamesTheKey(index: Int) async throws {
        let (daemon, yaml, key) = Self.badConfigurations[index]
        let dir = try TestEnvironment.scratchDirectory("badconfig")
        try yaml.write(toFile: dir + "/config.yaml", atomically: true, encoding: .utf8)
        let r = try await runScript(try TestEnvironment.executable(daemon), ["serve", "--config", dir + "/config.yaml"],
                                    timeout: .seconds(60))
        #expect(r.status == 78, "\(daemon) with a bad \(key) exited \(r.status):\n\(r.output.suffix(2000))")
        #expect(r.output.contains(key), "\(daemon)'s message does not name \(key):\n\(r.output.suffix(2000))")
        #expect(r.output.split(separator: "\n").count <= 5, "one clear message, not a trace:\n\(r.output.suffix(2000))")
    }
}
