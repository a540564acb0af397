// DomainXML: a typed builder for the domain XML Talus uses (image builds on the master, job parts
// on slaves), after the XML that worked in guest-recipe.md §6. Every string is XML-escaped;
// values that libvirt or QEMU would take wrongly (a VNC password longer than 8 characters, a
// socket path too long for sun_path) are refused up front.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// libvirt's domain type: `kvm` (hardware virtualization) or `qemu` (TCG software emulation).
public enum DomainType: String, Sendable, Hashable, CaseIterable {
    case qemu
    case kvm
}

/// A domain definition for Talus VMs, rendered with ``render()``.
///
/// ```swift
/// var xml = DomainXML(name: "talus-part-…", type: .qemu, memoryMiB: 512)
/// xml.disks = [.init(path: overlay), .cdrom(path: configISO)]
/// xml.channels = [.init(socketPath: runDir + "/agent.sock", targetName: "org.talus.agent.0")]
/// xml.serial = .file(runDir + "/serial.log")
/// xml.vnc = .init(listen: "127.0.0.1", password: "s3cr3t!")
/// xml.owner = "part:JOB:7"
/// let domain = try await connection.createDomain(xml, options: .autoDestroy)
/// ```
public struct DomainXML: Sendable, Hashable {
    /// The XML namespace of Talus metadata elements.
    public static let talusNamespace = "https://talus.dev/xmlns/1"

    /// The domain name (unique per host).
    public var name: String
    /// A UUID; nil lets libvirt generate one.
    public var uuid: String?
    /// `kvm` in production, `qemu` (TCG) where KVM does not work.
    public var type: DomainType
    /// Guest memory in MiB.
    public var memoryMiB: Int
    /// Virtual CPUs.
    public var vcpus: Int
    /// The guest architecture.
    public var arch = "x86_64"
    /// The machine type; `pc` (i440fx) has IDE for CD-ROMs, `q35` needs SATA.
    public var machine = "pc"
    /// A CPU mode (mostly for `kvm`); nil is libvirt's default.
    public var cpuMode: CPUMode?
    /// The emulator binary; nil lets libvirt choose.
    public var emulator: String?
    /// Boot order.
    public var boot: [BootDevice] = [.hardDisk]
    /// ACPI, needed for ``LibvirtDomain/shutdown(method:)`` with the power button.
    public var acpi = true
    /// What happens when the guest powers off (throw-away VMs: destroy).
    public var onPoweroff: LifecycleAction = .destroy
    /// What happens when the guest reboots; `destroy` ends a job part's VM on reboot.
    public var onReboot: LifecycleAction = .destroy
    /// What happens when the guest crashes.
    public var onCrash: LifecycleAction = .destroy
    /// Disks and CD-ROMs, in order.
    public var disks: [Disk] = []
    /// virtio-serial ports bound to unix sockets (a virtio-serial controller is added with them).
    public var channels: [Channel] = []
    /// The first serial port; nil for none.
    public var serial: SerialConsole?
    /// A VNC server; nil for none.
    public var vnc: VNC?
    /// A virtio RNG fed from `/dev/urandom` (avoids early-boot `getrandom()` stalls).
    public var virtioRNG = true
    /// Network interfaces; empty means no network at all.
    public var interfaces: [Interface] = []
    /// The memory balloon; off by default (`<memballoon model='none'/>`).
    public var memoryBalloon = false
    /// The owner tag written as `<talus:owner xmlns:talus='https://talus.dev/xmlns/1'>…</talus:owner>`
    /// in `<metadata>`, e.g. `image:ID`. Daemons find their own domains after a restart with
    /// ``LibvirtConnection/listDomains(ownerPrefix:namespace:filter:)``.
    public var owner: String?

    /// A domain with no devices yet besides the defaults (virtio RNG, no balloon, ACPI).
    public init(name: String, type: DomainType = .qemu, memoryMiB: Int = 256, vcpus: Int = 1) {
        self.name = name
        self.type = type
        self.memoryMiB = memoryMiB
        self.vcpus = vcpus
    }

    /// `<cpu mode=…>`
    public enum CPUMode: String, Sendable, Hashable {
        case hostPassthrough = "host-passthrough"
        case hostModel = "host-model"
        case maximum
    }

    /// `<boot dev=…>`
    public enum BootDevice: String, Sendable, Hashable {
        case hardDisk = "hd"
        case cdrom
        case network
    }

    /// `<on_poweroff>`, `<on_reboot>`, `<on_crash>`
    public enum LifecycleAction: String, Sendable, Hashable {
        case destroy
        case restart
        case preserve
    }

