// LibvirtDomain: one virDomainPtr and what Talus does with a domain: start, stop, remove, read
// its state, its live XML, its VNC port and console path, its owner tag.

import CLibvirt
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A libvirt domain (a VM, running or not) of a ``LibvirtConnection``.
///
/// The object is a handle: it stays valid when the domain stops or is undefined, and operations
/// on a domain that no longer exists throw ``LibvirtError/isNoDomain``. ``name`` and ``uuid``
/// never change; state is read with ``state()``.
//
// @unchecked Sendable: `pointer` is immutable and freed only in deinit; libvirt's virDomain
// objects are reference counted and internally locked, so calls from several threads are safe.
public final class LibvirtDomain: @unchecked Sendable, CustomStringConvertible {
    /// The connection this domain was obtained from.
    public let connection: LibvirtConnection
    let pointer: OpaquePointer
    /// The domain name.
    public let name: String
    /// The domain UUID, lowercase `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    public let uuid: String
    /// The hypervisor id when the handle was obtained, nil if the domain was not running then.
    /// A snapshot: use ``state()`` for the current state.
    public let id: UInt32?

    /// Takes over one libvirt reference to `pointer`. Call on a pool thread (reads name and UUID,
    /// which libvirt keeps in the handle: no RPC).
    init(connection: LibvirtConnection, pointer: OpaquePointer) {
        self.connection = connection
        self.pointer = pointer
        name = LibvirtRuntime.name(of: pointer)
        uuid = LibvirtRuntime.uuidString(of: pointer)
        let rawID = virDomainGetID(pointer)
        id = rawID == UInt32.max ? nil : rawID
    }

    deinit {
        // Dropping the last domain reference may close the connection (an RPC): not here.
        let p = UnsafeLibvirtPointer(raw: pointer)
        connection.threadPool.submit { _ in virDomainFree(p.raw) }
    }

    public var description: String { "LibvirtDomain(\(name), \(uuid))" }

    private var logger: Logger {
        var logger = connection.logger
        logger[metadataKey: "domain"] = "\(name)"
        return logger
    }

    /// Runs `body` with the domain pointer on the connection's thread pool.
    private func call<T: Sendable>(
        _ operation: String, _ body: @escaping @Sendable (OpaquePointer) throws(LibvirtError) -> T
    ) async throws(LibvirtError) -> T {
        try connection.checkOpen(operation)
        connection.logger.trace("libvirt call", metadata: ["call": "\(operation)", "domain": "\(name)"])
        return try await LibvirtRuntime.run(on: connection.threadPool) { [self] () throws(LibvirtError) -> T in
            try body(pointer)
        }
    }

    /// Runs a libvirt call that returns 0 or -1.
    private func perform(_ operation: String, _ body: @escaping @Sendable (OpaquePointer) -> Int32)
        async throws(LibvirtError)
    {
        _ = try await call(operation) { p throws(LibvirtError) in try LibvirtRuntime.check(operation, body(p)) }
    }

    // MARK: Lifecycle

    /// Starts a defined, inactive domain (`virDomainCreateWithFlags`). Throws
    /// ``LibvirtError/isOperationInvalid`` if it is already running.
    public func start(options: CreateOptions = []) async throws(LibvirtError) {
        try await perform("virDomainCreateWithFlags") { virDomainCreateWithFlags($0, options.rawValue) }
        logger.debug("domain started")
    }

    /// Asks the guest to shut down (`virDomainShutdownFlags`) and returns at once; the guest may
    /// ignore it. Watch ``LibvirtConnection/lifecycleEvents(for:)`` or ``state()`` for the end,
    /// and ``destroy(graceful:)`` after a deadline.
    public func shutdown(method: ShutdownMethod = .acpiPowerButton) async throws(LibvirtError) {
        try await perform("virDomainShutdownFlags") { virDomainShutdownFlags($0, method.rawValue) }
        logger.debug("domain shutdown requested", metadata: ["method": "\(method)"])
    }

    /// Stops the domain at once, like pulling the power cord (`virDomainDestroyFlags`). A transient
    /// domain disappears. Throws ``LibvirtError/isOperationInvalid`` if it is not running.
    /// - Parameter graceful: only SIGTERM the emulator, never SIGKILL.
    public func destroy(graceful: Bool = false) async throws(LibvirtError) {
        let flags = graceful ? UInt32(VIR_DOMAIN_DESTROY_GRACEFUL.rawValue) : 0
        try await perform("virDomainDestroyFlags") { virDomainDestroyFlags($0, flags) }
        logger.debug("domain destroyed")
    }

