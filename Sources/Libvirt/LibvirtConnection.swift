// LibvirtConnection: one open virConnectPtr, its keepalive and close callback, and the domain
// operations that start from a connection (define, create, look up, list).

import CLibvirt
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A libvirt object pointer handed between threads. libvirt's connection and domain objects are
/// reference counted and internally locked, so using one from several threads is safe; this box
/// only carries the pointer out of a thread-pool closure.
struct UnsafeLibvirtPointer: @unchecked Sendable {
    let raw: OpaquePointer
}

/// An open connection to a libvirt driver (`qemu:///system`, `test:///default`, ...).
///
/// Opening one starts the process-wide libvirt event loop (``LibvirtRuntime``) if needed, turns
/// on keepalive (so a dead libvirtd is noticed) and registers a close callback
/// (``waitUntilClosed()``), so a daemon can reconnect when libvirtd restarts.
///
/// Every operation runs its blocking libvirt call on ``threadPool``, never on the Swift
/// concurrency pool, and throws ``LibvirtError``. The connection is closed by ``close()`` or,
/// at the latest, when the object is deinitialized. libvirt allows concurrent calls on one
/// connection from several threads.
public final class LibvirtConnection: Sendable, CustomStringConvertible {
    /// The URI this connection was opened with.
    public let uri: String
    /// The threads on which this connection's blocking calls run.
    public let threadPool: NIOThreadPool
    let logger: Logger
    private let handle: Mutex<OpaquePointer?>
    let monitor: ConnectionMonitor

    /// Keepalive settings: a probe every `interval` seconds; the connection is closed (reason
    /// ``CloseReason/keepAlive``) after `count` probes go unanswered.
    public struct KeepAlive: Sendable, Hashable {
        /// Seconds between probes.
        public var interval: Int32
        /// Unanswered probes before the connection is closed.
        public var count: UInt32
        /// Keepalive with these settings.
        public init(interval: Int32, count: UInt32) {
            self.interval = interval
            self.count = count
        }
        /// Every 5 s, give up after 3 missed probes (about 20 s to notice a hung libvirtd).
        public static let `default` = KeepAlive(interval: 5, count: 3)
    }

    /// Opens a connection to `uri`.
    ///
    /// - Parameters:
    ///   - uri: a libvirt URI such as `qemu:///system` or `test:///default`.
    ///   - readOnly: open with `virConnectOpenReadOnly` (listing and reading only).
    ///   - keepAlive: keepalive settings, or nil to leave libvirt's. Drivers without keepalive
    ///     (local ones like `test:///`) are accepted silently.
    ///   - threadPool: where blocking calls run (a started pool); by default
    ///     ``LibvirtRuntime/defaultThreadPool``.
    ///   - logger: logs opens and closes at debug, each libvirt call at trace.
    public init(
        uri: String, readOnly: Bool = false, keepAlive: KeepAlive? = .default, threadPool: NIOThreadPool? = nil,
        logger: Logger = Logger(label: "talus.libvirt")
    ) async throws(LibvirtError) {
        try LibvirtRuntime.start()
        var logger = logger
        logger[metadataKey: "libvirt-uri"] = "\(uri)"
        let pool = threadPool ?? LibvirtRuntime.defaultThreadPool
        let monitor = ConnectionMonitor(uri: uri, logger: logger)
        let openLogger = logger
        let opened = try await LibvirtRuntime.run(on: pool) { () throws(LibvirtError) -> UnsafeLibvirtPointer in
            let p = try LibvirtRuntime.check(
                "virConnectOpen", readOnly ? virConnectOpenReadOnly(uri) : virConnectOpen(uri))
            if let keepAlive, virConnectSetKeepAlive(p, keepAlive.interval, keepAlive.count) < 0 {
                let error = LibvirtError.last("virConnectSetKeepAlive")
                openLogger.debug("keepalive not enabled", metadata: ["error": "\(error)"])
            }
            monitor.register(on: p)
            return UnsafeLibvirtPointer(raw: p)
        }
        self.uri = uri
        self.threadPool = pool
        self.logger = logger
        self.monitor = monitor
        self.handle = Mutex(opened.raw)
        logger.debug("libvirt connection opened")
    }

    deinit {
        guard let p = handle.withLock({ $0 }) else { return }
        let pointer = UnsafeLibvirtPointer(raw: p)
        let monitor = self.monitor
        // virConnectClose may talk to libvirtd: not in deinit, which may run on any thread.
        threadPool.submit { _ in
            monitor.unregister(from: pointer.raw)
            virConnectClose(pointer.raw)
        }
        monitor.closed(.client)
    }

