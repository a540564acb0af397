// DomainXML rendering and validation, and DomainDescription parsing: no libvirt involved.

import Foundation
import Libvirt
import Testing

@Suite("DomainXML and DomainDescription")
struct DomainXMLTests {
    /// The shape of a slave's job-part VM (guest-recipe.md §6).
    func partXML() -> DomainXML {
        var xml = DomainXML(name: "talus-part-1", type: .qemu, memoryMiB: 256, vcpus: 1)
        xml.disks = [.init(path: "/run/p/ovl.qcow2"), .cdrom(path: "/run/p/config.iso")]
        xml.channels = [.init(socketPath: "/run/p/agent.sock", targetName: "org.talus.agent.0")]
        xml.serial = .file("/run/p/serial.log")
        xml.vnc = .init(listen: "127.0.0.1", password: "abcdefgh")
        xml.owner = "part:job1:0"
        return xml
    }

    @Test func rendersTheRecipeShape() throws {
        let xml = try partXML().render()
        let expected = [
            "<domain type='qemu'>",
            "<name>talus-part-1</name>",
            "<talus:owner xmlns:talus='https://talus.dev/xmlns/1'>part:job1:0</talus:owner>",
            "<memory unit='MiB'>256</memory>",
            "<vcpu>1</vcpu>",
            "<type arch='x86_64' machine='pc'>hvm</type>",
            "<boot dev='hd'/>",
            "<acpi/>",
            "<on_poweroff>destroy</on_poweroff>",
            "<on_reboot>destroy</on_reboot>",
            "<on_crash>destroy</on_crash>",
            "<disk type='file' device='disk'>",
            "<driver name='qemu' type='qcow2'/>",
            "<source file='/run/p/ovl.qcow2'/>",
            "<target dev='vda' bus='virtio'/>",
            "<disk type='file' device='cdrom'>",
            "<target dev='hda' bus='ide'/>",
            "<readonly/>",
            "<controller type='virtio-serial' index='0'/>",
            "<source mode='bind' path='/run/p/agent.sock'/>",
            "<target type='virtio' name='org.talus.agent.0'/>",
            "<serial type='file'>",
            "<source path='/run/p/serial.log'/>",
            "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='abcdefgh'/>",
            "<rng model='virtio'>",
            "<backend model='random'>/dev/urandom</backend>",
            "<memballoon model='none'/>",
        ]
        for fragment in expected { #expect(xml.contains(fragment), "missing \(fragment) in\n\(xml)") }
        #expect(!xml.contains("<interface"), "no network by default")
        #expect(!xml.contains("<cpu"))
    }

    @Test func renderedXMLParsesBack() throws {
        let description = try DomainDescription(xml: partXML().render())
        #expect(description.name == "talus-part-1")
        #expect(description.type == "qemu")
        #expect(description.metadataText() == "part:job1:0")
        #expect(description.vnc?.password == "abcdefgh")
        #expect(description.vnc?.autoport == true)
        #expect(description.vnc?.port == nil)
        #expect(description.channels.map(\.socketPath) == ["/run/p/agent.sock"])
        #expect(description.serialPaths == ["/run/p/serial.log"])
        #expect(description.disks.map(\.source) == ["/run/p/ovl.qcow2", "/run/p/config.iso"])
        #expect(description.disks.map(\.format) == ["qcow2", "raw"])
    }

    @Test func escapesEveryString() throws {
        var xml = DomainXML(name: "a<b>&'c\"")
        xml.owner = "image:<&>"
        xml.serial = .file("/tmp/it's \"here\" & <there>")
        xml.interfaces = [.init(.network("talus<net>"), filter: "f&g", filterParameters: ["IP": "10.0.0.1'"])]
        let rendered = try xml.render()
        #expect(rendered.contains("<name>a&lt;b&gt;&amp;&apos;c&quot;</name>"))
        #expect(rendered.contains(">image:&lt;&amp;&gt;</talus:owner>"))
        #expect(rendered.contains("path='/tmp/it&apos;s &quot;here&quot; &amp; &lt;there&gt;'"))
        #expect(rendered.contains("<source network='talus&lt;net&gt;'/>"))
        #expect(rendered.contains("<filterref filter='f&amp;g'>"))
        #expect(rendered.contains("<parameter name='IP' value='10.0.0.1&apos;'/>"))
        let description = try DomainDescription(xml: rendered)
        #expect(description.name == "a<b>&'c\"")
        #expect(description.metadataText() == "image:<&>")
        #expect(description.serialPaths == ["/tmp/it's \"here\" & <there>"])
    }

    @Test func networksAndOptions() throws {
        var xml = DomainXML(name: "n", type: .kvm, memoryMiB: 2048, vcpus: 4)
        xml.machine = "q35"
        xml.cpuMode = .hostPassthrough
        xml.boot = [.cdrom, .hardDisk]
        xml.onReboot = .restart
        xml.virtioRNG = false
        xml.memoryBalloon = true
        xml.uuid = "11111111-2222-3333-4444-555555555555"
        xml.disks = [.cdrom(path: "/i.iso", bus: .sata), .init(path: "/d.raw", format: .raw, bus: .sata)]
        xml.interfaces = [.init(.user), .init(.network("talus"), mac: "52:54:00:00:00:01", filter: "clean-traffic"),
                          .init(.bridge("br0"), model: "e1000")]
        xml.serial = .pty
        let until = Date(timeIntervalSince1970: 1_700_000_000)  // 2023-11-14T22:13:20Z
        xml.vnc = .init(listen: "0.0.0.0", port: 5901, password: "x", passwordValidUntil: until)
        let rendered = try xml.render()
        for fragment in [
            "<domain type='kvm'>", "<uuid>11111111-2222-3333-4444-555555555555</uuid>",
            "<memory unit='MiB'>2048</memory>", "<vcpu>4</vcpu>", "machine='q35'", "<cpu mode='host-passthrough'/>",
            "<boot dev='cdrom'/>\n    <boot dev='hd'/>", "<on_reboot>restart</on_reboot>",
            "<target dev='sda' bus='sata'/>", "<target dev='sdb' bus='sata'/>",
            "<interface type='user'>", "<model type='virtio'/>",
            "<interface type='network'>", "<source network='talus'/>", "<mac address='52:54:00:00:00:01'/>",
            "<filterref filter='clean-traffic'/>", "<source bridge='br0'/>", "<model type='e1000'/>",
            "<serial type='pty'>",
            "<graphics type='vnc' port='5901' autoport='no' listen='0.0.0.0' passwd='x' passwdValidTo='2023-11-14T22:13:20'/>",
        ] {
            #expect(rendered.contains(fragment), "missing \(fragment) in\n\(rendered)")
        }
        #expect(!rendered.contains("<rng"))
        #expect(!rendered.contains("memballoon"))
        #expect(!rendered.contains("virtio-serial"), "no controller without channels")
    }

    @Test func explicitTargetsAreKeptAndOthersFillIn() throws {
        var xml = DomainXML(name: "t")
        xml.disks = [.init(path: "/a", target: "vdb"), .init(path: "/b"), .init(path: "/c"),
                     .cdrom(path: "/i", target: "hdc"), .cdrom(path: "/j")]
        let targets = try DomainDescription(xml: xml.render()).disks.map(\.target)
        #expect(targets == ["vdb", "vda", "vdc", "hdc", "hda"])
    }

    /// Values that libvirt or QEMU would refuse or silently misread.
    enum BadValue: String, CaseIterable, Sendable {
        case emptyName, noMemory, noVCPUs, longVNCPassword, emptyVNCPassword, lowVNCPort, longSocketPath,
            emptyChannelName, sameTargetTwice, fiveIDEDevices, ideOnQ35, controlCharacter, emptyNetworkName

        func apply(to x: inout DomainXML) {
            switch self {
            case .emptyName: x.name = ""
            case .noMemory: x.memoryMiB = 0
            case .noVCPUs: x.vcpus = 0
            case .longVNCPassword: x.vnc = .init(password: "123456789")
            case .emptyVNCPassword: x.vnc = .init(password: "")
            case .lowVNCPort: x.vnc = .init(port: 80)
            case .longSocketPath:
                x.channels = [.init(socketPath: "/" + String(repeating: "s", count: 107), targetName: "a")]
            case .emptyChannelName: x.channels = [.init(socketPath: "/s", targetName: "")]
            case .sameTargetTwice: x.disks = [.init(path: "/a", target: "vda"), .init(path: "/b", target: "vda")]
            case .fiveIDEDevices: x.disks = (0..<5).map { .cdrom(path: "/\($0).iso") }
            case .ideOnQ35:
                x.machine = "q35"
                x.disks = [.cdrom(path: "/i.iso")]
            case .controlCharacter: x.name = "bad\u{1}name"
            case .emptyNetworkName: x.interfaces = [.init(.network(""))]
            }
        }
    }

    @Test(arguments: BadValue.allCases)
    func refusesValuesLibvirtWouldMisread(bad: BadValue) {
        var xml = DomainXML(name: "v")
        bad.apply(to: &xml)
        let error = #expect(throws: LibvirtError.self, "\(bad)") { try xml.render() }
        #expect(error?.isInvalidArgument == true, "\(bad): \(String(describing: error))")
    }

    @Test func eightByteVNCPasswordAndMaximalSocketPathAreAccepted() throws {
        var xml = DomainXML(name: "ok")
        xml.vnc = .init(password: "12345678")
        xml.channels = [.init(socketPath: "/" + String(repeating: "s", count: 106), targetName: "a")]
        _ = try xml.render()
    }

    @Test func descriptionReadsLiveXML() throws {
        // As libvirt writes a running domain (abridged), with a pty console and a listen child.
        let live = """
            <?xml version="1.0"?>
            <!-- live -->
            <domain type='qemu' id='7'>
              <name>talus-image-1</name>
              <uuid>bc6ce417-a4cf-4376-969a-5d4f62023bd0</uuid>
              <metadata>
                <other:x xmlns:other="https://example.com/x">nope</other:x>
                <talus:owner xmlns:talus="https://talus.dev/xmlns/1">
                  image:65f1
                </talus:owner>
              </metadata>
              <devices>
                <disk type='file' device='disk'>
                  <driver name='qemu' type='qcow2'/>
                  <source file='/var/lib/talus/images/65f1.qcow2' index='1'/>
                  <backingStore/>
                  <target dev='vda' bus='virtio'/>
                </disk>
                <disk type='file' device='cdrom'>
                  <target dev='hdc' bus='ide'/>
                  <readonly/>
                </disk>
                <serial type='pty'>
                  <source path='/dev/pts/3'/>
                  <target type='isa-serial' port='0'><model name='isa-serial'/></target>
                </serial>
                <channel type='unix'>
                  <source mode='bind' path='/run/a.sock'/>
                  <target type='virtio' name='org.talus.agent.0' state='disconnected'/>
                </channel>
                <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
                <graphics type='vnc' port='5903' autoport='yes' passwd='s&amp;cret'>
                  <listen type='address' address='10.0.0.5'/>
                </graphics>
                <description><![CDATA[a <raw> & text]]></description>
              </devices>
            </domain>
            """
        let d = try DomainDescription(xml: live)
        #expect(d.id == 7)
        #expect(d.uuid == "bc6ce417-a4cf-4376-969a-5d4f62023bd0")
        #expect(d.metadataText() == "image:65f1")
        #expect(d.metadataText(namespace: "https://example.com/x") == "nope")
        #expect(d.metadataText(namespace: "https://example.com/none") == nil)
        let vnc = try #require(d.vnc)
        #expect(vnc.port == 5903)
        #expect(vnc.autoport)
        #expect(vnc.listenAddress == "10.0.0.5")
        #expect(vnc.password == "s&cret")
        #expect(vnc.passwordValidTo == nil)
        #expect(d.serialPaths == ["/dev/pts/3"])
        #expect(d.channels.count == 1)
        #expect(d.channels.first?.state == "disconnected")
        #expect(d.disks.map(\.source) == ["/var/lib/talus/images/65f1.qcow2", nil])
        #expect(d.disks.map(\.readOnly) == [false, true])
    }

    @Test(arguments: [
        "", "<", "<domain>", "<domain></other>", "<domain a='1' a='2'/>", "<domain>&bogus;</domain>",
        "<domain a=1/>", "<domain/><domain/>", "text", "<domain><name>x</name>",
        String(repeating: "<a>", count: 300) + String(repeating: "</a>", count: 300),
    ])
    func malformedXMLIsAnErrorNotACrash(xml: String) {
        let error = #expect(throws: LibvirtError.self) { try DomainDescription(xml: xml) }
        #expect(error?.isInvalidXML == true, "\(xml.prefix(40)): \(String(describing: error))")
    }

    @Test func nonDomainRootIsRefused() {
        let error = #expect(throws: LibvirtError.self) { try DomainDescription(xml: "<network/>") }
        #expect(error?.message.contains("<network>") == true)
    }
}
