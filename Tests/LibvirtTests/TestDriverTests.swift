// Tests against libvirt's in-process test driver (test:///default): the wrapper's calls, error
// mapping and events, without a hypervisor.

import Libvirt
import TalusTestSupport
import Testing

@Suite("Libvirt with the test driver")
struct TestDriverTests {
    /// A small domain the test driver accepts.
    func domainXML(_ name: String, owner: String? = nil) -> DomainXML {
        var xml = DomainXML(name: name, type: .qemu, memoryMiB: 128)
        xml.disks = [.init(path: "/nonexistent/talus-test.qcow2"), .cdrom(path: "/nonexistent/config.iso")]
        xml.channels = [.init(socketPath: "/tmp/talus-test-agent.sock", targetName: "org.talus.agent.0")]
        xml.serial = .file("/tmp/talus-test-serial.log")
        xml.vnc = .init(listen: "127.0.0.1", password: "pw")
        xml.owner = owner
        return xml
    }

    @Test func defineStartStateDestroyUndefineCycle() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-cycle")
        try await withDomainsRemoved(connection, [name]) {
            let domain = try await connection.defineDomain(domainXML(name))
            #expect(domain.name == name)
            #expect(domain.uuid.count == 36)
            #expect(domain.id == nil)
            #expect(try await domain.state() == .shutOff(.unknown))
            #expect(try await domain.isPersistent())
            #expect(try await !domain.isActive())

            try await domain.start()
            let state = try await domain.state()
            #expect(state.isRunning && state.isActive, "state after start: \(state)")
            #expect(try await domain.isActive())
            let running = try await connection.domain(named: name)
            #expect(running.id != nil)

            try await domain.suspend()
            #expect(try await domain.state() == .paused(.user))
            try await domain.resume()
            #expect(try await domain.state().isRunning)

            try await domain.destroy()
            #expect(try await domain.state() == .shutOff(.destroyed))

            try await domain.undefine()
            let error = await #expect(throws: LibvirtError.self) { try await domain.state() }
            #expect(error?.isNoDomain == true, "state of an undefined domain: \(String(describing: error))")
        }
    }

    @Test func transientDomainVanishesWhenDestroyed() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-transient")
        try await withDomainsRemoved(connection, [name]) {
            let domain = try await connection.createDomain(domainXML(name))
            #expect(try await domain.state().isRunning)
            #expect(try await !domain.isPersistent())
            try await domain.destroy()
            #expect(try await connection.domainIfExists(named: name) == nil)
        }
    }

    @Test func lookupsByNameUUIDAndID() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-lookup")
        try await withDomainsRemoved(connection, [name]) {
            let defined = try await connection.defineDomain(domainXML(name))
            let byName = try await connection.domain(named: name)
            let byUUID = try await connection.domain(uuid: defined.uuid)
            #expect(byName.uuid == defined.uuid)
            #expect(byUUID.name == name)
            try await defined.start()
            let id = try #require(try await connection.domain(named: name).id)
            #expect(try await connection.domain(id: id).name == name)
        }
    }

    @Test func listAllActiveAndByPrefix() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let prefix = uniqueName("talus-test-list")
        let names = [prefix + "-a", prefix + "-b", prefix + "-c"]
        try await withDomainsRemoved(connection, names) {
            for name in names { _ = try await connection.defineDomain(domainXML(name)) }
            try await connection.domain(named: names[1]).start()

            let all = try await connection.listDomains(namePrefix: prefix)
            #expect(all.map(\.name) == names)
            let active = try await connection.listDomains(.active, namePrefix: prefix)
            #expect(active.map(\.name) == [names[1]])
            let inactive = try await connection.listDomains(.inactive, namePrefix: prefix)
            #expect(inactive.map(\.name) == [names[0], names[2]])
            let everything = try await connection.listDomains()
            #expect(everything.contains { $0.name == "test" }, "the test driver's own domain is listed")
        }
    }

    @Test func ownerMetadataFindsTaggedDomains() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let tag = uniqueName("image")
        let mine = uniqueName("talus-test-owned")
        let other = uniqueName("talus-test-other")
        let untagged = uniqueName("talus-test-untagged")
        try await withDomainsRemoved(connection, [mine, other, untagged]) {
            _ = try await connection.defineDomain(domainXML(mine, owner: "image:\(tag)"))
            _ = try await connection.defineDomain(domainXML(other, owner: "part:\(tag)"))
            let plain = try await connection.defineDomain(domainXML(untagged))
            #expect(try await plain.owner() == nil)

            let owned = try await connection.listDomains(ownerPrefix: "image:\(tag)")
            #expect(owned.map(\.domain.name) == [mine])
            #expect(owned.map(\.owner) == ["image:\(tag)"])
            let description = try await connection.domain(named: mine).describe()
            #expect(description.metadataText() == "image:\(tag)")
        }
    }

    @Test func missingDomainIsNoDomain() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-missing")
        let error = await #expect(throws: LibvirtError.self) { try await connection.domain(named: name) }
        #expect(error?.isNoDomain == true)
        #expect(error?.operation == "virDomainLookupByName")
        #expect(error?.message.isEmpty == false)
        #expect(try await connection.domainIfExists(named: name) == nil)
        #expect(try await connection.removeDomain(named: name) == false)
        let byUUID = await #expect(throws: LibvirtError.self) {
            try await connection.domain(uuid: "00000000-0000-0000-0000-000000000000")
        }
        #expect(byUUID?.isNoDomain == true)
    }

    @Test func destroyingAnInactiveDomainIsOperationInvalid() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-inactive")
        try await withDomainsRemoved(connection, [name]) {
            let domain = try await connection.defineDomain(domainXML(name))
            let error = await #expect(throws: LibvirtError.self) { try await domain.destroy() }
            #expect(error?.isOperationInvalid == true)
            #expect(error?.message.contains("not running") == true, "message: \(error?.message ?? "")")
            #expect(error?.level == .error)
            #expect(error?.description.contains("virDomainDestroyFlags") == true)
            // remove() tolerates the same state.
            try await domain.remove()
            #expect(try await connection.domainIfExists(named: name) == nil)
        }
    }

    @Test func badXMLIsAMappedErrorNotACrash() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        for xml in ["<domain", "not xml at all", "<domain type='qemu'><name>x</name></domain>", ""] {
            let error = await #expect(throws: LibvirtError.self) { try await connection.defineDomain(xml: xml) }
            #expect(error?.code != .ok, "define of \(xml.debugDescription): \(String(describing: error))")
            #expect(error?.message.isEmpty == false)
        }
        let malformed = await #expect(throws: LibvirtError.self) { try await connection.defineDomain(xml: "<domain") }
        #expect(malformed?.isInvalidXML == true, "\(String(describing: malformed))")
    }

    @Test func definingTheSameNameTwiceWithAnotherUUIDFails() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-twice")
        try await withDomainsRemoved(connection, [name]) {
            _ = try await connection.defineDomain(domainXML(name))
            var again = domainXML(name)
            again.uuid = "11111111-2222-3333-4444-555555555555"
            let error = await #expect(throws: LibvirtError.self) { try await connection.defineDomain(again) }
            #expect(error?.isDomainExists == true, "\(String(describing: error))")
        }
    }

    @Test func lifecycleEventsForDefineStartDestroyUndefine() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-events")
        let events = EventCollector(try await connection.lifecycleEvents())
        defer { events.stop() }
        try await withDomainsRemoved(connection, [name]) {
            let domain = try await connection.defineDomain(domainXML(name))
            try await events.waitFor(name, .defined(.added))
            try await domain.start()
            try await events.waitFor(name, .started(.booted))
            try await domain.destroy()
            try await events.waitFor(name, .stopped(.destroyed))
            try await domain.undefine()
            try await events.waitFor(name, .undefined(.removed))
            #expect(events.kinds(of: name) == [.defined(.added), .started(.booted), .stopped(.destroyed), .undefined(.removed)])
            let uuids = Set(events.all.filter { $0.domainName == name }.map(\.domainUUID))
            #expect(uuids == [domain.uuid])
        }
    }

    @Test func lifecycleEventsFilteredByDomain() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let watched = uniqueName("talus-test-watched")
        let ignored = uniqueName("talus-test-ignored")
        try await withDomainsRemoved(connection, [watched, ignored]) {
            let domain = try await connection.defineDomain(domainXML(watched))
            let other = try await connection.defineDomain(domainXML(ignored))
            let events = EventCollector(try await connection.lifecycleEvents(for: domain))
            defer { events.stop() }
            try await other.start()
            try await domain.start()
            try await events.waitFor(watched, .started(.booted))
            try await other.destroy()
            try await domain.destroy()
            try await events.waitFor(watched, .stopped(.destroyed))
            #expect(events.all.allSatisfy { $0.domainName == watched }, "\(events.all)")
        }
    }

    /// Ending a sequence delivers what was already buffered (events of other tests on the shared
    /// test driver), then nil: the loops below end, bounded by the time limit.
    @Test(.timeLimit(.minutes(1)))
    func eventSequenceEndsOnCancelAndOnClose() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let cancelled = try await connection.lifecycleEvents()
        cancelled.cancel()
        for await _ in cancelled {}

        let closing = try await connection.lifecycleEvents()
        await connection.close()
        for await _ in closing {}
        #expect(connection.closeReason == .client)
    }

    @Test func closedConnectionThrowsAndWaitersWake() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        #expect(await connection.isAlive())
        #expect(!connection.isClosed)
        let name = uniqueName("talus-test-closed")
        let domain = try await connection.defineDomain(domainXML(name))
        async let reason = connection.waitUntilClosed()
        try await domain.undefine()
        await connection.close()
        await connection.close()  // idempotent
        #expect(await reason == .client)
        #expect(connection.isClosed)
        #expect(await !connection.isAlive())
        let error = await #expect(throws: LibvirtError.self) { try await connection.domain(named: name) }
        #expect(error?.isConnectionFailure == true)
        let domainError = await #expect(throws: LibvirtError.self) { try await domain.state() }
        #expect(domainError?.isConnectionFailure == true)
    }

    @Test func waitingForCloseCanBeCancelled() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let waiter = Task { await connection.waitUntilClosed() }
        waiter.cancel()
        #expect(await waiter.value == nil)
        #expect(!connection.isClosed)
    }

    @Test func builderOutputIsAcceptedAndRoundTrips() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-builder")
        try await withDomainsRemoved(connection, [name]) {
            var xml = domainXML(name, owner: "image:abc")
            xml.interfaces = [.init(.user)]
            xml.vcpus = 2
            let domain = try await connection.defineDomain(xml, validate: true)
            let description = try await domain.describe(securityInfo: true)
            #expect(description.name == name)
            #expect(description.type == "qemu")
            #expect(description.disks.map(\.target) == ["vda", "hda"])
            #expect(description.disks.map(\.device) == ["disk", "cdrom"])
            #expect(description.disks[1].readOnly)
            #expect(description.channels.map(\.targetName) == ["org.talus.agent.0"])
            #expect(description.serialPaths == ["/tmp/talus-test-serial.log"])
            #expect(description.vnc?.password == "pw")
            #expect(description.vnc?.listenAddress == "127.0.0.1")
            #expect(description.vnc?.port == nil, "the test driver assigns no VNC port")
            #expect(description.metadataText() == "image:abc")
            #expect(try await domain.vncGraphics()?.password == nil, "no password without security info")
            #expect(try await domain.serialConsolePath() == "/tmp/talus-test-serial.log")
        }
    }

    @Test func namesWithXMLSpecialCharactersAreEscaped() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        let name = uniqueName("talus-test-escape") + "<&'\">"
        try await withDomainsRemoved(connection, [name]) {
            var xml = domainXML(name, owner: "image:<&'\">")
            xml.serial = .file("/tmp/talus test 'quoted' & <odd>.log")
            let domain = try await connection.defineDomain(xml)
            #expect(domain.name == name)
            #expect(try await connection.domain(named: name).uuid == domain.uuid)
            #expect(try await domain.owner() == "image:<&'\">")
            #expect(try await domain.serialConsolePath() == "/tmp/talus test 'quoted' & <odd>.log")
        }
    }

    @Test func domainCapabilitiesAndTypeDetection() async throws {
        let connection = try await LibvirtConnection(uri: testDriverURI)
        #expect(await connection.detectDomainType(configured: .qemu) == .qemu)
        #expect(await connection.detectDomainType(configured: .kvm) == .kvm)
        // The test driver has no domain capabilities: the probe falls back to TCG.
        #expect(await connection.detectDomainType() == .qemu)
        let capabilities = try await connection.capabilities()
        #expect(capabilities.contains("<capabilities>"))
    }
}
