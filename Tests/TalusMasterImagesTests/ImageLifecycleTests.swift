// Create, configure and delete with the real libvirtd, QEMU (TCG) and test guest: child images
// are overlays with a relative backing file; a base with children is neither configured nor
// deleted; a scripted configure changes the child and not its base; unfinished jobs block a
// delete; an interactive session past its deadline ends in `error` with the VM gone, also when
// the master restarted meanwhile.

import BSON
import Foundation
import Libvirt
import TalusCore
import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

@Suite("Image create, configure, delete", .timeLimit(.minutes(10)))
struct ImageLifecycleTests {
    /// Mounts the guest's FAT boot disk read-write and leaves a marker: "configure changed the
    /// image" becomes visible with mtools on the host.
    static let markerScript = """
        set -e
        dev=$(findfs LABEL=TALUSBOOT)
        mkdir -p /mnt/boot
        mount -t vfat -o rw "$dev" /mnt/boot
        echo configured-by-talus > /mnt/boot/talus/marker.txt
        umount /mnt/boot
        sync
        echo marker written
        """

    @Test("create a child; base refuses configure and delete; scripted configure changes only the child; jobs block delete; delete child, then base")
    func createConfigureDelete() async throws {
        try await ImageWorld.with("lifecycle") { world in
            let guest = world.directory + "/guest.qcow2"
            try await TestGuest.copy(poweroffAfter: 0, to: guest)
            let base = try await world.readyImage(from: guest)
            let basePath = world.storeDirectory + "/\(base.id.hex).qcow2"
            let baseHash = try await sha256sum(basePath)

            // A non-interactive create is an overlay with a relative backing file: ready at once.
            let child = ImageDocument(name: uniqueName("child"), os: base.os, base: base.id,
                                      request: ImageRequest(interactive: false), status: ImageStatus(.create))
            try await world.insert(child)
            let ready = try await world.waitForState(child.id, .ready, timeout: .seconds(30))
            let childPath = world.storeDirectory + "/\(child.id.hex).qcow2"
            let info = try await qemuImgInfo(childPath)
            #expect(info["backing-filename"] as? String == "\(base.id.hex).qcow2", "relative backing file: \(info)")
            #expect(info["backing-filename-format"] as? String == "qcow2")
            #expect(ready.file?.sha256 == (try await sha256sum(childPath)))
            #expect(ready.file?.path == "\(child.id.hex).qcow2")

            // The base has a child: configure and delete are refused, back to ready with a reason.
            try await world.request(base.id, .configure, ImageRequest(interactive: true))
            let refusedConfigure = try await world.waitForImage(base.id, "configure refused") { $0.status.name == .ready && $0.status.reason != nil }
            #expect(refusedConfigure.status.reason?.contains(child.name) == true, "\(refusedConfigure.status.reason ?? "")")
            try await world.request(base.id, .delete)
            let refusedDelete = try await world.waitForImage(base.id, "delete refused") { $0.status.name == .ready && $0.status.reason?.contains("delete") == true }
            #expect(refusedDelete.status.reason?.contains("based on this image") == true)
            #expect(try await sha256sum(basePath) == baseHash)

            // A scripted, non-interactive configure of the child: the guest writes a marker to its
            // disk and powers off; the change is committed into the child, not the base.
            try await world.request(child.id, .configure, ImageRequest(interactive: false, script: Self.markerScript))
            let configuring = try await world.waitForState(child.id, .configuring, timeout: .seconds(120))
            #expect(configuring.status.vnc == nil, "no VNC for a non-interactive configure")
            #expect(configuring.status.deadline != nil)
            let configured = try await world.waitForState(child.id, .ready, timeout: .seconds(300))
            #expect(configured.file?.sha256 == (try await sha256sum(childPath)))
            #expect(configured.file?.sha256 != ready.file?.sha256, "the child changed")
            #expect(try await sha256sum(basePath) == baseHash, "the base did not change")
            let flat = world.directory + "/child.raw"
            try await runCommand("qemu-img", ["convert", "-O", "raw", childPath, flat])
            let marker = try await runCommand("mtype", ["-i", flat, "::/talus/marker.txt"], environment: ["MTOOLS_SKIP_CHECK": "1"])
            #expect(marker.stdout.contains("configured-by-talus"))
            #expect(try await qemuImgInfo(childPath)["backing-filename"] as? String == "\(base.id.hex).qcow2", "still relative after the commit")
            #expect(try await world.domain(child.id) == nil)

            // An unfinished job uses the child: delete refused; once the job ended, delete works.
            var job = JobDocument(name: uniqueName("job"), task: ObjectId(), image: child.id, tool: "t", toolCommit: "c")
            job.status = Status(.running)
            _ = try await world.jobs.insertOne(job)
            try await world.request(child.id, .delete)
            let blocked = try await world.waitForImage(child.id, "delete refused") { $0.status.name == .ready && $0.status.reason != nil }
            #expect(blocked.status.reason?.contains("1 unfinished job") == true, "\(blocked.status.reason ?? "")")
            _ = try await world.jobs.updateOne(["_id": .objectId(job.id)], ["$set": ["status.name": "finished"]])
            try await world.request(child.id, .delete)
            try await waitUntil("child deleted", timeout: .seconds(30)) { try await world.image(child.id) == nil }
            #expect(!FileManager.default.fileExists(atPath: childPath))

            // Now the base can go.
            try await world.request(base.id, .delete)
            try await waitUntil("base deleted", timeout: .seconds(30)) { try await world.image(base.id) == nil }
            #expect(!FileManager.default.fileExists(atPath: basePath))
            #expect(await world.driver?.errors == [])
        }
    }

    @Test("an interactive configure past its deadline ends in error with the VM gone, across a master restart")
    func interactiveDeadline() async throws {
        try await ImageWorld.with("deadline") { world in
            let guest = world.directory + "/guest.qcow2"
            try await TestGuest.copy(poweroffAfter: 0, to: guest)  // never powers off by itself
            let image = try await world.readyImage(from: guest)
            let path = world.storeDirectory + "/\(image.id.hex).qcow2"
            let hash = try await sha256sum(path)
            try await world.request(image.id, .configure, ImageRequest(interactive: true, sessionSeconds: 25))
            let configuring = try await world.waitForState(image.id, .configuring, timeout: .seconds(120))
            let vnc = try #require(configuring.status.vnc)
            let deadline = try #require(configuring.status.deadline)
            #expect(abs(deadline.timeIntervalSince(configuring.status.since) - 25) < 5, "session_seconds sets the deadline")
            #expect(try await rfbGreeting(port: vnc.port).securityTypes == [2])

            // The master restarts during the session: the new one keeps the same deadline.
            await world.killMaster()
            #expect(try await world.domain(image.id)?.isActive() == true)
            world.startMaster()

            let failed = try await world.waitForState(image.id, .error, timeout: .seconds(120))
            #expect(Date() >= deadline)
            let reason = try #require(failed.status.reason)
            #expect(reason.contains("deadline"), "\(reason)")
            #expect(failed.status.vnc == nil)
            #expect(try await world.domain(image.id) == nil, "the VM is gone")
            #expect(try await sha256sum(path) == hash, "the session's changes were discarded; the image file is as it was")
            #expect(await world.reconciler?.runningOperations() == 0)
        }
    }
}
