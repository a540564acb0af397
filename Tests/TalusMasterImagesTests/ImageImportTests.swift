// Imports through the real libvirtd and QEMU (TCG) with the real test guest: the guest is
// uploaded as qcow2 and as raw, booted with VNC for the user, powers itself off, and becomes a
// ready image; bad uploads end in `error` without a VM; a master that dies during an import
// resumes it after the restart.

import BSON
import Foundation
import Libvirt
import TalusCore
import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

@Suite("Image import", .timeLimit(.minutes(10)))
struct ImageImportTests {
    /// Checks what a user sees while the import VM runs: VNC on loopback, password-protected,
    /// the password libvirt has, a deadline.
    func checkVNC(_ world: ImageWorld, _ image: ImageDocument) async throws {
        let vnc = try #require(image.status.vnc, "importing carries VNC details")
        #expect(vnc.host == "127.0.0.1")
        #expect(vnc.password.count == 8)
        #expect(vnc.expires != nil && vnc.expires == image.status.deadline)
        #expect(image.status.domain == "talus-image-\(image.id.hex)")
        let greeting = try await rfbGreeting(port: vnc.port)
        #expect(greeting.banner.hasPrefix("RFB 003."), "banner: \(greeting.banner.debugDescription)")
        #expect(greeting.securityTypes.contains(2), "VNC authentication offered: \(greeting.securityTypes)")
        #expect(!greeting.securityTypes.contains(1), "no unauthenticated access: \(greeting.securityTypes)")
        let domain = try #require(try await world.domain(image.id))
        let graphics = try await domain.vncGraphics(includePassword: true)
        #expect(graphics?.password == vnc.password, "the status carries the VM's password")
        #expect(graphics?.listenAddress == "127.0.0.1")
        #expect(graphics?.passwordValidTo != nil, "the password expires")
    }

    /// Checks a ready import: the stored file, its sha256 (against sha256sum), sizes; the
    /// upload consumed; no VM and no work files left.
    func checkReady(_ world: ImageWorld, _ id: ObjectId, upload: UploadDocument, virtualSize: Int64) async throws {
        let image = try #require(try await world.image(id))
        #expect(image.status.name == .ready)
        #expect(image.status.vnc == nil && image.status.deadline == nil)
        let file = try #require(image.file)
        #expect(file.path == "\(id.hex).qcow2")
        #expect(file.format == "qcow2")
        let path = world.storeDirectory + "/" + file.path
        #expect(file.sha256 == (try await sha256sum(path)))
        #expect(file.size == (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int64))
        #expect(file.virtualSize == virtualSize)
        let info = try await qemuImgInfo(path)
        #expect(info["format"] as? String == "qcow2")
        #expect(info["backing-filename"] == nil)
        #expect(try await world.uploads.findOne(["_id": .objectId(upload.id)]) == nil, "upload document removed")
        #expect(!FileManager.default.fileExists(atPath: world.uploadsDirectory + "/" + upload.path), "upload file removed")
        #expect(try await world.domain(id) == nil, "no VM left")
        #expect(!FileManager.default.fileExists(atPath: world.storeDirectory + "/.work/\(id.hex)"), "no work files left")
    }

    @Test("qcow2 and raw uploads get a password-protected VNC session, then become ready images")
    func importQcow2AndRaw() async throws {
        try await ImageWorld.with("import") { world in
            let qcow2 = world.directory + "/guest.qcow2"
            let raw = world.directory + "/guest.raw"
            try await TestGuest.copy(format: "qcow2", poweroffAfter: 4, to: qcow2)
            try await TestGuest.copy(format: "raw", poweroffAfter: 4, to: raw)
            let virtualSize = try #require(try await qemuImgInfo(raw)["virtual-size"] as? Int)
            let uploadQ = try await world.upload(qcow2, filename: "guest.qcow2")
            let uploadR = try await world.upload(raw, filename: "guest.img")  // .img: the contents decide
            let images = [try await world.importImage(uploadQ), try await world.importImage(uploadR)]

            for image in images {
                let importing = try await world.waitForImage(image.id, "importing with VNC") {
                    $0.status.name == .importing && $0.status.vnc != nil
                }
                try await checkVNC(world, importing)
            }
            // The guests power themselves off.
            for image in images { try await world.waitForState(image.id, .ready, timeout: .seconds(300)) }
            try await checkReady(world, images[0].id, upload: uploadQ, virtualSize: Int64(virtualSize))
            try await checkReady(world, images[1].id, upload: uploadR, virtualSize: Int64(virtualSize))
            #expect(await world.reconciler?.runningOperations() == 0)
            #expect(await world.driver?.errors == [])
        }
    }