    public var description: String { "LibvirtConnection(\(uri))" }

    /// Closes the connection. Idempotent. Operations started afterwards throw a ``LibvirtError``
    /// with ``LibvirtError/isConnectionFailure``; calls already running finish first (each holds its
    /// own libvirt reference). Lifecycle event sequences of this connection end, and
    /// ``waitUntilClosed()`` returns ``CloseReason/client``.
    public func close() async {
        guard let p = handle.withLock({ h -> OpaquePointer? in defer { h = nil }; return h }) else { return }
        let pointer = UnsafeLibvirtPointer(raw: p)
        let monitor = self.monitor
        _ = try? await LibvirtRuntime.run(on: threadPool) { () throws(LibvirtError) in
            monitor.unregister(from: pointer.raw)
            virConnectClose(pointer.raw)
        }
        monitor.closed(.client)
        logger.debug("libvirt connection closed")
    }

    /// Whether ``close()`` has been called (or libvirt reported the connection closed).
    public var isClosed: Bool { handle.withLock { $0 == nil } || monitor.closeReason != nil }

    /// Why the connection closed, once it has: by libvirt's close callback (libvirtd went away,
    /// keepalive timed out) or by ``close()``; nil while open.
    public var closeReason: CloseReason? { monitor.closeReason }

    /// Waits until the connection is closed — libvirtd stopped or restarted, keepalive timed out,
    /// or ``close()`` — and says why. Returns nil if the waiting task is cancelled first.
    /// A daemon typically awaits this in a loop and reconnects with backoff.
    public func waitUntilClosed() async -> CloseReason? {
        await monitor.waitUntilClosed()
    }

    /// Asks libvirt whether the connection is still usable (`virConnectIsAlive`).
    public func isAlive() async -> Bool {
        (try? await call("virConnectIsAlive") { p throws(LibvirtError) in
            try LibvirtRuntime.check("virConnectIsAlive", virConnectIsAlive(p)) == 1
        }) ?? false
    }

    // MARK: Running calls

    /// Runs `body` with this connection's pointer on ``threadPool``. The pointer holds an extra
    /// libvirt reference for the duration of the call, so a concurrent ``close()`` cannot free it.
    func call<T: Sendable>(
        _ operation: String, _ body: @escaping @Sendable (OpaquePointer) throws(LibvirtError) -> T
    ) async throws(LibvirtError) -> T {
        logger.trace("libvirt call", metadata: ["call": "\(operation)"])
        return try await LibvirtRuntime.run(on: threadPool) { [self] () throws(LibvirtError) -> T in
            let p = try retainedPointer(operation)
            defer { virConnectClose(p) }
            return try body(p)
        }
    }

    /// The connection pointer with one more reference (release with `virConnectClose`), or the
    /// "closed" error.
    func retainedPointer(_ operation: String) throws(LibvirtError) -> OpaquePointer {
        let p = handle.withLock { h -> OpaquePointer? in
            guard let h else { return nil }
            virConnectRef(h)
            return h
        }
        guard let p else { throw LibvirtError.closed(uri, operation: operation) }
        return p
    }

    /// Throws the "closed" error after ``close()``.
    func checkOpen(_ operation: String) throws(LibvirtError) {
        if handle.withLock({ $0 == nil }) { throw LibvirtError.closed(uri, operation: operation) }
    }

    // MARK: Host

    /// The host capabilities XML (`virConnectGetCapabilities`).
    public func capabilities() async throws(LibvirtError) -> String {
        try await call("virConnectGetCapabilities") { p throws(LibvirtError) in
            try LibvirtRuntime.takeString("virConnectGetCapabilities", virConnectGetCapabilities(p))
        }
    }

    /// The domain capabilities XML for a virtualization type (`virConnectGetDomainCapabilities`,
    /// like `virsh domcapabilities`). Fails when the hypervisor cannot run that type at all
    /// (e.g. `kvm` without `/dev/kvm`). nil arguments let libvirt choose.
    public func domainCapabilities(
        virtType: DomainType? = nil, emulator: String? = nil, arch: String? = nil, machine: String? = nil
    ) async throws(LibvirtError) -> String {
        try await call("virConnectGetDomainCapabilities") { p throws(LibvirtError) in
            try LibvirtRuntime.takeString(
                "virConnectGetDomainCapabilities",
                virConnectGetDomainCapabilities(p, emulator, arch, machine, virtType?.rawValue, 0))
        }
    }

