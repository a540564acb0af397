// The VMs of image operations (DESIGN §5): one persistent libvirt domain per image while a
// session runs, named `talus-image-<id>` and tagged `image:<id>`, booted on a session overlay.
// The connection to libvirtd is opened lazily and reopened after it drops; its lifecycle events
// of image domains become hints that name the image.

import BSON
import Foundation
import Libvirt
import Logging
import TalusCore
import TalusModel

/// Domain names and owner tags of image VMs.
///
/// The owner tag is `image:<id>@<scope>`, the scope being the Talus database name: masters of
/// several installations (or test runs) may share one libvirtd, and each touches only its own
/// VMs, even when asked about an id it does not know.
enum ImageDomain {
    static let namePrefix = "talus-image-"
    static let ownerPrefix = "image:"

    static func name(_ id: ObjectId) -> String { namePrefix + id.hex }
    static func owner(_ id: ObjectId, scope: String) -> String { ownerPrefix + id.hex + "@" + scope }

    /// The image id in a domain name of ours, nil for other domains.
    static func imageID(domainName: String) -> ObjectId? {
        guard domainName.hasPrefix(namePrefix) else { return nil }
        return ObjectId(domainName.dropFirst(namePrefix.count))
    }

    /// The image id in an owner tag of `scope`, nil for other tags.
    static func imageID(owner: String, scope: String) -> ObjectId? {
        guard owner.hasPrefix(ownerPrefix), owner.hasSuffix("@" + scope) else { return nil }
        return ObjectId(owner.dropFirst(ownerPrefix.count).dropLast(scope.count + 1))
    }
}

/// The reconciler's libvirt connection: opened on first use, reopened after libvirtd goes away;
/// while open, lifecycle events of image domains are passed to `hint`.
actor LibvirtLink {
    private let uri: String
    private let logger: Logger
    private let hint: @Sendable (ObjectId) -> Void
    private var current: LibvirtConnection?
    private var opening: Task<LibvirtConnection, any Error>?
    private var events: Task<Void, Never>?
    private var resolvedType: (DomainType, String)?
    private var closed = false

    init(uri: String, logger: Logger, hint: @escaping @Sendable (ObjectId) -> Void) {
        self.uri = uri
        self.logger = logger
        self.hint = hint
    }

    /// An open connection (opening or reopening one if needed).
    func connection() async throws -> LibvirtConnection {
        if closed { throw CancellationError() }
        if let current, !current.isClosed { return current }
        if let opening { return try await opening.value }
        let task = Task { [uri, logger] in try await LibvirtConnection(uri: uri, logger: logger) }
        opening = task
        defer { opening = nil }
        let connection = try await task.value
        let stream = try await connection.lifecycleEvents()
        events?.cancel()
        let hint = self.hint
        events = Task {
            for await event in stream {
                if let id = ImageDomain.imageID(domainName: event.domainName) { hint(id) }
            }
        }
        if let previous = current {
            logger.info("libvirt connection reopened", metadata: ["reason": "\(previous.closeReason.map { "\($0)" } ?? "closed")"])
        }
        current = connection
        return connection
    }

    /// The domain type for image VMs, resolved once (see ``ImageConfig/DomainTypeSetting``), with
    /// the reason for the log.
    ///
    /// - Parameter probeDirectory: where `auto`'s KVM test guest logs its firmware (QEMU must reach it).
    func domainType(_ setting: ImageConfig.DomainTypeSetting, probeDirectory: String) async throws -> DomainType {
        if let (type, _) = resolvedType { return type }
        let type: DomainType
        let reason: String
        switch setting {
        case .kvm: (type, reason) = (.kvm, "libvirt.domain_type is kvm")
        case .qemu: (type, reason) = (.qemu, "libvirt.domain_type is qemu")
        case .auto:
            let probe = await try connection().probeDomainType(directory: probeDirectory)
            (type, reason) = (probe.type, probe.reason)
        }
        if resolvedType == nil {
            resolvedType = (type, reason)
            logger.info("image VM domain type", metadata: ["type": "\(type.rawValue)", "why": "\(reason)"])
        }
        return resolvedType!.0
    }

    /// Stops event forwarding and closes the connection; later calls fail.
    func close() async {
        closed = true
        events?.cancel()
        events = nil
        await current?.close()
        current = nil
    }
}