    /// A disk image or ISO attached to the domain.
    public struct Disk: Sendable, Hashable {
        /// The image file on the host.
        public var path: String
        /// The image format (`qemu-img info` tells).
        public var format: Format
        /// Disk or CD-ROM.
        public var device: Device
        /// The bus the guest sees it on.
        public var bus: Bus
        /// Attach read-only (`<readonly/>`).
        public var readOnly: Bool
        /// The guest device name (`vda`, `hdc`, `sda`); nil takes the next free one for the bus.
        public var target: String?

        /// `<driver type=…>`
        public enum Format: String, Sendable, Hashable { case qcow2, raw }
        /// `<disk device=…>`
        public enum Device: String, Sendable, Hashable { case disk, cdrom }
        /// `<target bus=…>`
        public enum Bus: String, Sendable, Hashable {
            case virtio, ide, sata, scsi

            var targetPrefix: String {
                switch self {
                case .virtio: "vd"
                case .ide: "hd"
                case .sata, .scsi: "sd"
                }
            }
        }

        /// A disk (qcow2 on virtio unless said otherwise).
        public init(
            path: String, format: Format = .qcow2, device: Device = .disk, bus: Bus = .virtio,
            readOnly: Bool = false, target: String? = nil
        ) {
            self.path = path
            self.format = format
            self.device = device
            self.bus = bus
            self.readOnly = readOnly
            self.target = target
        }

        /// A read-only CD-ROM (IDE by default, as the `pc` machine's guests find it as `/dev/sr0`).
        public static func cdrom(path: String, bus: Bus = .ide, target: String? = nil) -> Disk {
            Disk(path: path, format: .raw, device: .cdrom, bus: bus, readOnly: true, target: target)
        }
    }

    /// A virtio-serial port bound to a unix socket that libvirt creates (`mode='bind'`).
    public struct Channel: Sendable, Hashable {
        /// The host socket path (at most 107 bytes).
        public var socketPath: String
        /// The guest-side name, e.g. `org.talus.agent.0` (`/dev/virtio-ports/<name>`).
        public var targetName: String

        /// A channel bound to `socketPath`, seen by the guest as `targetName`.
        public init(socketPath: String, targetName: String) {
            self.socketPath = socketPath
            self.targetName = targetName
        }
    }

    /// Where the first serial port goes.
    public enum SerialConsole: Sendable, Hashable {
        /// Appended to a file on the host (the console log).
        case file(String)
        /// A pseudo-terminal (`virsh console`); its path is in the live XML.
        case pty
    }

    /// A VNC server.
    public struct VNC: Sendable, Hashable {
        /// The listen address, e.g. `127.0.0.1`.
        public var listen: String
        /// A fixed port; nil lets libvirt assign one (`autoport`).
        public var port: Int?
        /// The VNC password, 1 to 8 characters (VNC authentication uses DES with an 8-byte key;
        /// longer passwords would be cut silently, so they are refused). nil for no password.
        public var password: String?
        /// When the password stops working (`passwdValidTo`, written in UTC).
        public var passwordValidUntil: Date?

        /// A VNC server on `listen`, on an automatic port unless `port` is given.
        public init(listen: String = "127.0.0.1", port: Int? = nil, password: String? = nil, passwordValidUntil: Date? = nil) {
            self.listen = listen
            self.port = port
            self.password = password
            self.passwordValidUntil = passwordValidUntil
        }
    }

    /// A network interface.
    public struct Interface: Sendable, Hashable {
        /// What the interface connects to.
        public var kind: Kind
        /// The NIC model, `virtio` by default.
        public var model: String
        /// A MAC address; nil lets libvirt pick.
        public var mac: String?
        /// An nwfilter to apply (`<filterref filter=…>`), with its parameters.
        public var filter: String?
        /// Parameters of the nwfilter, e.g. `IP`.
        public var filterParameters: [String: String]

        /// What an interface connects to.
        public enum Kind: Sendable, Hashable {
            /// User-mode networking (slirp): no host setup, no dnsmasq.
            case user
            /// A libvirt network by name.
            case network(String)
            /// An existing host bridge.
            case bridge(String)
        }

        /// An interface of `kind`, virtio unless said otherwise.
        public init(
            _ kind: Kind, model: String = "virtio", mac: String? = nil, filter: String? = nil,
            filterParameters: [String: String] = [:]
        ) {
            self.kind = kind
            self.model = model
            self.mac = mac
            self.filter = filter
            self.filterParameters = filterParameters
        }
    }

    // MARK: Rendering