    /// The domain type libvirt's capabilities claim: `configured` when given; otherwise
    /// ``DomainType/kvm`` when libvirt reports KVM domain capabilities, else ``DomainType/qemu``.
    ///
    /// This trusts libvirt: where `/dev/kvm` exists but KVM guests do not actually run (nested or
    /// restricted hosts) it still answers `kvm`. Daemons choosing a type use
    /// ``probeDomainType(directory:timeout:)``, which boots a guest.
    public func detectDomainType(configured: DomainType? = nil) async -> DomainType {
        if let configured { return configured }
        guard let caps = try? await domainCapabilities(virtType: .kvm),
            let root = try? MiniXML.parse(caps),
            root.child("domain")?.text.trimmed == "kvm"
        else { return .qemu }
        return .kvm
    }

    /// The domain type that works on this host, and why.
    public struct DomainTypeProbe: Sendable, Equatable, CustomStringConvertible {
        public let type: DomainType
        public let reason: String
        public var description: String { "\(type.rawValue): \(reason)" }
    }

    /// Finds out whether KVM guests run here, defined the way the daemons define theirs
    /// (through libvirt, `host-passthrough` CPU): a transient KVM domain with no disk must get
    /// through its firmware (SeaBIOS prints "Booting from" or "No bootable device" on its debug
    /// port) within `timeout`; otherwise software emulation. A host where libvirt reports no KVM
    /// answers at once; a usable KVM in about a second. Some hosts have a `/dev/kvm` whose guests
    /// hang in the firmware, or abort under libvirt ("failed to set MSR") although QEMU alone
    /// boots.
    ///
    /// - Parameter directory: where the firmware's log goes for the duration of the probe; the
    ///   QEMU process libvirt starts must be able to write there (not a private /tmp).
    public func probeDomainType(directory: String, timeout: Duration = .seconds(10)) async -> DomainTypeProbe {
        guard await detectDomainType() == .kvm else {
            return DomainTypeProbe(type: .qemu, reason: "libvirt reports no KVM; software emulation (slow)")
        }
        let fm = FileManager.default
        let dir = directory + "/kvm-probe-\(UInt32.random(in: 0...UInt32.max))"
        let log = dir + "/firmware.log"
        let name = "talus-kvm-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? fm.removeItem(atPath: dir) }
        do {
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o1777])
            try fm.setAttributes([.posixPermissions: 0o1777], ofItemAtPath: dir)  // not narrowed by the umask
        } catch {
            return DomainTypeProbe(type: .qemu, reason: "cannot create the KVM probe's directory \(dir): \(error); software emulation (slow)")
        }
        let xml = """
            <domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
              <name>\(name.xmlEscaped)</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
              <os><type arch='x86_64' machine='pc'>hvm</type><bios rebootTimeout='0'/></os>
              <cpu mode='host-passthrough'/><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
              <devices/>
              <qemu:commandline>
                <qemu:arg value='-chardev'/><qemu:arg value='file,id=talusprobe,path=\(log.split(separator: ",", omittingEmptySubsequences: false).joined(separator: ",,").xmlEscaped)'/>
                <qemu:arg value='-device'/><qemu:arg value='isa-debugcon,iobase=0x402,chardev=talusprobe'/>
              </qemu:commandline>
            </domain>
            """
        let clock = ContinuousClock()
        let start = clock.now
        let domain: LibvirtDomain
        do {
            domain = try await createDomain(xml: xml)
        } catch {
            return DomainTypeProbe(type: .qemu, reason: "libvirt could not start a KVM guest (\(error)); software emulation (slow)")
        }
        var booted: Duration?
        while booted == nil, clock.now - start < timeout {
            if let text = try? String(contentsOfFile: log, encoding: .utf8),
               text.contains("Booting from") || text.contains("No bootable device") {
                booted = clock.now - start
            } else {
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        try? await domain.destroy()  // it may have ended by itself (on_reboot, on_crash)
        if let booted {
            return DomainTypeProbe(type: .kvm, reason: "a KVM guest reached its firmware's boot menu in \(booted)")
        }
        return DomainTypeProbe(type: .qemu, reason:
            "a KVM guest did not reach its firmware's boot menu within \(timeout) (it hangs or aborted); software emulation (slow)")
    }

    // MARK: Domains

    /// Defines a persistent domain from XML (`virDomainDefineXMLFlags`); it is not started.
    /// Redefining an existing inactive domain with the same name and UUID updates it.
    /// - Parameter validate: ask libvirt to validate the XML against its schema first.
    public func defineDomain(xml: String, validate: Bool = false) async throws(LibvirtError) -> LibvirtDomain {
        let flags = validate ? UInt32(VIR_DOMAIN_DEFINE_VALIDATE.rawValue) : 0
        let domain = try await call("virDomainDefineXMLFlags") { [self] p throws(LibvirtError) in
            LibvirtDomain(
                connection: self,
                pointer: try LibvirtRuntime.check("virDomainDefineXMLFlags", virDomainDefineXMLFlags(p, xml, flags)))
        }
        logger.debug("domain defined", metadata: ["domain": "\(domain.name)", "uuid": "\(domain.uuid)"])
        return domain
    }

    /// Defines a persistent domain from a ``DomainXML`` (see ``defineDomain(xml:validate:)``).
    public func defineDomain(_ xml: DomainXML, validate: Bool = false) async throws(LibvirtError) -> LibvirtDomain {
        try await defineDomain(xml: xml.render(), validate: validate)
    }

    /// Creates and starts a transient domain from XML (`virDomainCreateXML`): it vanishes when it
    /// stops. Returns once QEMU has started (the guest is booting).
    public func createDomain(xml: String, options: CreateOptions = []) async throws(LibvirtError) -> LibvirtDomain {
        let domain = try await call("virDomainCreateXML") { [self] p throws(LibvirtError) in
            LibvirtDomain(
                connection: self,
                pointer: try LibvirtRuntime.check("virDomainCreateXML", virDomainCreateXML(p, xml, options.rawValue)))
        }
        logger.debug("transient domain created", metadata: ["domain": "\(domain.name)", "uuid": "\(domain.uuid)"])
        return domain
    }

    /// Creates and starts a transient domain from a ``DomainXML`` (see ``createDomain(xml:options:)``).
    public func createDomain(_ xml: DomainXML, options: CreateOptions = []) async throws(LibvirtError)
        -> LibvirtDomain
    {
        try await createDomain(xml: xml.render(), options: options)
    }

    /// The domain with this name; throws ``LibvirtError/isNoDomain`` if there is none.
    public func domain(named name: String) async throws(LibvirtError) -> LibvirtDomain {
        try await call("virDomainLookupByName") { [self] p throws(LibvirtError) in
            LibvirtDomain(
                connection: self, pointer: try LibvirtRuntime.check("virDomainLookupByName", virDomainLookupByName(p, name)))
        }
    }

    /// The domain with this UUID (`xxxxxxxx-xxxx-…`); throws ``LibvirtError/isNoDomain`` if there
    /// is none.
    public func domain(uuid: String) async throws(LibvirtError) -> LibvirtDomain {
        try await call("virDomainLookupByUUIDString") { [self] p throws(LibvirtError) in
            LibvirtDomain(
                connection: self,
                pointer: try LibvirtRuntime.check("virDomainLookupByUUIDString", virDomainLookupByUUIDString(p, uuid)))
        }
    }

    /// The running domain with this hypervisor id; throws ``LibvirtError/isNoDomain`` if none.
    public func domain(id: UInt32) async throws(LibvirtError) -> LibvirtDomain {
        try await call("virDomainLookupByID") { [self] p throws(LibvirtError) in
            LibvirtDomain(
                connection: self, pointer: try LibvirtRuntime.check("virDomainLookupByID", virDomainLookupByID(p, Int32(id))))
        }
    }

    /// The domain with this name, or nil if there is none (other errors are thrown).
    public func domainIfExists(named name: String) async throws(LibvirtError) -> LibvirtDomain? {
        do {
            return try await domain(named: name)
        } catch where error.isNoDomain {
            return nil
        }
    }

    /// Domains of this connection (`virConnectListAllDomains`), sorted by name.
    /// - Parameters:
    ///   - filter: which domains; empty means all (active and inactive, persistent and transient).
    ///   - namePrefix: keep only names starting with this.
    public func listDomains(_ filter: DomainListFilter = [], namePrefix: String? = nil) async throws(LibvirtError)
        -> [LibvirtDomain]
    {
        let all = try await call("virConnectListAllDomains") { [self] p throws(LibvirtError) -> [LibvirtDomain] in
            var list: UnsafeMutablePointer<virDomainPtr?>?
            let n = try LibvirtRuntime.check(
                "virConnectListAllDomains", virConnectListAllDomains(p, &list, filter.rawValue))
            defer { free(list) }
            guard let list else { return [] }
            return (0..<Int(n)).compactMap { i in list[i].map { LibvirtDomain(connection: self, pointer: $0) } }
        }
        let matching = namePrefix.map { prefix in all.filter { $0.name.hasPrefix(prefix) } } ?? all
        return matching.sorted { $0.name < $1.name }
    }

    /// Domains tagged with a metadata element in `namespace` (by default Talus's owner tag, see
    /// ``DomainXML/owner``) whose text starts with `ownerPrefix`, with that text. This is how a
    /// daemon finds its own domains after a restart. Domains that vanish while being looked at
    /// are skipped.
    public func listDomains(
        ownerPrefix: String, namespace: String = DomainXML.talusNamespace, filter: DomainListFilter = []
    ) async throws(LibvirtError) -> [OwnedDomain] {
        var owned: [OwnedDomain] = []
        for domain in try await listDomains(filter) {
            do {
                if let owner = try await domain.owner(namespace: namespace), owner.hasPrefix(ownerPrefix) {
                    owned.append(OwnedDomain(domain: domain, owner: owner))
                }
            } catch where error.isNoDomain {
                continue
            }
        }
        return owned
    }

    /// Destroys (if running) and undefines (if persistent) the domain with this name, whatever its
    /// state. Returns false if there was no such domain. For cleanup paths: a domain that stops
    /// or disappears meanwhile is not an error.
    @discardableResult
    public func removeDomain(named name: String, undefineOptions: UndefineOptions = .standard)
        async throws(LibvirtError) -> Bool
    {
        guard let domain = try await domainIfExists(named: name) else { return false }
        try await domain.remove(undefineOptions: undefineOptions)
        return true
    }

    /// Lifecycle events (defined, started, stopped, ...) of all domains of this connection, or
    /// only of `domain`. Registration is done when this returns, so events of operations started
    /// afterwards are not missed. See ``DomainLifecycleEvents``.
    public func lifecycleEvents(for domain: LibvirtDomain? = nil) async throws(LibvirtError) -> DomainLifecycleEvents {
        try await DomainLifecycleEvents.register(on: self, domain: domain)
    }
}

