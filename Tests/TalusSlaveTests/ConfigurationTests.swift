import AMQP
import Foundation
import TalusCore
import TalusModel
import TalusTestSupport
import Testing
@testable import TalusSlave

@Suite("Slave configuration")
struct ConfigurationTests {
    func settings(_ yaml: String, env: [String: String] = [:]) async throws -> Settings {
        let path = try TestEnvironment.scratchDirectory("slave-config") + "/slave.yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return try await Settings(filePath: path, environment: env)
    }

    @Test func defaultsAreDocumentedAndSane() async throws {
        let c = try SlaveConfiguration(settings: try await settings("log:\n  level: info\n"))
        #expect(c.queues == ["default"])
        #expect(c.vms == 2)
        #expect(c.memoryMB > 0)
        #expect(c.cacheMaxBytes == 50 << 30)
        #expect(c.amqpNames == .standard)
        #expect(c.domainType == .auto)
        #expect(c.guest.heartbeatTimeout == .seconds(30))
        #expect(c.metricsListen?.host == "127.0.0.1" && c.metricsListen?.port == 9102)
        let reference = SlaveKeys.reference()
        for key in SlaveKeys.all { #expect(reference.contains("`\(key.name)`")) }
        #expect(reference.contains("TALUS_AMQP_URL") && reference.contains("**Secret.**"))
    }

    @Test func valuesFromTheFileAndTheEnvironment() async throws {
        let c = try SlaveConfiguration(settings: try await settings("""
            slave:
              queues: default, gpu
              vms: 6
              memory_mb: 8192
            cache:
              max_bytes: 1.5GiB
              verify: always
            libvirt:
              domain_type: qemu
            guest:
              heartbeat_timeout: 45s
            metrics:
              listen: ""
            amqp:
              namespace: lab-2
            """, env: ["TALUS_API_URL": "http://master:8420/", "TALUS_SHUTDOWN_GRACE": "2m"]))
        #expect(c.queues == ["default", "gpu"])
        #expect(c.vms == 6 && c.memoryMB == 8192)
        #expect(c.cacheMaxBytes == 1_610_612_736)
        #expect(c.cacheVerify == .always)
        #expect(c.domainType == .qemu)
        #expect(c.guest.heartbeatTimeout == .seconds(45))
        #expect(c.metricsListen == nil)
        #expect(c.amqpNames.partsQueue("gpu") == "lab-2.parts.gpu" && SlaveTopology.events(names: c.amqpNames).name == "lab-2.events")
        #expect(c.apiURL == "http://master:8420")
        #expect(c.shutdownGrace == .seconds(120))
    }

    @Test func badValuesNameTheirKey() async throws {
        let cases: [(String, String)] = [
            ("slave:\n  vms: zero\n", "slave.vms"),
            ("amqp:\n  namespace: \"a b\"\n", "amqp.namespace"),
            ("slave:\n  vms: 0\n", "slave.vms"),
            ("cache:\n  max_bytes: lots\n", "cache.max_bytes"),
            ("libvirt:\n  domain_type: xen\n", "libvirt.domain_type"),
            ("guest:\n  heartbeat_timeout: 3s\n", "guest.heartbeat_timeout"),
            ("api:\n  url: ftp://x\n", "api.url"),
            ("metrics:\n  listen: nowhere\n", "metrics.listen"),
            ("log:\n  level: loud\n", "log.level"),
            ("run:\n  dir: /\(String(repeating: "x", count: 80))\n", "run.dir"),
            ("slave:\n  vmz: 2\n", "slave.vmz"),
        ]
        for (yaml, key) in cases {
            let s = try await settings(yaml)
            #expect { _ = try SlaveConfiguration(settings: s) } throws: { ($0 as? SettingsError)?.key == key }
        }
    }

    @Test func sizes() {
        #expect(SlaveConfiguration.parseSize("1048576") == 1 << 20)
        #expect(SlaveConfiguration.parseSize("512K") == 512 << 10)
        #expect(SlaveConfiguration.parseSize("64MiB") == 64 << 20)
        #expect(SlaveConfiguration.parseSize("50G") == 50 << 30)
        #expect(SlaveConfiguration.parseSize("2TB") == 2 << 40)
        #expect(SlaveConfiguration.parseSize("-1") == nil)
        #expect(SlaveConfiguration.parseSize("big") == nil)
    }

    @Test func theSlaveKeepsItsID() throws {
        let path = try TestEnvironment.scratchDirectory("slave-id") + "/state/slave-id"
        let id = try loadOrCreateSlaveID(at: path)
        #expect(UUID(uuidString: id) != nil)
        #expect(try loadOrCreateSlaveID(at: path) == id)
        try "not a uuid".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: SettingsError.self) { try loadOrCreateSlaveID(at: path) }
    }

    /// The master declares the events queue with a dead-letter exchange; the slave's declaration
    /// must match it, or whichever daemon comes second gets 406 PRECONDITION_FAILED.
    @Test func eventsQueueIsDeclaredWithTheMastersArguments() {
        let events = SlaveTopology.events
        #expect(events.name == AMQPNames.eventsQueue)
        #expect(events.deadLetterExchange == AMQPNames.deadLetterExchange)
        #expect(events.durable)
    }
}