    /// The domain XML. Throws ``LibvirtError/isInvalidArgument`` for values libvirt or QEMU would
    /// reject or silently misread (empty name, VNC password over 8 characters, socket path over
    /// 107 bytes, two disks on one target, more than 4 IDE devices, IDE on q35, characters that
    /// XML cannot carry).
    public func render() throws(LibvirtError) -> String {
        try validate()
        let targets = try diskTargets()
        var w = Writer()
        w.open("domain", ["type": type.rawValue])
        w.leaf("name", text: name)
        if let uuid { w.leaf("uuid", text: uuid) }
        if let owner {
            w.open("metadata")
            w.line("<talus:owner xmlns:talus='\(DomainXML.talusNamespace.xmlEscaped)'>\(owner.xmlEscaped)</talus:owner>")
            w.close("metadata")
        }
        w.leaf("memory", ["unit": "MiB"], text: String(memoryMiB))
        w.leaf("vcpu", text: String(vcpus))
        w.open("os")
        w.leaf("type", ["arch": arch, "machine": machine], text: "hvm")
        for device in boot { w.leaf("boot", ["dev": device.rawValue]) }
        w.close("os")
        if acpi {
            w.open("features")
            w.leaf("acpi")
            w.close("features")
        }
        if let cpuMode { w.leaf("cpu", ["mode": cpuMode.rawValue]) }
        w.leaf("on_poweroff", text: onPoweroff.rawValue)
        w.leaf("on_reboot", text: onReboot.rawValue)
        w.leaf("on_crash", text: onCrash.rawValue)
        w.open("devices")
        if let emulator { w.leaf("emulator", text: emulator) }
        for (disk, target) in zip(disks, targets) {
            w.open("disk", ["type": "file", "device": disk.device.rawValue])
            w.leaf("driver", ["name": "qemu", "type": disk.format.rawValue])
            w.leaf("source", ["file": disk.path])
            w.leaf("target", ["dev": target, "bus": disk.bus.rawValue])
            if disk.readOnly { w.leaf("readonly") }
            w.close("disk")
        }
        if !channels.isEmpty { w.leaf("controller", ["type": "virtio-serial", "index": "0"]) }
        for channel in channels {
            w.open("channel", ["type": "unix"])
            w.leaf("source", ["mode": "bind", "path": channel.socketPath])
            w.leaf("target", ["type": "virtio", "name": channel.targetName])
            w.close("channel")
        }
        for interface in interfaces { writeInterface(interface, to: &w) }
        switch serial {
        case .file(let path):
            w.open("serial", ["type": "file"])
            w.leaf("source", ["path": path])
            w.leaf("target", ["port": "0"])
            w.close("serial")
        case .pty:
            w.open("serial", ["type": "pty"])
            w.leaf("target", ["port": "0"])
            w.close("serial")
        case nil:
            break
        }
        if let vnc {
            var attributes: [(String, String)] = [("type", "vnc")]
            if let port = vnc.port {
                attributes += [("port", String(port)), ("autoport", "no")]
            } else {
                attributes += [("port", "-1"), ("autoport", "yes")]
            }
            attributes.append(("listen", vnc.listen))
            if let password = vnc.password { attributes.append(("passwd", password)) }
            if let until = vnc.passwordValidUntil { attributes.append(("passwdValidTo", DomainXML.libvirtTimestamp(until))) }
            w.leaf("graphics", attributes)
        }
        if virtioRNG {
            w.open("rng", ["model": "virtio"])
            w.leaf("backend", ["model": "random"], text: "/dev/urandom")
            w.close("rng")
        }
        if !memoryBalloon { w.leaf("memballoon", ["model": "none"]) }
        w.close("devices")
        w.close("domain")
        return w.output
    }

    private func writeInterface(_ interface: Interface, to w: inout Writer) {
        switch interface.kind {
        case .user:
            w.open("interface", ["type": "user"])
        case .network(let network):
            w.open("interface", ["type": "network"])
            w.leaf("source", ["network": network])
        case .bridge(let bridge):
            w.open("interface", ["type": "bridge"])
            w.leaf("source", ["bridge": bridge])
        }
        if let mac = interface.mac { w.leaf("mac", ["address": mac]) }
        w.leaf("model", ["type": interface.model])
        if let filter = interface.filter {
            if interface.filterParameters.isEmpty {
                w.leaf("filterref", ["filter": filter])
            } else {
                w.open("filterref", ["filter": filter])
                for (key, value) in interface.filterParameters.sorted(by: { $0.key < $1.key }) {
                    w.leaf("parameter", [("name", key), ("value", value)])
                }
                w.close("filterref")
            }
        }
        w.close("interface")
    }

    /// `YYYY-MM-DDTHH:MM:SS` in UTC, as libvirt's `passwdValidTo` wants it.
    static func libvirtTimestamp(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var t = tm()
        gmtime_r(&seconds, &t)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(t.tm_year + 1900)-\(two(t.tm_mon + 1))-\(two(t.tm_mday))T\(two(t.tm_hour)):\(two(t.tm_min)):\(two(t.tm_sec))"
    }

    // MARK: Validation

    private func invalid(_ message: String) -> LibvirtError {
        .invalidArgument(message, operation: "DomainXML.render")
    }

