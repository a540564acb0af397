// Configuration of image builds on the master (DESIGN §5). Owned by the images work; the master
// daemon reads it together with its other settings (`ImageConfig.keys` goes into its key list).

import Libvirt
import TalusCore
import TalusModel

/// Image store, libvirt, VNC and deadline settings of the master.
public struct ImageConfig: Sendable {
    /// How the domain type of image VMs is chosen (`libvirt.domain_type`).
    public enum DomainTypeSetting: String, Sendable, CaseIterable {
        /// Probe at start: `kvm` only when libvirt reports KVM *and* a KVM test guest defined like
        /// the image VMs reaches its firmware's boot menu in time
        /// (`LibvirtConnection.probeDomainType(directory:timeout:)`); else `qemu`.
        case auto
        case kvm
        case qemu
    }

    public static let storeKey = SettingKey(
        "images.store", type: "path", default: "/var/lib/talus/images",
        doc: "Image store: one qcow2 file per image, `<image id>.qcow2` (`file.path` is relative to it); derived images are overlays with relative backing files. Work files of running operations go to `.work/` inside it. Must be traversable by the QEMU user (libvirt-qemu).")
    public static let uploadsKey = SettingKey(
        "storage.uploads", type: "path", default: "/var/lib/talus/uploads",
        doc: "Directory the API writes uploads to (shared with talus-api; `uploads.path` is relative to it). An import consumes its upload: file and document are removed once the image is `ready` or `error`.")
    public static let libvirtURIKey = SettingKey(
        "libvirt.uri", type: "url", default: "qemu:///system",
        doc: "libvirt connection for image VMs.")
    public static let domainTypeKey = SettingKey(
        "libvirt.domain_type", type: "auto|kvm|qemu", default: "auto",
        doc: "Domain type of image VMs. `auto`: `kvm` when libvirt reports KVM and a KVM test guest defined through libvirt like the image VMs (host-passthrough CPU) reaches its firmware's boot menu within 10 s, otherwise `qemu` (software emulation, slow); the choice and its reason are logged at start. Set `kvm` to fail loudly instead of falling back.")
    public static let vncListenKey = SettingKey(
        "vnc.listen", type: "address", default: "127.0.0.1",
        doc: "Address the VNC servers of interactive image VMs listen on. Loopback by default: users reach it through an SSH tunnel unless you open it deliberately. Every VM gets a fresh random 8-character password, valid until the session's deadline.")
    public static let vncPublicHostKey = SettingKey(
        "vnc.public_host", type: "string", default: "",
        doc: "Host name users connect to for VNC, written into the image status (`status.vnc.host`). Empty: `vnc.listen` (or this host's name when that is a wildcard address).")
    public static let bootTimeoutKey = SettingKey(
        "images.boot_timeout", type: "duration", default: "2m",
        doc: "From starting an image VM until its VNC server answers (and, for non-interactive VMs, until libvirt reports it running). Past it the VM is destroyed and the image goes to `error`.")
    public static let sessionTimeoutKey = SettingKey(
        "images.session_timeout", type: "duration", default: "4h",
        doc: "Default length of an interactive session (import, configure, create with `interactive`): past it the VM is destroyed, its changes are discarded and the image goes to `error`. A request may ask for another length (`request.session_seconds`) up to `images.session_timeout_max`.")
    public static let sessionTimeoutMaxKey = SettingKey(
        "images.session_timeout_max", type: "duration", default: "24h",
        doc: "Longest interactive session a request may ask for.")
    public static let configureTimeoutKey = SettingKey(
        "images.configure_timeout", type: "duration", default: "1h",
        doc: "Limit of a non-interactive configure (or create with a script): the guest must power itself off within it, or the VM is destroyed, its changes discarded and the image goes to `error`.")
    public static let fileTimeoutKey = SettingKey(
        "images.file_timeout", type: "duration", default: "2h",
        doc: "Limit of one `qemu-img convert` or `qemu-img commit` of an image file.")
    public static let maxConcurrentKey = SettingKey(
        "images.max_concurrent", type: "int", default: "2",
        doc: "Image operations (imports, configures, interactive creates) that run at once, from conversion to `ready`. Further requests wait in their request state with a reason saying so. Deletes and non-interactive creates are not counted.")
    public static let vmMemoryKey = SettingKey(
        "images.vm_memory_mb", type: "int", default: "2048",
        doc: "Memory (MiB) of an image VM when the image document does not say (`vm.memory_mb`).")
    public static let vmCPUsKey = SettingKey(
        "images.vm_cpus", type: "int", default: "2",
        doc: "Virtual CPUs of an image VM when the image document does not say (`vm.cpus`).")
    public static let diskBusKey = SettingKey(
        "images.disk_bus", type: "ide|sata|virtio", default: "ide",
        doc: "Bus the image's disk is attached on in image VMs. `ide` boots any BIOS guest (Windows without virtio drivers included); `virtio` is faster for guests that have the drivers. `sata` switches the machine to q35.")
    public static let networkKey = SettingKey(
        "images.network", type: "none|user", default: "none",
        doc: "Network of image VMs: `none` (no network device) or `user` (QEMU user-mode NAT: outbound only, no host setup). Set `user` if image makers must download software inside the VM.")

