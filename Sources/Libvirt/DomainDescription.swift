// DomainDescription: the parts of a domain's (live) XML that Talus reads back — VNC port and
// password, console and channel paths, disks, the owner tag.

/// A domain XML document (usually the live one from ``LibvirtDomain/xml(securityInfo:inactive:)``)
/// read into the fields Talus needs. Parsing fails with a ``LibvirtError`` (``LibvirtError/isInvalidXML``)
/// on malformed XML or a root element other than `<domain>`.
public struct DomainDescription: Sendable, Hashable {
    /// The XML this was read from.
    public let xml: String
    /// `<domain type=…>`: `qemu`, `kvm`, `test`, ...
    public let type: String
    /// `<name>`.
    public let name: String
    /// `<uuid>`, when present (libvirt always writes it).
    public let uuid: String?
    /// `<domain id=…>`: set while the domain runs.
    public let id: Int?
    /// The first VNC graphics device, if any.
    public let vnc: VNCGraphics?
    /// The host side of each `<serial>` in order: the file path or the pty path (`/dev/pts/N`,
    /// known once running).
    public let serialPaths: [String]
    /// The unix-socket channels.
    public let channels: [ChannelInfo]
    /// The disks and CD-ROMs.
    public let disks: [DiskInfo]

    private let metadata: [MiniXML]

    /// Parses `xml`.
    public init(xml: String) throws(LibvirtError) {
        let root = try MiniXML.parse(xml)
        guard root.name == "domain" else {
            throw LibvirtError(
                code: .xmlError, message: "expected a <domain> document, found <\(root.name)>",
                operation: "parse domain XML")
        }
        self.xml = xml
        type = root["type"] ?? ""
        name = root.child("name").map { String($0.text.trimmed) } ?? ""
        uuid = root.child("uuid").map { String($0.text.trimmed) }
        id = root["id"].flatMap { Int($0) }.flatMap { $0 >= 0 ? $0 : nil }
        metadata = root.child("metadata")?.children ?? []
        let devices = root.child("devices")
        vnc = devices?.children("graphics").first { $0["type"] == "vnc" }.map(VNCGraphics.init)
        serialPaths = devices?.children("serial").compactMap { $0.child("source")?["path"] } ?? []
        channels = devices?.children("channel").compactMap(ChannelInfo.init) ?? []
        disks = devices?.children("disk").map(DiskInfo.init) ?? []
    }

    /// The text of the metadata element declared in `namespace`, e.g. the Talus owner tag
    /// `image:ID` (see ``DomainXML/owner``); nil if there is none.
    public func metadataText(namespace: String = DomainXML.talusNamespace) -> String? {
        metadata.first { $0.declaredNamespace == namespace }.map { String($0.text.trimmed) }
    }
}

/// A VNC server of a domain, from its XML.
public struct VNCGraphics: Sendable, Hashable {
    /// The TCP port; nil while not assigned (the domain is not running, or `port='-1'`).
    public let port: Int?
    /// Whether libvirt picks the port.
    public let autoport: Bool
    /// The address it listens on (`listen` attribute or `<listen address=…>`).
    public let listenAddress: String?
    /// The password; only present in XML read with security info.
    public let password: String?
    /// When the password expires (`passwdValidTo`, as libvirt writes it), if set.
    public let passwordValidTo: String?

    init(_ element: MiniXML) {
        port = element["port"].flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil }
        autoport = element["autoport"] == "yes"
        listenAddress = element["listen"] ?? element.children("listen").lazy.compactMap { $0["address"] }.first
        password = element["passwd"]
        passwordValidTo = element["passwdValidTo"]
    }
}

/// A unix-socket channel of a domain (virtio-serial port), from its XML.
public struct ChannelInfo: Sendable, Hashable {
    /// The guest-side port name, e.g. `org.talus.agent.0`.
    public let targetName: String
    /// The host socket path.
    public let socketPath: String
    /// `connected`/`disconnected` for virtio channels of a running domain, when libvirt reports it.
    public let state: String?

    init?(_ element: MiniXML) {
        guard element["type"] == "unix", let path = element.child("source")?["path"] else { return nil }
        socketPath = path
        targetName = element.child("target")?["name"] ?? ""
        state = element.child("target")?["state"]
    }
}

/// A disk or CD-ROM of a domain, from its XML.
public struct DiskInfo: Sendable, Hashable {
    /// `disk`, `cdrom`, ...
    public let device: String
    /// The source file (nil for an empty CD-ROM drive or a non-file source).
    public let source: String?
    /// The guest device name, e.g. `vda`.
    public let target: String?
    /// `virtio`, `ide`, `sata`, ...
    public let bus: String?
    /// The driver type: `qcow2`, `raw`, ...
    public let format: String?
    /// Whether the disk has `<readonly/>`.
    public let readOnly: Bool

    init(_ element: MiniXML) {
        device = element["device"] ?? "disk"
        let source = element.child("source")
        self.source = source?["file"] ?? source?["dev"]
        target = element.child("target")?["dev"]
        bus = element.child("target")?["bus"]
        format = element.child("driver")?["type"]
        readOnly = element.child("readonly") != nil
    }
}