    @Test("images.max_concurrent=1: a second import waits for the slot; delete during an import removes VM, files and upload and frees the slot")
    func slotLimitAndDeleteDuringImport() async throws {
        try await ImageWorld.with("slots", settings: ["images.max_concurrent": "1"]) { world in
            let guest = world.directory + "/guest.qcow2"
            try await TestGuest.copy(poweroffAfter: 0, to: guest)
            let uploadA = try await world.upload(guest, filename: "a.qcow2")
            let a = try await world.importImage(uploadA)
            try await world.waitForImage(a.id, "importing") { $0.status.name == .importing }
            let uploadB = try await world.upload(guest, filename: "b.qcow2")
            let b = try await world.importImage(uploadB)
            let waiting = try await world.waitForImage(b.id, "waiting for a slot") { $0.status.reason?.contains("waiting") == true }
            #expect(waiting.status.name == .import)
            #expect(waiting.status.reason?.contains("images.max_concurrent") == true, "\(waiting.status.reason ?? "")")
            #expect(try await world.domain(b.id) == nil, "no VM while waiting")

            // Deleting A stops its VM and removes everything; B gets the slot.
            try await world.request(a.id, .delete)
            try await waitUntil("image A deleted", timeout: .seconds(60)) { try await world.image(a.id) == nil }
            #expect(try await world.domain(a.id) == nil, "the VM is gone")
            #expect(!FileManager.default.fileExists(atPath: world.storeDirectory + "/\(a.id.hex).qcow2"))
            #expect(!FileManager.default.fileExists(atPath: world.storeDirectory + "/.work/\(a.id.hex)"))
            #expect(try await world.uploads.findOne(["_id": .objectId(uploadA.id)]) == nil)
            let running = try await world.waitForImage(b.id, "importing") { $0.status.name == .importing }
            #expect(running.status.vnc != nil)
            #expect(await world.reconciler?.runningOperations() == 1)

            try await world.request(b.id, .delete)
            try await waitUntil("image B deleted", timeout: .seconds(60)) { try await world.image(b.id) == nil }
            #expect(try await world.domain(b.id) == nil)
            #expect(await world.reconciler?.runningOperations() == 0)
            #expect(await world.driver?.errors == [])
        }
    }

    @Test("bad uploads end in error with a reason, and nothing runs")
    func badUploadsAreRefused() async throws {
        try await ImageWorld.with("badupload") { world in
            let dir = world.directory
            // Random bytes named .qcow2.
            let random = dir + "/random.qcow2"
            FileManager.default.createFile(atPath: random, contents: Data((0..<1_048_576).map { _ in UInt8.random(in: 0...255) }))
            // A qcow2 with a backing file.
            try await runCommand("qemu-img", ["create", "-q", "-f", "qcow2", dir + "/base.qcow2", "64M"])
            try await runCommand("qemu-img", ["create", "-q", "-f", "qcow2", "-b", dir + "/base.qcow2", "-F", "qcow2", dir + "/child.qcow2"])
            // A format outside raw/qcow2/vmdk/vdi/vhdx (VHD, "vpc" to qemu-img).
            try await runCommand("qemu-img", ["create", "-q", "-f", "vpc", dir + "/disk.vhd", "64M"])

            let cases: [(file: String?, name: String, path: String?, expect: String)] = [
                (random, "random.qcow2", nil, "not"),
                (dir + "/child.qcow2", "child.qcow2", nil, "backing file"),
                (dir + "/disk.vhd", "disk.vhd", nil, "vpc"),
                (nil, "passwd", "../../../etc/passwd", "invalid path"),
            ]
            var started: [(ImageDocument, UploadDocument, String)] = []
            for c in cases {
                let upload = try await world.upload(c.file ?? "/dev/null", filename: c.name, path: c.path)
                started.append((try await world.importImage(upload), upload, c.expect))
            }
            for (image, upload, expected) in started {
                let failed = try await world.waitForState(image.id, .error, timeout: .seconds(60))
                let reason = try #require(failed.status.reason)
                #expect(reason.contains(expected), "\(upload.filename): \(reason)")
                #expect(try await world.domain(image.id) == nil, "no VM for \(upload.filename)")
                #expect(!FileManager.default.fileExists(atPath: world.storeDirectory + "/\(image.id.hex).qcow2"))
                #expect(try await world.uploads.findOne(["_id": .objectId(upload.id)]) == nil, "the refused upload is consumed")
            }
            #expect(FileManager.default.fileExists(atPath: "/etc/passwd"), "an escaping upload path is never touched")
            #expect(await world.reconciler?.runningOperations() == 0, "refused imports hold no slot")
        }
    }

    @Test("a VM that does not come up within images.boot_timeout ends in error and is removed")
    func bootTimeout() async throws {
        try await ImageWorld.with("boottimeout", settings: ["images.boot_timeout": "1ms"]) { world in
            let guest = world.directory + "/guest.qcow2"
            try await TestGuest.copy(poweroffAfter: 0, to: guest)
            let image = try await world.importImage(try await world.upload(guest, filename: "guest.qcow2"))
            let failed = try await world.waitForState(image.id, .error, timeout: .seconds(120))
            #expect(failed.status.reason?.contains("images.boot_timeout") == true, "\(failed.status.reason ?? "")")
            #expect(try await world.domain(image.id) == nil)
            #expect(FileManager.default.fileExists(atPath: world.storeDirectory + "/\(image.id.hex).qcow2"),
                    "the converted image stays: `configure` can still make it ready")
        }
    }

    @Test("the master dies during an import and the guest powers off meanwhile: after the restart the import completes")
    func masterRestartDuringImport() async throws {
        try await ImageWorld.with("restart") { world in
            let guest = world.directory + "/guest.qcow2"
            try await TestGuest.copy(poweroffAfter: 3, to: guest)
            let upload = try await world.upload(guest, filename: "guest.qcow2")
            let image = try await world.importImage(upload)
            try await world.waitForImage(image.id, "importing") { $0.status.name == .importing }
            await world.killMaster()

            // The VM outlives the master; the guest powers itself off while no master watches.
            let domain = try #require(try await world.domain(image.id), "the import VM keeps running without the master")
            try await world.explained {
                try await waitUntil("the guest powers off", timeout: .seconds(300)) { try await !domain.state().isActive }
            }
            #expect(try await world.image(image.id)?.status.name == .importing)

            world.startMaster()
            try await world.waitForState(image.id, .ready, timeout: .seconds(120))
            let virtualSize = try #require(try await qemuImgInfo(guest)["virtual-size"] as? Int)
            try await checkReady(world, image.id, upload: upload, virtualSize: Int64(virtualSize))
        }
    }
}