    /// Every key this struct reads, for the reference page and typo detection.
    public static let keys: [SettingKey] = [
        storeKey, uploadsKey, libvirtURIKey, domainTypeKey, vncListenKey, vncPublicHostKey, bootTimeoutKey,
        sessionTimeoutKey, sessionTimeoutMaxKey, configureTimeoutKey, fileTimeoutKey, maxConcurrentKey, vmMemoryKey,
        vmCPUsKey, diskBusKey, networkKey,
    ]

    /// `images.store`, without a trailing slash.
    public var store: String
    /// `storage.uploads`, without a trailing slash.
    public var uploads: String
    public var libvirtURI: String
    public var domainType: DomainTypeSetting
    public var vncListen: String
    /// What users connect to (`vnc.public_host`, defaulted as documented).
    public var vncPublicHost: String
    public var bootTimeout: Duration
    public var sessionTimeout: Duration
    public var sessionTimeoutMax: Duration
    public var configureTimeout: Duration
    public var fileTimeout: Duration
    public var maxConcurrent: Int
    public var vmMemoryMB: Int
    public var vmCPUs: Int
    public var diskBus: DomainXML.Disk.Bus
    public var network: NetworkMode

    /// Reads and checks every key; a bad value throws a ``SettingsError`` naming the key.
    public init(settings: Settings) throws {
        store = Self.trimmedPath(try settings.string(Self.storeKey))
        uploads = Self.trimmedPath(try settings.string(Self.uploadsKey))
        for (key, path) in [(Self.storeKey, store), (Self.uploadsKey, uploads)] where !path.hasPrefix("/") {
            throw SettingsError(key: key.name, problem: "\"\(path)\" is not an absolute path")
        }
        libvirtURI = try settings.string(Self.libvirtURIKey)
        domainType = try settings.enum(Self.domainTypeKey, DomainTypeSetting.self)
        vncListen = try settings.string(Self.vncListenKey)
        guard !vncListen.isEmpty else { throw SettingsError(key: Self.vncListenKey.name, problem: "is empty") }
        let publicHost = try settings.optionalString(Self.vncPublicHostKey)
        vncPublicHost = publicHost ?? Self.defaultPublicHost(listen: vncListen)
        bootTimeout = try Self.positive(settings, Self.bootTimeoutKey)
        sessionTimeout = try Self.positive(settings, Self.sessionTimeoutKey)
        sessionTimeoutMax = try Self.positive(settings, Self.sessionTimeoutMaxKey)
        guard sessionTimeoutMax >= sessionTimeout else {
            throw SettingsError(key: Self.sessionTimeoutMaxKey.name, problem: "is shorter than images.session_timeout")
        }
        configureTimeout = try Self.positive(settings, Self.configureTimeoutKey)
        fileTimeout = try Self.positive(settings, Self.fileTimeoutKey)
        maxConcurrent = try settings.int(Self.maxConcurrentKey, range: 1...256)
        vmMemoryMB = try settings.int(Self.vmMemoryKey, range: 64...262_144)
        vmCPUs = try settings.int(Self.vmCPUsKey, range: 1...64)
        guard let bus = DomainXML.Disk.Bus(rawValue: try settings.string(Self.diskBusKey)), bus != .scsi else {
            throw SettingsError(key: Self.diskBusKey.name, problem: "\"\(try settings.string(Self.diskBusKey))\" is not one of ide, sata, virtio")
        }
        diskBus = bus
        let net = try settings.string(Self.networkKey)
        guard let mode = NetworkMode(rawValue: net), mode != .isolated else {
            throw SettingsError(key: Self.networkKey.name, problem: "\"\(net)\" is not one of none, user")
        }
        network = mode
    }

    /// The defaults, with `store`, `uploads` and any other key overridden by `values` (dotted
    /// names). For tests and tools.
    public init(values: [String: String]) throws {
        try self.init(settings: Settings(values: values))
    }

    private static func positive(_ settings: Settings, _ key: SettingKey) throws -> Duration {
        let d = try settings.duration(key)
        guard d > .zero else { throw SettingsError(key: key.name, problem: "must be longer than 0") }
        return d
    }

    private static func trimmedPath(_ path: String) -> String {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        return p
    }

    private static func defaultPublicHost(listen: String) -> String {
        guard ["0.0.0.0", "::", "[::]"].contains(listen) else { return listen }
        return currentHostName()
    }
}
