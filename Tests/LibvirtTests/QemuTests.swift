// Tests against the real libvirtd (TALUS_TEST_LIBVIRT_URI, qemu:///system) with QEMU under TCG.
// No guest OS: domains without a disk sit in SeaBIOS, which is enough for VNC, events and XML.
// Kept few and quick.

import Foundation
import Libvirt
import TalusCore
import TalusTestSupport
import Testing

@Suite("Libvirt with libvirtd and QEMU", .serialized)
struct QemuTests {
    /// A diskless TCG domain with a serial log in a scratch directory.
    func diskless(_ name: String, directory: String) -> DomainXML {
        var xml = DomainXML(name: name, type: .qemu, memoryMiB: 64)
        xml.serial = .file(directory + "/serial.log")
        return xml
    }

    @Test(.timeLimit(.minutes(5)))
    func transientDomainServesPasswordProtectedVNCAndReportsItsDestruction() async throws {
        let connection = try await systemConnection()
        let name = uniqueName("talus-test-vnc")
        let directory = try TestEnvironment.scratchDirectory("libvirt-vnc")
        let password = "t4lu5!pw"
        var xml = diskless(name, directory: directory)
        xml.vnc = .init(listen: "127.0.0.1", password: password, passwordValidUntil: Date().addingTimeInterval(3600))
        xml.owner = "test:\(name)"

        try await withDomainsRemoved(connection, [name]) {
            // autoDestroy: even a crashed test process leaves no VM behind.
            let domain = try await connection.createDomain(xml, options: .autoDestroy)
            let events = EventCollector(try await connection.lifecycleEvents(for: domain))
            defer { events.stop() }
            #expect(try await domain.state().isRunning)

            let vnc = try await waitFor("a VNC port for \(name)") { () async throws -> VNCGraphics? in
                let graphics = try await domain.vncGraphics()
                return graphics?.port == nil ? nil : graphics
            }
            let port = try #require(vnc.port)
            #expect(vnc.listenAddress == "127.0.0.1")
            #expect(vnc.password == nil, "the password shows only with security info")

            let greeting = try await waitFor("an RFB greeting on port \(port)", timeout: .seconds(20)) {
                try? await rfbGreeting(port: port)
            }
            #expect(greeting.banner.hasPrefix("RFB 003."), "banner: \(greeting.banner.debugDescription)")
            #expect(greeting.securityTypes.contains(2), "VNC authentication offered: \(greeting.securityTypes)")
            #expect(!greeting.securityTypes.contains(1), "no unauthenticated access: \(greeting.securityTypes)")

            let secure = try await domain.xml(securityInfo: true)
            #expect(secure.contains("passwd='\(password)'"))
            #expect(try await !domain.xml().contains(password))
            #expect(try await domain.vncGraphics(includePassword: true)?.password == password)
            #expect(try await domain.vncGraphics(includePassword: true)?.passwordValidTo != nil)
            #expect(try await domain.serialConsolePath() == directory + "/serial.log")
            #expect(try await domain.owner() == "test:\(name)")
            let owned = try await connection.listDomains(ownerPrefix: "test:\(name)", filter: .transient)
            #expect(owned.map(\.domain.name) == [name])

            try await domain.destroy()
            try await events.waitFor(name, .stopped(.destroyed))
            #expect(try await connection.domainIfExists(named: name) == nil, "a transient domain vanishes")
        }
    }