    /// Removes a persistent domain's definition (`virDomainUndefineFlags`). A running domain keeps
    /// running as a transient one until it stops.
    ///
    /// Drivers that do not know some of the flags (the test driver refuses NVRAM and checkpoint
    /// flags) are retried once with only ``UndefineOptions/managedSave`` and
    /// ``UndefineOptions/snapshotsMetadata`` of `options`: a driver without NVRAM or checkpoint
    /// support has none to remove.
    public func undefine(options: UndefineOptions = .standard) async throws(LibvirtError) {
        do {
            try await perform("virDomainUndefineFlags") { virDomainUndefineFlags($0, options.rawValue) }
        } catch where error.isInvalidArgument && error.message.contains("unsupported flags")
            && options != options.intersection(.basic)
        {
            let reduced = options.intersection(.basic)
            logger.debug("undefine flags unsupported by the driver, retrying", metadata: ["error": "\(error)"])
            try await perform("virDomainUndefineFlags") { virDomainUndefineFlags($0, reduced.rawValue) }
        }
        logger.debug("domain undefined")
    }

    /// Pauses the vCPUs (`virDomainSuspend`).
    public func suspend() async throws(LibvirtError) {
        try await perform("virDomainSuspend") { virDomainSuspend($0) }
    }

    /// Resumes paused vCPUs (`virDomainResume`).
    public func resume() async throws(LibvirtError) {
        try await perform("virDomainResume") { virDomainResume($0) }
    }

    /// Destroys the domain if it runs and undefines it if it is persistent. A domain that stops or
    /// vanishes meanwhile is fine; other errors are thrown. For cleanup paths.
    public func remove(undefineOptions: UndefineOptions = .standard) async throws(LibvirtError) {
        do {
            try await destroy()
        } catch where error.isOperationInvalid || error.isNoDomain {
            // Not running, or a transient domain that is already gone.
        }
        do {
            if try await isPersistent() { try await undefine(options: undefineOptions) }
        } catch where error.isNoDomain {
            // Gone: a transient domain after destroy.
        }
    }

    // MARK: State

    /// The current state and its reason (`virDomainGetState`).
    public func state() async throws(LibvirtError) -> DomainState {
        try await call("virDomainGetState") { p throws(LibvirtError) in
            var state: Int32 = 0
            var reason: Int32 = 0
            try LibvirtRuntime.check("virDomainGetState", virDomainGetState(p, &state, &reason, 0))
            return DomainState(state: state, reason: reason)
        }
    }

    /// Whether the domain is running (`virDomainIsActive`).
    public func isActive() async throws(LibvirtError) -> Bool {
        try await call("virDomainIsActive") { p throws(LibvirtError) in
            try LibvirtRuntime.check("virDomainIsActive", virDomainIsActive(p)) == 1
        }
    }

    /// Whether the domain has a persistent definition (`virDomainIsPersistent`).
    public func isPersistent() async throws(LibvirtError) -> Bool {
        try await call("virDomainIsPersistent") { p throws(LibvirtError) in
            try LibvirtRuntime.check("virDomainIsPersistent", virDomainIsPersistent(p)) == 1
        }
    }

    // MARK: XML

    /// The domain's XML (`virDomainGetXMLDesc`): the live definition while it runs (with the VNC
    /// port libvirt assigned), the persistent one otherwise.
    /// - Parameters:
    ///   - securityInfo: include secrets such as the VNC `passwd` (`VIR_DOMAIN_XML_SECURE`).
    ///   - inactive: the persistent definition even while running (`VIR_DOMAIN_XML_INACTIVE`).
    public func xml(securityInfo: Bool = false, inactive: Bool = false) async throws(LibvirtError) -> String {
        var flags: UInt32 = 0
        if securityInfo { flags |= UInt32(VIR_DOMAIN_XML_SECURE.rawValue) }
        if inactive { flags |= UInt32(VIR_DOMAIN_XML_INACTIVE.rawValue) }
        return try await call("virDomainGetXMLDesc") { [flags] p throws(LibvirtError) in
            try LibvirtRuntime.takeString("virDomainGetXMLDesc", virDomainGetXMLDesc(p, flags))
        }
    }