/// Which domains ``LibvirtConnection/listDomains(_:namePrefix:)`` returns
/// (`VIR_CONNECT_LIST_DOMAINS_*`). Empty means all; flags of one group (active/inactive,
/// persistent/transient) combine with OR, groups with AND.
public struct DomainListFilter: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let active = DomainListFilter(rawValue: UInt32(VIR_CONNECT_LIST_DOMAINS_ACTIVE.rawValue))
    public static let inactive = DomainListFilter(rawValue: UInt32(VIR_CONNECT_LIST_DOMAINS_INACTIVE.rawValue))
    public static let persistent = DomainListFilter(rawValue: UInt32(VIR_CONNECT_LIST_DOMAINS_PERSISTENT.rawValue))
    public static let transient = DomainListFilter(rawValue: UInt32(VIR_CONNECT_LIST_DOMAINS_TRANSIENT.rawValue))
}

/// Options of ``LibvirtConnection/createDomain(xml:options:)`` (`virDomainCreateFlags`).
public struct CreateOptions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Start with the vCPUs paused.
    public static let paused = CreateOptions(rawValue: UInt32(VIR_DOMAIN_START_PAUSED.rawValue))
    /// libvirtd destroys the domain when this connection closes (also when the process dies):
    /// no VM outlives its owner.
    public static let autoDestroy = CreateOptions(rawValue: UInt32(VIR_DOMAIN_START_AUTODESTROY.rawValue))
    /// Validate the XML against libvirt's schema first.
    public static let validate = CreateOptions(rawValue: UInt32(VIR_DOMAIN_START_VALIDATE.rawValue))
}