/// What a started session VM tells the user.
struct BootedSession: Sendable {
    var domain: String
    var vnc: VNCInfo?
    var deadline: Date
}

/// Builds, starts and inspects image VMs (only those of its scope, see ``ImageDomain``).
struct ImageVMs: Sendable {
    let config: ImageConfig
    let store: ImageStore
    let link: LibvirtLink
    /// The owner scope: the database name.
    let scope: String

    /// The domain definition of an image VM on the session overlay.
    func domainXML(
        id: ObjectId, type: DomainType, shape: VMShape?, withISO: Bool, vncPassword: String?, deadline: Date
    ) -> DomainXML {
        var xml = DomainXML(
            name: ImageDomain.name(id), type: type, memoryMiB: shape?.memoryMB ?? config.vmMemoryMB,
            vcpus: shape?.cpus ?? config.vmCPUs)
        xml.owner = ImageDomain.owner(id, scope: scope)
        xml.machine = config.diskBus == .sata ? "q35" : "pc"
        if type == .kvm { xml.cpuMode = .hostPassthrough }
        xml.disks = [DomainXML.Disk(path: store.sessionOverlay(id), format: .qcow2, bus: config.diskBus)]
        if withISO { xml.disks.append(.cdrom(path: store.configISO(id), bus: config.diskBus == .sata ? .sata : .ide)) }
        xml.boot = [.hardDisk]
        xml.serial = .file(store.serialLog(id))
        if let vncPassword {
            xml.vnc = .init(listen: config.vncListen, password: vncPassword, passwordValidUntil: deadline)
        }
        // A guest that reboots (installers do) keeps its session; power-off ends it.
        xml.onReboot = .restart
        xml.onPoweroff = .destroy
        xml.onCrash = .destroy
        if config.network == .user { xml.interfaces = [.init(.user)] }
        return xml
    }

    /// Starts the session VM of image `id`: a fresh overlay on the image, the config ISO when a
    /// script is given, a persistent domain (it survives a master restart; its shut-off reason
    /// tells a clean guest power-off from a crash), VNC with a fresh password when interactive.
    /// Returns once QEMU runs and, when interactive, its VNC server answers; the session's
    /// deadline is `length` from then (the VNC password stays valid that long after the boot
    /// deadline at most). Leftovers of an earlier attempt (a domain, an overlay) are removed
    /// first. On failure or cancellation the domain is removed again.
    func boot(
        id: ObjectId, shape: VMShape?, interactive: Bool, script: String?, length: Duration, bootDeadline: ContinuousClock.Instant
    ) async throws -> BootedSession {
        let connection = try await link.connection()
        let type = try await link.domainType(config.domainType, probeDirectory: store.root)
        let name = ImageDomain.name(id)
        try await remove(id)
        if try await connection.domainIfExists(named: name) != nil {
            throw ImageFailure("a VM named \(name) that belongs to another Talus installation exists on this host")
        }
        try store.discardSession(id)
        try await store.createSessionOverlay(id)
        if let script { try await store.makeConfigISO(id, script: script) }
        if store.exists(store.serialLog(id)) { try? FileManager.default.removeItem(atPath: store.serialLog(id)) }
        let password = interactive ? randomVNCPassword() : nil
        let passwordExpiry = Date().addingTimeInterval(seconds(length) + seconds(bootDeadline - .now))
        let xml = domainXML(
            id: id, type: type, shape: shape, withISO: script != nil, vncPassword: password, deadline: passwordExpiry)
        do {
            let domain = try await connection.defineDomain(xml)
            try Task.checkCancellation()
            try await domain.start()
            try Task.checkCancellation()
            var vnc: VNCInfo?
            var port: Int?
            if password != nil { port = try await waitForVNC(domain, until: bootDeadline) }
            let deadline = Date(timeIntervalSince1970: (Date().addingTimeInterval(seconds(length)).timeIntervalSince1970 * 1000).rounded() / 1000)
            if let password, let port {
                vnc = VNCInfo(host: config.vncPublicHost, port: port, password: password, expires: deadline)
            }
            return BootedSession(domain: name, vnc: vnc, deadline: deadline)
        } catch {
            _ = try? await connection.removeDomain(named: name)
            throw error
        }
    }