    @Test(.timeLimit(.minutes(5)))
    func persistentDomainDefineStartShutdownDestroyUndefine() async throws {
        let connection = try await systemConnection()
        let name = uniqueName("talus-test-persist")
        let directory = try TestEnvironment.scratchDirectory("libvirt-persist")
        let events = EventCollector(try await connection.lifecycleEvents())
        defer { events.stop() }

        try await withDomainsRemoved(connection, [name]) {
            var xml = diskless(name, directory: directory)
            xml.owner = "image:\(name)"
            let domain = try await connection.defineDomain(xml)
            try await events.waitFor(name, .defined(.added))
            let owned = try await connection.listDomains(ownerPrefix: "image:\(name)")
            #expect(owned.map(\.domain.name) == [name])
            #expect(owned.map(\.owner) == ["image:\(name)"])
            #expect(try await connection.listDomains(ownerPrefix: "image:\(name)-other").isEmpty)
            #expect(try await domain.state().isShutOff)

            try await domain.start()
            try await events.waitFor(name, .started(.booted))
            #expect(try await domain.state() == .running(.booted))
            #expect(try await connection.domain(named: name).id != nil)
            let startAgain = await #expect(throws: LibvirtError.self) { try await domain.start() }
            #expect(startAgain?.isOperationInvalid == true, "\(String(describing: startAgain))")

            // SeaBIOS without an OS ignores the ACPI power button: the request is accepted, the
            // domain keeps running, and destroy ends it.
            try await domain.shutdown()
            try await domain.destroy()
            try await events.waitFor(name, .stopped(.destroyed))
            #expect(try await domain.state() == .shutOff(.destroyed))
            let destroyAgain = await #expect(throws: LibvirtError.self) { try await domain.destroy() }
            #expect(destroyAgain?.isOperationInvalid == true)

            try await domain.undefine()
            try await events.waitFor(name, .undefined(.removed))
            let gone = await #expect(throws: LibvirtError.self) { try await connection.domain(named: name) }
            #expect(gone?.isNoDomain == true)
        }
    }

    /// libvirtd going away (here: its socket connection cut by a proxy, as a daemon restart does)
    /// fires the close callback: waiters learn why, event sequences end, calls fail with a
    /// connection error, so a daemon knows to reconnect.
    @Test(.timeLimit(.minutes(2)))
    func droppedDaemonConnectionIsReported() async throws {
        let directory = try TestEnvironment.scratchDirectory("libvirt-proxy")
        let proxy = try UnixSocketProxy(path: directory + "/libvirt.sock", target: "/var/run/libvirt/libvirt-sock")
        defer { proxy.stop() }
        let connection = try await LibvirtConnection(uri: "qemu+unix:///system?socket=\(proxy.path)")
        #expect(await connection.isAlive())
        _ = try await connection.listDomains()
        let events = try await connection.lifecycleEvents()

        async let reason = connection.waitUntilClosed()
        proxy.cutConnections()
        let why = await reason
        #expect(why == .endOfFile || why == .error, "close reason: \(String(describing: why))")
        for await _ in events {}  // ends once the connection is closed
        #expect(connection.isClosed)
        #expect(await !connection.isAlive())
        let error = await #expect(throws: LibvirtError.self) { try await connection.listDomains() }
        #expect(error?.isConnectionFailure == true, "\(String(describing: error))")
        await connection.close()
    }

    @Test("the KVM probe boots a real test guest and agrees with the provisioning scripts' probe")
    func kvmProbeAgreesWithProvisioning() async throws {
        let connection = try await systemConnection()
        let directory = try TestEnvironment.scratchDirectory("libvirt-kvm-probe")
        let clock = ContinuousClock()
        let start = clock.now
        let probe = await connection.probeDomainType(directory: directory)
        #expect(clock.now - start < .seconds(20), "\(probe)")
        #expect(!probe.reason.isEmpty)
        let script = try await runCommand(
            "/bin/bash", ["-c", "source \"$1/provisioning/lib/common.sh\" && detect_domain_type_libvirt", "probe",
                          try TestEnvironment.repositoryRoot()],
            timeout: .seconds(60))
        #expect(script.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == probe.type.rawValue,
                "Swift: \(probe); script: \(script.stderr)")
        // It leaves nothing behind: no probe domain, no files.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
        try await waitUntil("no probe domain left (other tests probe too)", timeout: .seconds(30)) {
            try await connection.listDomains().allSatisfy { !$0.name.hasPrefix("talus-kvm-probe-") }
        }
        await connection.close()
    }

    @Test func domainCapabilitiesOfTCG() async throws {
        let connection = try await systemConnection()
        let caps = try await connection.domainCapabilities(virtType: .qemu)
        #expect(caps.contains("<domain>qemu</domain>"))
        #expect(await connection.detectDomainType(configured: .qemu) == .qemu)
    }
}
