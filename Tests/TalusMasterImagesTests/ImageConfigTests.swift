// Image settings, the upload checks on real `qemu-img info` output, and the KVM probe on this
// host. No VM boots here.

import BSON
import Foundation
import Libvirt
import Logging
import Mongo
import TalusCore
@testable import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

@Suite("Image settings and checks")
struct ImageConfigTests {
    @Test func defaultsAreDocumentedAndSafe() throws {
        let config = try ImageConfig(values: [:])
        #expect(config.store == "/var/lib/talus/images")
        #expect(config.uploads == "/var/lib/talus/uploads")
        #expect(config.libvirtURI == "qemu:///system")
        #expect(config.domainType == .auto)
        #expect(config.vncListen == "127.0.0.1", "loopback unless configured")
        #expect(config.vncPublicHost == "127.0.0.1", "defaults to vnc.listen")
        #expect(config.maxConcurrent == 2)
        #expect(config.network == .none)
        #expect(config.sessionTimeout == .seconds(4 * 3600))
        let names = ImageConfig.keys.map(\.name)
        #expect(Set(names).count == names.count)
        for key in ["images.store", "storage.uploads", "libvirt.uri", "libvirt.domain_type", "vnc.listen", "vnc.public_host",
                    "images.boot_timeout", "images.session_timeout", "images.configure_timeout", "images.max_concurrent",
                    "images.vm_memory_mb", "images.vm_cpus"] {
            #expect(names.contains(key), "\(key) is declared")
        }
        for key in ImageConfig.keys { #expect(!key.doc.isEmpty, "\(key.name) is documented") }
        #expect(settingsReference(title: "Images", file: "master.yaml", keys: ImageConfig.keys).contains("`vnc.public_host`"))
    }

    @Test func badValuesNameTheKey() throws {
        let cases: [(String, String)] = [
            ("libvirt.domain_type", "xen"), ("images.max_concurrent", "0"), ("images.boot_timeout", "soon"),
            ("images.store", "relative/dir"), ("images.disk_bus", "scsi"), ("images.network", "isolated"),
            ("images.session_timeout_max", "1h"),
        ]
        for (key, value) in cases {
            #expect(throws: SettingsError.self, "\(key)=\(value)") { try ImageConfig(values: [key: value]) }
            do {
                _ = try ImageConfig(values: [key: value])
            } catch let error as SettingsError {
                #expect(error.key == key, "\(error)")
            }
        }
        let wildcard = try ImageConfig(values: ["vnc.listen": "0.0.0.0"])
        #expect(wildcard.vncPublicHost != "0.0.0.0", "a wildcard listen address is no host to connect to")
        let explicit = try ImageConfig(values: ["vnc.listen": "0.0.0.0", "vnc.public_host": "talus.example.org"])
        #expect(explicit.vncPublicHost == "talus.example.org")
    }

    @Test func uploadChecksOnRealImages() async throws {
        let dir = try TestEnvironment.scratchDirectory("image-checks")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = ImageStore(root: dir + "/store", uploads: dir, fileTimeout: .seconds(60))
        func make(_ args: [String]) async throws { try await runCommand("qemu-img", ["create", "-q"] + args) }
        try await make(["-f", "qcow2", dir + "/plain.qcow2", "64M"])
        try await make(["-f", "qcow2", "-o", "data_file=\(dir)/external.raw", dir + "/datafile.qcow2", "16M"])
        try await make(["-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", dir + "/split.vmdk", "64M"])
        try await make(["-f", "vmdk", dir + "/single.vmdk", "64M"])
        try await make(["-f", "vdi", dir + "/disk.vdi", "64M"])
        try await make(["-f", "vhdx", dir + "/disk.vhdx", "64M"])
        try await make(["-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s", "--object", "secret,id=s,data=pw",
                        dir + "/secret.qcow2", "16M"])

        #expect(try await store.probe(path: dir + "/plain.qcow2", filename: "plain.qcow2") == ProbedImage(format: .qcow2, virtualSize: 64 << 20))
        #expect(try await store.probe(path: dir + "/single.vmdk", filename: "single.vmdk").format == .vmdk)
        #expect(try await store.probe(path: dir + "/disk.vdi", filename: "disk.vdi").format == .vdi)
        #expect(try await store.probe(path: dir + "/disk.vhdx", filename: "x.vhdx").format == .vhdx)
        #expect(try await store.probe(path: dir + "/plain.qcow2", filename: "disk.img").format == .qcow2, ".img: the contents decide")

        func refusal(_ file: String, _ name: String) async -> String {
            do {
                _ = try await store.probe(path: dir + "/" + file, filename: name)
                return "accepted"
            } catch {
                return error.reason
            }
        }
        #expect(await refusal("datafile.qcow2", "datafile.qcow2").contains("external file"))
        #expect(await refusal("split.vmdk", "split.vmdk").contains("multi-file VMDK"))
        #expect(await refusal("secret.qcow2", "secret.qcow2").contains("encrypted"))
        #expect(await refusal("plain.qcow2", "plain.vmdk").contains("named like a vmdk"))
        #expect(await refusal("missing.qcow2", "missing.qcow2").contains("not a disk image qemu-img can read"))
    }

    @Test func uploadPathsStayInTheUploadDirectory() throws {
        let dir = try TestEnvironment.scratchDirectory("upload-paths")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/uploads/a", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: dir + "/uploads/a/disk.qcow2", contents: Data("x".utf8))
        FileManager.default.createFile(atPath: dir + "/secret", contents: Data("x".utf8))
        try FileManager.default.createSymbolicLink(atPath: dir + "/uploads/a/link", withDestinationPath: dir + "/secret")
        let store = ImageStore(root: dir + "/store", uploads: dir + "/uploads", fileTimeout: .seconds(60))
        func upload(_ path: String) -> UploadDocument {
            UploadDocument(filename: "disk.qcow2", path: path, complete: true, expires: Date())
        }
        #expect(try store.uploadPath(upload("a/disk.qcow2")).hasSuffix("/uploads/a/disk.qcow2"))
        for bad in ["/etc/passwd", "../secret", "a/../../secret", "a/link", "a/missing", ""] {
            #expect(throws: ImageFailure.self, "\(bad)") { try store.uploadPath(upload(bad)) }
        }
    }

    @Test("auto-detection in the reconciler boots a KVM test guest through libvirt and answers within its bound")
    func kvmProbe() async throws {
        // `auto` in the reconciler: what the libvirt probe finds (LibvirtTests checks the probe).
        let libvirt = try await LibvirtConnection(uri: try TestEnvironment.libvirtURI())
        let probe = await libvirt.probeDomainType(directory: try TestEnvironment.scratchDirectory("img-kvm-probe"))
        await libvirt.close()
        let client = try MongoClient(uri: try TestEnvironment.mongoURI())
        let config = try ImageConfig(values: ["libvirt.uri": try TestEnvironment.libvirtURI(), "libvirt.domain_type": "auto",
                                              "images.store": try TestEnvironment.scratchDirectory("img-kvm-store")])
        let reconciler = ImageReconciler(database: client.database(uniqueName("img-kvm")), config: config, logger: Logger(label: "test"))
        let clock = ContinuousClock()
        let start = clock.now
        let chosen = try await reconciler.resolveDomainType()
        #expect(clock.now - start < .seconds(20))
        await reconciler.shutdown()
        await client.close()
        #expect(chosen == probe.type, "probe: \(probe)")
    }
}

extension Error {
    var reason: String { (self as? ImageFailure)?.reason ?? "\(self)" }
}