/// A domain with its owner tag, from ``LibvirtConnection/listDomains(ownerPrefix:namespace:filter:)``.
public struct OwnedDomain: Sendable {
    /// The domain.
    public let domain: LibvirtDomain
    /// The owner text, e.g. `image:65f1c0…`.
    public let owner: String
}

/// Why a connection closed (`virConnectCloseReason`, plus ``client`` for ``LibvirtConnection/close()``).
public enum CloseReason: Sendable, Hashable {
    /// A socket or protocol error.
    case error
    /// libvirtd closed the connection (stopped or restarted).
    case endOfFile
    /// Keepalive probes went unanswered.
    case keepAlive
    /// Closed by this process.
    case client
    /// A reason this wrapper does not know.
    case other(Int32)

    init(_ raw: Int32) {
        switch UInt32(bitPattern: raw) {
        case VIR_CONNECT_CLOSE_REASON_ERROR.rawValue: self = .error
        case VIR_CONNECT_CLOSE_REASON_EOF.rawValue: self = .endOfFile
        case VIR_CONNECT_CLOSE_REASON_KEEPALIVE.rawValue: self = .keepAlive
        case VIR_CONNECT_CLOSE_REASON_CLIENT.rawValue: self = .client
        default: self = .other(raw)
        }
    }
}