    /// Waits until the domain's VNC port is assigned and the server there sends an RFB banner.
    private func waitForVNC(_ domain: LibvirtDomain, until deadline: ContinuousClock.Instant) async throws -> Int {
        let probeHost = ["0.0.0.0", "::", "[::]"].contains(config.vncListen) ? "127.0.0.1" : config.vncListen
        while true {
            if let port = try await domain.vncGraphics()?.port,
                await vncServerAnswers(host: probeHost, port: port, timeout: .seconds(2))
            {
                return port
            }
            guard ContinuousClock.now < deadline else {
                throw ImageFailure("the VM's VNC server did not answer within images.boot_timeout")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// The domain of image `id`, or nil (also for a domain of that name owned by another scope).
    func domain(_ id: ObjectId) async throws -> LibvirtDomain? {
        guard let domain = try await link.connection().domainIfExists(named: ImageDomain.name(id)) else { return nil }
        return try await isOurs(domain, id) ? domain : nil
    }

    /// The state of `domain`, nil if it vanished meanwhile.
    static func state(of domain: LibvirtDomain) async throws(LibvirtError) -> DomainState? {
        do {
            return try await domain.state()
        } catch where error.isNoDomain {
            return nil
        }
    }

    /// Destroys and undefines the domain of image `id`, if there is one of this scope. True if
    /// there was.
    @discardableResult
    func remove(_ id: ObjectId) async throws -> Bool {
        guard let domain = try await domain(id) else { return false }
        return try await Self.removeIfExists(domain)
    }

    private static func removeIfExists(_ domain: LibvirtDomain) async throws(LibvirtError) -> Bool {
        do {
            try await domain.remove()
            return true
        } catch where error.isNoDomain {
            return false
        }
    }

    /// Image ids of every domain of this scope on this host, running or not.
    func ownedImageIDs() async throws -> [ObjectId] {
        try await link.connection().listDomains(ownerPrefix: ImageDomain.ownerPrefix).compactMap {
            ImageDomain.imageID(owner: $0.owner, scope: scope)
        }
    }

    private func isOurs(_ domain: LibvirtDomain, _ id: ObjectId) async throws -> Bool {
        try await Self.ownerIfExists(domain) == ImageDomain.owner(id, scope: scope)
    }

    private static func ownerIfExists(_ domain: LibvirtDomain) async throws(LibvirtError) -> String? {
        do {
            return try await domain.owner()
        } catch where error.isNoDomain {
            return nil
        }
    }
}

/// A duration in seconds (negative durations give 0).
func seconds(_ d: Duration) -> TimeInterval {
    max(0, d.secondsDouble)
}

/// Whether a VNC server at host:port sends the RFB protocol banner within `timeout`. Blocking
/// socket calls on a thread of their own.
func vncServerAnswers(host: String, port: Int, timeout: Duration) async -> Bool {
    (try? await blockingIO { readBanner(host: host, port: port, timeout: timeout).hasPrefix("RFB ") }) ?? false
}

private func readBanner(host: String, port: Int, timeout: Duration) -> String {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return "" }
    defer { freeaddrinfo(list) }
    let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else { return "" }
    var buffer = [UInt8](repeating: 0, count: 12)
    var got = 0
    while got < 12 {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, 12 - got, 0) }
        guard n > 0 else { break }
        got += n
    }
    return String(decoding: buffer.prefix(got), as: UTF8.self)
}

/// This host's name (for `vnc.public_host` when VNC listens on a wildcard address).
func currentHostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
