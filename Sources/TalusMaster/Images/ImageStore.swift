// The image store on disk (DESIGN §5): `<store>/<id>.qcow2` per image, derived images as qcow2
// overlays with a relative backing file, work files of running operations in `<store>/.work/<id>/`.
// Every external tool runs with a deadline; every refusal of user input is an ``ImageFailure``
// whose text a person can act on.

import BSON
import Foundation
import TalusCore
import TalusModel

/// A reason the image goes to `error` (or a request is refused), written for the person who
/// asked: what is wrong and what to do.
struct ImageFailure: Error, CustomStringConvertible, Sendable {
    let reason: String
    init(_ reason: String) { self.reason = reason }
    var description: String { reason }
}

/// What `qemu-img info` says about an upload that passed the checks.
struct ProbedImage: Sendable, Equatable {
    var format: DiskFormat
    var virtualSize: Int64
}

/// Paths and file operations of the image store.
struct ImageStore: Sendable {
    /// `images.store`.
    let root: String
    /// `storage.uploads`.
    let uploads: String
    /// `images.file_timeout`: one convert or commit.
    let fileTimeout: Duration
    /// Short tool runs (`qemu-img info`, `create`, `genisoimage`).
    let quickTimeout: Duration = .seconds(60)

    // MARK: Paths

    /// `file.path` of an image: relative to the store.
    static func relativePath(_ id: ObjectId) -> String { "\(id.hex).qcow2" }
    func imagePath(_ id: ObjectId) -> String { root + "/" + Self.relativePath(id) }
    var workRoot: String { root + "/.work" }
    func workDirectory(_ id: ObjectId) -> String { workRoot + "/" + id.hex }
    /// The overlay a VM session writes to; committed into the image when the guest shuts down.
    func sessionOverlay(_ id: ObjectId) -> String { workDirectory(id) + "/session.qcow2" }
    func serialLog(_ id: ObjectId) -> String { workDirectory(id) + "/serial.log" }
    func configISO(_ id: ObjectId) -> String { workDirectory(id) + "/config.iso" }
    /// Where an import converts to before the atomic rename to ``imagePath(_:)``.
    func conversionTarget(_ id: ObjectId) -> String { workDirectory(id) + "/import.qcow2" }
    /// A child overlay is created next to its base (the backing path is relative) under this
    /// name, then renamed.
    func overlayTemporary(_ id: ObjectId) -> String { root + "/.\(id.hex).qcow2.tmp" }