/// The close callback of one connection, waiters for it, and the event streams to end with it.
/// libvirt holds a retained reference (the callback's opaque pointer) while the callback is
/// registered and releases it through the free callback.
final class ConnectionMonitor: Sendable {
    private struct State {
        var reason: CloseReason?
        var registered = false
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<CloseReason?, Never>] = [:]
        var cancelledWaiters: Set<UInt64> = []
        var streams: [ObjectIdentifier: @Sendable () -> Void] = [:]
    }

    private let state = Mutex(State())
    let uri: String
    let logger: Logger

    init(uri: String, logger: Logger) {
        self.uri = uri
        self.logger = logger
    }

    /// The one C close callback; the same function pointer must be passed to unregister.
    static let callback: virConnectCloseFunc = { _, reason, opaque in
        guard let opaque else { return }
        Unmanaged<ConnectionMonitor>.fromOpaque(opaque).takeUnretainedValue().closed(CloseReason(reason))
    }

    /// Registers the close callback on a just-opened connection (on a pool thread).
    func register(on connection: OpaquePointer) {
        let opaque = Unmanaged.passRetained(self).toOpaque()
        let rc = virConnectRegisterCloseCallback(connection, ConnectionMonitor.callback, opaque) { opaque in
            if let opaque { Unmanaged<ConnectionMonitor>.fromOpaque(opaque).release() }
        }
        if rc < 0 {
            Unmanaged<ConnectionMonitor>.fromOpaque(opaque).release()
            logger.debug("close callback not registered", metadata: ["error": "\(LibvirtError.last("virConnectRegisterCloseCallback"))"])
        } else {
            state.withLock { $0.registered = true }
        }
    }

    /// Unregisters the close callback before the connection is closed (on a pool thread).
    func unregister(from connection: OpaquePointer) {
        let wasRegistered = state.withLock { s in defer { s.registered = false }; return s.registered }
        if wasRegistered { virConnectUnregisterCloseCallback(connection, ConnectionMonitor.callback) }
    }

    var closeReason: CloseReason? { state.withLock { $0.reason } }

    /// Records the close (first reason wins), wakes the waiters and ends the event streams.
    func closed(_ reason: CloseReason) {
        let (waiters, streams) = state.withLock { s -> ([CheckedContinuation<CloseReason?, Never>], [@Sendable () -> Void]) in
            if s.reason == nil { s.reason = reason }
            defer { s.waiters = [:]; s.streams = [:] }
            return (Array(s.waiters.values), Array(s.streams.values))
        }
        if reason != .client {
            logger.warning("libvirt connection closed", metadata: ["reason": "\(reason)"])
        }
        let final = closeReason ?? reason
        for waiter in waiters { waiter.resume(returning: final) }
        for finish in streams { finish() }
    }

    func waitUntilClosed() async -> CloseReason? {
        let id = state.withLock { s in defer { s.nextWaiter += 1 }; return s.nextWaiter }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let immediate: CloseReason?? = state.withLock { s in
                    if let reason = s.reason { return .some(reason) }
                    if s.cancelledWaiters.remove(id) != nil { return .some(nil) }
                    s.waiters[id] = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<CloseReason?, Never>? in
                if let w = s.waiters.removeValue(forKey: id) { return w }
                // Cancelled before the continuation was stored: tell it to return at once.
                if s.reason == nil { s.cancelledWaiters.insert(id) }
                return nil
            }
            waiter?.resume(returning: nil)
        }
    }

    /// Adds an event stream to end when the connection closes; false if it is already closed.
    func addStream(_ id: ObjectIdentifier, finish: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { s in
            guard s.reason == nil else { return false }
            s.streams[id] = finish
            return true
        }
    }

    func removeStream(_ id: ObjectIdentifier) {
        _ = state.withLock { $0.streams.removeValue(forKey: id) }
    }
}

extension String {
    var trimmed: Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let start = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return self[start...last]
    }
}