    /// The live XML, parsed into the parts Talus reads (see ``DomainDescription``).
    public func describe(securityInfo: Bool = false) async throws(LibvirtError) -> DomainDescription {
        try DomainDescription(xml: await xml(securityInfo: securityInfo))
    }

    /// The VNC server of the running domain from its live XML, or nil if it has no VNC graphics.
    /// ``VNCGraphics/port`` is nil until libvirt has assigned one (not running yet).
    /// - Parameter includePassword: read the XML with security info so ``VNCGraphics/password``
    ///   is filled in.
    public func vncGraphics(includePassword: Bool = false) async throws(LibvirtError) -> VNCGraphics? {
        try await describe(securityInfo: includePassword).vnc
    }

    /// The host side of the first serial port (a file path, or the `/dev/pts/N` of a pty), from the
    /// live XML; nil if there is none.
    public func serialConsolePath() async throws(LibvirtError) -> String? {
        try await describe().serialPaths.first
    }

    // MARK: Metadata

    /// The raw metadata element of `namespace` (`virDomainGetMetadata`), or nil if the domain has
    /// none.
    public func metadata(namespace: String) async throws(LibvirtError) -> String? {
        do {
            return try await call("virDomainGetMetadata") { p throws(LibvirtError) in
                try LibvirtRuntime.takeString(
                    "virDomainGetMetadata",
                    virDomainGetMetadata(
                        p, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), namespace,
                        UInt32(VIR_DOMAIN_AFFECT_CURRENT.rawValue)))
            }
        } catch where error.isNoMetadata {
            return nil
        }
    }

    /// The text of the owner tag in `namespace` (see ``DomainXML/owner``), e.g. `image:ID`; nil if
    /// the domain is not tagged.
    public func owner(namespace: String = DomainXML.talusNamespace) async throws(LibvirtError) -> String? {
        guard let xml = try await metadata(namespace: namespace) else { return nil }
        do {
            return String(try MiniXML.parse(xml).text.trimmed)
        } catch {
            throw LibvirtError(
                code: .xmlError, message: "unreadable metadata element: \(error.message)", operation: "owner")
        }
    }
}

/// How ``LibvirtDomain/shutdown(method:)`` asks the guest (`virDomainShutdownFlagValues`).
public struct ShutdownMethod: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    private init(_ rawValue: UInt32) { self.rawValue = rawValue }

    /// The hypervisor's choice.
    public static let hypervisorDefault = ShutdownMethod(UInt32(VIR_DOMAIN_SHUTDOWN_DEFAULT.rawValue))
    /// An ACPI power-button press (needs `<features><acpi/></features>`).
    public static let acpiPowerButton = ShutdownMethod(UInt32(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN.rawValue))
    /// Through the QEMU guest agent.
    public static let guestAgent = ShutdownMethod(UInt32(VIR_DOMAIN_SHUTDOWN_GUEST_AGENT.rawValue))

    public var description: String {
        switch self {
        case .acpiPowerButton: "acpi"
        case .guestAgent: "agent"
        default: "default"
        }
    }
}

/// What ``LibvirtDomain/undefine(options:)`` also removes (`virDomainUndefineFlagsValues`).
public struct UndefineOptions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// A managed-save image.
    public static let managedSave = UndefineOptions(rawValue: UInt32(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE.rawValue))
    /// Snapshot metadata (the snapshots' disk data stays).
    public static let snapshotsMetadata = UndefineOptions(
        rawValue: UInt32(VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA.rawValue))
    /// Checkpoint metadata.
    public static let checkpointsMetadata = UndefineOptions(
        rawValue: UInt32(VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA.rawValue))
    /// The UEFI NVRAM file.
    public static let nvram = UndefineOptions(rawValue: UInt32(VIR_DOMAIN_UNDEFINE_NVRAM.rawValue))

    /// Everything a throw-away Talus VM may have: managed save, snapshot and checkpoint metadata,
    /// NVRAM. Without these, libvirt refuses to undefine a domain that has any of them.
    public static let standard: UndefineOptions = [.managedSave, .snapshotsMetadata, .checkpointsMetadata, .nvram]

    /// The flags every driver with undefine support knows.
    static let basic: UndefineOptions = [.managedSave, .snapshotsMetadata]
}