    func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    /// Creates the store and its work directory (mode 0755: QEMU runs as another user and must
    /// reach the files).
    func prepare() throws {
        for dir in [root, workRoot] {
            try FileManager.default.createDirectory(
                atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
    }

    func makeWorkDirectory(_ id: ObjectId) throws {
        try prepare()
        try FileManager.default.createDirectory(
            atPath: workDirectory(id), withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    }

    /// Removes the work directory of an image (overlay, ISO, console log, partial conversion)
    /// and a half-created child overlay. Missing files are fine.
    func removeWork(_ id: ObjectId) throws {
        for path in [workDirectory(id), overlayTemporary(id)] where exists(path) {
            try FileManager.default.removeItem(atPath: path)
        }
    }

    /// Removes the image file. Missing is fine.
    func removeImage(_ id: ObjectId) throws {
        if exists(imagePath(id)) { try FileManager.default.removeItem(atPath: imagePath(id)) }
    }

    /// Ids that have a work directory (for the start-up sweep).
    func idsWithWork() -> [ObjectId] {
        ((try? FileManager.default.contentsOfDirectory(atPath: workRoot)) ?? []).compactMap { ObjectId($0) }
    }

    // MARK: Uploads

    /// The absolute path of an upload, refusing paths that leave the upload directory (absolute
    /// paths, `..`, symbolic links pointing elsewhere).
    func uploadPath(_ upload: UploadDocument) throws(ImageFailure) -> String {
        let relative = upload.path
        guard !relative.isEmpty, !relative.hasPrefix("/"), !relative.split(separator: "/").contains("..") else {
            throw ImageFailure("upload \(upload.id) has an invalid path \(relative.debugDescription); upload the file again")
        }
        let joined = uploads + "/" + relative
        guard let real = Self.realPath(joined) else {
            throw ImageFailure(
                "the uploaded file of upload \(upload.id) (\(upload.filename)) is missing from the upload directory; upload it again")
        }
        let base = Self.realPath(uploads) ?? uploads
        guard real.hasPrefix(base + "/") else {
            throw ImageFailure("upload \(upload.id) points outside the upload directory; upload the file again")
        }
        return real
    }

    /// Removes an upload's file (a missing file is fine; a path outside the directory is left alone).
    func removeUploadFile(_ upload: UploadDocument) {
        guard let path = try? uploadPath(upload) else { return }
        try? FileManager.default.removeItem(atPath: path)
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    // MARK: Probing an upload

    /// Formats named by an upload's file extension; other extensions (`.img`, none) accept what
    /// `qemu-img` finds.
    static func formatNamed(byFilename filename: String) -> DiskFormat? {
        switch (filename as NSString).pathExtension.lowercased() {
        case "qcow2", "qcow": .qcow2
        case "vmdk": .vmdk
        case "vdi": .vdi
        case "vhdx": .vhdx
        case "raw": .raw
        default: nil
        }
    }

    /// `qemu-img info` on an upload, then the checks of DESIGN §5: a supported format that agrees
    /// with the file name, no backing file, no external data file or extent, not encrypted, not
    /// marked corrupt.
    func probe(path: String, filename: String) async throws(ImageFailure) -> ProbedImage {
        let info: [String: Any]
        do {
            info = try await qemuImgInfo(path)
        } catch {
            throw ImageFailure("\(filename) is not a disk image qemu-img can read: \(Self.shortError(error))")
        }
        try Self.check(info: info, filename: filename, path: path)
        let format = DiskFormat(rawValue: info["format"] as? String ?? "")!
        return ProbedImage(format: format, virtualSize: Self.int64(info["virtual-size"]) ?? 0)
    }

    /// The checks of ``probe(path:filename:)`` on `qemu-img info --output=json` output.
    static func check(info: [String: Any], filename: String, path: String) throws(ImageFailure) {
        let found = info["format"] as? String ?? "unknown"
        let supported = DiskFormat.allCases.map(\.rawValue).joined(separator: ", ")
        guard let format = DiskFormat(rawValue: found) else {
            throw ImageFailure("\(filename) is a \(found) image; Talus imports \(supported): convert it with qemu-img first")
        }
        if let named = formatNamed(byFilename: filename), named != format {
            throw ImageFailure(
                "\(filename) is named like a \(named.rawValue) image, but its contents are not (qemu-img reads it as \(found)); the file is corrupt or misnamed")
        }
        if let backing = info["backing-filename"] as? String ?? info["full-backing-filename"] as? String {
            throw ImageFailure(
                "\(filename) has a backing file (\(backing)); upload a standalone image (qemu-img convert -O qcow2 \(filename) standalone.qcow2)")
        }
        if info["encrypted"] as? Bool == true {
            throw ImageFailure("\(filename) is encrypted; upload an unencrypted image")
        }
        guard let size = int64(info["virtual-size"]), size > 0 else {
            throw ImageFailure("\(filename) has no virtual size; it is not a usable disk image")
        }
        let specific = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any] ?? [:]
        if specific["corrupt"] as? Bool == true {
            throw ImageFailure("\(filename) is a qcow2 image marked corrupt; repair it with qemu-img check -r all first")
        }
        if let dataFile = specific["data-file"] as? String {
            throw ImageFailure("\(filename) keeps its data in an external file (\(dataFile)); upload a self-contained image")
        }
        let ownName = (path as NSString).lastPathComponent
        for extent in specific["extents"] as? [[String: Any]] ?? [] {
            let name = extent["filename"] as? String ?? ""
            if name != path && (name as NSString).lastPathComponent != ownName {
                throw ImageFailure(
                    "\(filename) is a multi-file VMDK (extent \(name)); convert it to a single file (qemu-img convert -O qcow2) first")
            }
        }
    }

    /// `qemu-img info --output=json` of `path`, parsed.
    func qemuImgInfo(_ path: String, format: String? = nil) async throws -> [String: Any] {
        var args = ["info", "--output=json"]
        if let format { args += ["-f", format] }
        let result = try await runCommand("qemu-img", args + [path], timeout: quickTimeout)
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw ImageFailure("qemu-img info printed no JSON object")
        }
        return object
    }

    // MARK: Writing images

    /// Converts an upload to qcow2 at ``imagePath(_:)``: into the work directory first, then an
    /// atomic rename, so the store never holds a partial image under its final name.
    func convert(_ source: String, format: DiskFormat, to id: ObjectId) async throws(ImageFailure) {
        do {
            try makeWorkDirectory(id)
            let target = conversionTarget(id)
            if exists(target) { try FileManager.default.removeItem(atPath: target) }
            try await runCommand(
                "qemu-img", ["convert", "-f", format.rawValue, "-O", "qcow2", "-W", source, target], timeout: fileTimeout)
            try Task.checkCancellation()  // deleted meanwhile: do not resurrect the file
            try Self.rename(target, to: imagePath(id))
        } catch let failure as ImageFailure {
            throw failure
        } catch {
            throw ImageFailure("converting the upload to qcow2 failed: \(Self.shortError(error))")
        }
    }

    /// Creates image `id` as a qcow2 overlay of `base`, with the backing file named relatively
    /// (`<base id>.qcow2`, in the same directory) and its format given explicitly.
    func createChild(_ id: ObjectId, base: ObjectId) async throws {
        try prepare()
        let temporary = overlayTemporary(id)
        if exists(temporary) { try FileManager.default.removeItem(atPath: temporary) }
        try await runCommand(
            "qemu-img",
            ["create", "-q", "-f", "qcow2", "-b", Self.relativePath(base), "-F", "qcow2", (temporary as NSString).lastPathComponent],
            workingDirectory: root, timeout: quickTimeout)
        try Self.rename(temporary, to: imagePath(id))
    }

    /// A fresh session overlay on the image (absolute backing path: it lives only on this host).
    func createSessionOverlay(_ id: ObjectId) async throws {
        try makeWorkDirectory(id)
        let overlay = sessionOverlay(id)
        if exists(overlay) { try FileManager.default.removeItem(atPath: overlay) }
        try await runCommand(
            "qemu-img", ["create", "-q", "-f", "qcow2", "-b", imagePath(id), "-F", "qcow2", overlay], timeout: quickTimeout)
    }

    /// Commits the session overlay into the image, then removes it. Running it again after a
    /// crash halfway writes the same data again (idempotent); without an overlay it does nothing.
    func commitSession(_ id: ObjectId) async throws {
        let overlay = sessionOverlay(id)
        guard exists(overlay) else { return }
        // -d: do not empty the overlay (it is removed next); -t writeback: flushed before exit.
        try await runCommand("qemu-img", ["commit", "-q", "-d", "-t", "writeback", "-f", "qcow2", overlay], timeout: fileTimeout)
        try FileManager.default.removeItem(atPath: overlay)
    }

    /// Discards the session overlay and the config ISO (the image stays as it was).
    func discardSession(_ id: ObjectId) throws {
        for path in [sessionOverlay(id), configISO(id)] where exists(path) {
            try FileManager.default.removeItem(atPath: path)
        }
    }

    /// A config ISO (volume label `TALUSCFG`) holding `run.sh`: the test guest's boot hook runs it
    /// and powers off (images/README.md).
    func makeConfigISO(_ id: ObjectId, script: String) async throws {
        try makeWorkDirectory(id)
        let dir = workDirectory(id) + "/cfg"
        if exists(dir) { try FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(script.utf8).write(to: URL(fileURLWithPath: dir + "/run.sh"))
        try await runCommand(
            "genisoimage", ["-quiet", "-V", "TALUSCFG", "-r", "-J", "-o", configISO(id), dir], timeout: quickTimeout)
        try FileManager.default.removeItem(atPath: dir)
    }

    /// `file` of a finished image: sha256 and size of the stored file (for a derived image, of
    /// its overlay only), its virtual size; the file is flushed to disk first.
    func describe(_ id: ObjectId) async throws -> ImageFile {
        let path = imagePath(id)
        let (hex, size, virtualSize) = try await blockingIO {
            try Self.fsync(path)
            let virtualSize = try Self.qcow2VirtualSize(path)
            let (hex, size) = try sha256OfFile(path)
            return (hex, size, virtualSize)
        }
        return ImageFile(path: Self.relativePath(id), format: "qcow2", sha256: hex, size: size, virtualSize: virtualSize)
    }

    /// The virtual size in a qcow2 header (big-endian 64-bit at byte 24, after the magic
    /// `QFI\xfb`), read directly: this runs on every `ready`, a process costs more than the read.
    static func qcow2VirtualSize(_ path: String) throws -> Int64 {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 32)
        guard pread(fd, &header, 32, 0) == 32, header[0..<4] == [0x51, 0x46, 0x49, 0xFB] else {
            throw ImageFailure("\(path) is not a qcow2 image")
        }
        return header[24..<32].reduce(Int64(0)) { $0 << 8 | Int64($1) }
    }

    /// The last `lines` lines of a VM's console log, for error reasons; empty if there is none.
    func serialTail(_ id: ObjectId, lines: Int = 4) -> String {
        guard let data = FileManager.default.contents(atPath: serialLog(id)) else { return "" }
        let text = String(decoding: data.suffix(8192), as: UTF8.self)
        return text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }.suffix(lines).joined(separator: " | ")
    }

    /// The exit status the test guest's boot hook printed for `run.sh`
    /// (`TALUS-GUEST exit what=run.sh rc=N`), if any.
    func scriptExitStatus(_ id: ObjectId) -> Int? {
        guard let data = FileManager.default.contents(atPath: serialLog(id)) else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        guard let line = text.split(whereSeparator: \.isNewline).last(where: { $0.contains("TALUS-GUEST exit what=run.sh") }),
            let rc = line.split(separator: " ").first(where: { $0.hasPrefix("rc=") })
        else { return nil }
        return Int(rc.dropFirst(3))
    }

    // MARK: Helpers

    /// `rename(2)` then fsync of the directory, so the new name survives a crash.
    static func rename(_ from: String, to: String) throws {
        guard Foundation.rename(from, to) == 0 else { throw POSIXErrorWithPath(errno: errno, path: to) }
        let dir = open((to as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY)
        if dir >= 0 {
            _ = Foundation.fsync(dir)
            close(dir)
        }
    }

    static func fsync(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
        defer { close(fd) }
        guard Foundation.fsync(fd) == 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
    }

    static func int64(_ value: Any?) -> Int64? {
        switch value {
        case let n as Int64: n
        case let n as Int: Int64(n)
        case let n as NSNumber: n.int64Value
        default: nil
        }
    }

    /// An error for a reason text: a tool's stderr tail without the command line.
    static func shortError(_ error: any Error) -> String {
        if let command = error as? CommandError {
            if command.timedOut { return "timed out" }
            let text = command.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            return String((text.isEmpty ? "exit status \(command.status ?? -1)" : text).suffix(300))
        }
        return "\(error)"
    }
}