    private func validate() throws(LibvirtError) {
        guard !name.isEmpty else { throw invalid("the domain name is empty") }
        guard memoryMiB > 0 else { throw invalid("memoryMiB must be positive, not \(memoryMiB)") }
        guard vcpus > 0 else { throw invalid("vcpus must be positive, not \(vcpus)") }
        var strings: [(String, String)] = [("name", name), ("arch", arch), ("machine", machine)]
        strings += [("uuid", uuid), ("emulator", emulator), ("owner", owner)].compactMap { k, v in v.map { (k, $0) } }
        for disk in disks {
            guard !disk.path.isEmpty else { throw invalid("a disk has an empty path") }
            strings.append(("disk path", disk.path))
            if let target = disk.target { strings.append(("disk target", target)) }
            if disk.bus == .ide && machine.contains("q35") {
                throw invalid("the q35 machine has no IDE bus: attach \(disk.path) with bus .sata")
            }
        }
        for channel in channels {
            guard !channel.targetName.isEmpty else { throw invalid("a channel has an empty target name") }
            // sun_path holds 108 bytes including the terminating NUL.
            guard !channel.socketPath.isEmpty, channel.socketPath.utf8.count <= 107 else {
                throw invalid(
                    "channel socket path must be 1 to 107 bytes (a unix socket address), got \(channel.socketPath.utf8.count): \(channel.socketPath)"
                )
            }
            strings += [("channel socket path", channel.socketPath), ("channel target name", channel.targetName)]
        }
        if case .file(let path) = serial {
            guard !path.isEmpty else { throw invalid("the serial console file path is empty") }
            strings.append(("serial console path", path))
        }
        if let vnc {
            strings.append(("VNC listen address", vnc.listen))
            if let password = vnc.password {
                guard (1...8).contains(password.utf8.count) else {
                    throw invalid("the VNC password must be 1 to 8 bytes (VNC authentication uses DES), got \(password.utf8.count)")
                }
                strings.append(("VNC password", password))
            }
            if let port = vnc.port, !(5900...65535).contains(port) {
                throw invalid("VNC port \(port) is outside 5900...65535")
            }
        }
        for interface in interfaces {
            switch interface.kind {
            case .user: break
            case .network(let n), .bridge(let n):
                guard !n.isEmpty else { throw invalid("an interface has an empty network or bridge name") }
                strings.append(("network", n))
            }
            strings.append(("NIC model", interface.model))
            if let mac = interface.mac { strings.append(("MAC address", mac)) }
            if let filter = interface.filter { strings.append(("nwfilter", filter)) }
            for (k, v) in interface.filterParameters { strings += [("nwfilter parameter", k), ("nwfilter parameter", v)] }
        }
        for (what, value) in strings where !value.isXMLSafe {
            throw invalid("the \(what) contains a character XML cannot carry: \(value.debugDescription)")
        }
    }

    /// The target of each disk: the given one, or the next free name on its bus.
    private func diskTargets() throws(LibvirtError) -> [String] {
        var used = Set(disks.compactMap(\.target))
        guard used.count == disks.compactMap(\.target).count else { throw invalid("two disks have the same target") }
        var targets: [String] = []
        for disk in disks {
            if let target = disk.target {
                targets.append(target)
                continue
            }
            let letters = disk.bus == .ide ? "abcd" : "abcdefghijklmnopqrstuvwxyz"
            guard let letter = letters.first(where: { !used.contains(disk.bus.targetPrefix + String($0)) }) else {
                throw invalid("too many \(disk.bus.rawValue) devices")
            }
            let target = disk.bus.targetPrefix + String(letter)
            used.insert(target)
            targets.append(target)
        }
        return targets
    }

    /// Indented XML with single-quoted, escaped attributes (libvirt's own style).
    private struct Writer {
        var output = ""
        var depth = 0

        mutating func line(_ text: String) {
            output += String(repeating: "  ", count: depth) + text + "\n"
        }

        func tag(_ name: String, _ attributes: [(String, String)]) -> String {
            attributes.reduce(name) { $0 + " \($1.0)='\($1.1.xmlEscaped)'" }
        }

        mutating func open(_ name: String, _ attributes: KeyValuePairs<String, String> = [:]) {
            line("<\(tag(name, attributes.map { ($0.key, $0.value) }))>")
            depth += 1
        }

        mutating func close(_ name: String) {
            depth -= 1
            line("</\(name)>")
        }

        mutating func leaf(_ name: String, _ attributes: KeyValuePairs<String, String> = [:], text: String? = nil) {
            leaf(name, attributes.map { ($0.key, $0.value) }, text: text)
        }

        mutating func leaf(_ name: String, _ attributes: [(String, String)], text: String? = nil) {
            if let text {
                line("<\(tag(name, attributes))>\(text.xmlEscaped)</\(name)>")
            } else {
                line("<\(tag(name, attributes))/>")
            }
        }
    }
}
