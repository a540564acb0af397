// `talus image …` and `talus upload …`.

import ArgumentParser
import BSON
import Dispatch
import Foundation
import Synchronization
import TalusModel

/// Runs `body`; Ctrl-C cancels it and ends the command with `message` (exit 130).
func interruptible<T: Sendable>(_ message: @escaping @Sendable () -> String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    signal(SIGINT, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
    let interrupted = Atomic<Bool>(false)
    let task = Task { try await body() }
    source.setEventHandler {
        interrupted.store(true, ordering: .sequentiallyConsistent)
        task.cancel()
    }
    source.resume()
    defer {
        source.cancel()
        signal(SIGINT, SIG_DFL)
    }
    do {
        return try await task.value
    } catch {
        if interrupted.load(ordering: .sequentiallyConsistent) { throw CLIError.interrupted(message()) }
        throw error
    }
}

/// An event of `image import --json` / `image show --wait --json` (JSON Lines).
struct ImageEvent: Encodable {
    var event: String
    var image: String?
    var upload: UploadDocument?
    var vnc: VNCInfo?
    var status: String?
    var document: ImageDocument?
}

enum ImageWait {
    /// Polls image `id` until it is ready (returned) or in error (thrown), printing the VNC
    /// details once they appear and each status change.
    static func wait(_ client: APIClient, id: String, json: Bool, interval: Duration) async throws -> ImageDocument {
        var shownVNC: VNCInfo?
        var last: ImageState?
        while true {
            let image = try await client.get("/api/v1/images/\(id)", as: ImageDocument.self)
            if image.status.name != last {
                last = image.status.name
                if json {
                    try Output.jsonLine(ImageEvent(event: "status", image: id, status: image.status.name.rawValue))
                } else {
                    Output.note("image \(image.name): \(image.status.name.rawValue)" + (image.status.reason.map { " (\($0))" } ?? ""))
                }
            }
            if let vnc = image.status.vnc, vnc != shownVNC {
                shownVNC = vnc
                if json {
                    try Output.jsonLine(ImageEvent(event: "vnc", image: id, vnc: vnc))
                } else {
                    printVNC(image, vnc)
                }
            }
            switch image.status.name {
            case .ready: return image
            case .error:
                throw CLIError.ended("image \(image.name) failed: \(image.status.reason ?? "no reason given")")
            case .delete, .deleting:
                throw CLIError.ended("image \(image.name) is being deleted")
            default: break
            }
            try await Task.sleep(for: interval)
        }
    }

    static func printVNC(_ image: ImageDocument, _ vnc: VNCInfo) {
        let what = image.status.name == .importing ? "import" : (image.status.name == .creating ? "create" : "configure")
        Output.line("The \(what) VM of image \(image.name) is up. Connect a VNC viewer to:")
        Output.line("  address:  \(vnc.host):\(vnc.port)   (vnc://\(vnc.host):\(vnc.port))")
        Output.line("  password: \(vnc.password)")
        if let e = vnc.expires { Output.line("  session ends: \(Format.date(e)) UTC") }
        Output.line("Set the guest up, then shut it down from inside: Talus saves the image when it powers off.")
    }
}

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Import, derive, configure and delete VM images.",
        subcommands: [Import.self, Create.self, Configure.self, Delete.self, List.self, Show.self])

    /// A valid image name from a file name (`Win 10.vmdk` → `Win-10`).
    static func defaultName(_ path: String) -> String {
        let stem = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        let cleaned = String(stem.map { $0.isLetter || $0.isNumber || "._-".contains($0) ? $0 : "-" }.drop { !$0.isLetter && !$0.isNumber })
        return cleaned.isEmpty ? "image" : String(cleaned.prefix(100))
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Upload a disk image and import it (raw, qcow2, vmdk, vdi, vhdx).",
            discussion: """
                Streams FILE with a progress bar, creates the image, prints the VNC address and password as soon \
                as the import VM is up, and waits until the image is ready. Ctrl-C while waiting leaves the import \
                running (follow it with `talus image show ID --wait`). With --json, stdout gets JSON Lines events \
                (uploaded, status, vnc, ready).
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The disk image file.") var file: String?
        @Option(help: "Operating system (name or id).") var os: String
        @Option(help: "Image name (default: from the file name).") var name: String?
        @Option(help: "Import an upload made earlier (talus upload put) instead of FILE.") var upload: String?
        @Option(help: "Description.") var description: String?
        @Option(help: "A tag (repeatable).") var tag: [String] = []
        @Option(help: "CPUs of the import VM.") var cpus: Int?
        @Option(help: "Memory of the import VM, MiB.") var memoryMb: Int?
        @Flag(help: "Return once the image is requested; do not wait.") var noWait = false
        @Option(help: "Seconds between status checks.") var interval: Double = 1

        func validate() throws {
            if (file == nil) == (upload == nil) { throw ValidationError("give FILE or --upload ID (not both)") }
            if let file, !FileManager.default.isReadableFile(atPath: file) { throw ValidationError("cannot read \(file)") }
        }

        func run() async throws {
            let json = global.json
            try await withAPI { client in
                let osId = try await client.resolve(OSDocument.self, os)
                var uploadId = upload
                if let file {
                    let progress = Progress(label: "uploading \(URL(fileURLWithPath: file).lastPathComponent)")
                    let done = try await interruptible({ "upload interrupted: nothing was imported (the partial upload expires by itself); run the command again" }) {
                        try await client.upload(path: file, progress: progress)
                    }
                    uploadId = done.id.hex
                    if json { try Output.jsonLine(ImageEvent(event: "uploaded", upload: done)) } else {
                        Output.note("uploaded \(Format.bytes(done.size)), sha256 \(done.sha256 ?? "?")")
                    }
                }
                var body: [String: BSONValue] = [
                    "name": .string(name ?? file.map(ImageCommand.defaultName) ?? "image"),
                    "os": .string(osId), "upload": .string(uploadId!), "interactive": true,
                ]
                if let description { body["description"] = .string(description) }
                if !tag.isEmpty { body["tags"] = .array(tag.map { .string($0) }) }
                if cpus != nil || memoryMb != nil {
                    var vm = BSONDocument()
                    if let cpus { vm["cpus"] = .int64(Int64(cpus)) }
                    if let memoryMb { vm["memory_mb"] = .int64(Int64(memoryMb)) }
                    body["vm"] = .document(vm)
                }
                let image = try await client.json(.POST, "/api/v1/images", body: BSONDocument(body.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }), as: ImageDocument.self)
                let id = image.id.hex
                if noWait {
                    if json { try Output.jsonLine(ImageEvent(event: "requested", image: id, document: image)) } else {
                        Output.line("image \(image.name) (\(id)) requested; follow it with: talus image show \(id) --wait")
                    }
                    return
                }
                if !json { Output.note("image \(image.name) (\(id)) requested; waiting for the import VM…") }
                let ready = try await interruptible({ "stopped waiting; the import continues on the server. Follow it with: talus image show \(id) --wait" }) {
                    try await ImageWait.wait(client, id: id, json: json, interval: .milliseconds(Int64(interval * 1000)))
                }
                if json { try Output.jsonLine(ImageEvent(event: "ready", image: id, document: ready)) } else {
                    Output.line("image \(ready.name) is ready (\(ready.file?.size.map(Format.bytes) ?? "?"), sha256 \(ready.file?.sha256 ?? "?"))")
                }
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Derive a new image from a ready base image (a qcow2 overlay).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The new image's name.") var name: String
        @Option(help: "The base image (name or id).") var base: String
        @Flag(help: "Boot it with a VNC session to change it before it is saved.") var interactive = false
        @Option(help: "Description.") var description: String?
        @Option(help: "A tag (repeatable).") var tag: [String] = []
        @Flag(help: "Do not wait until it is ready.") var noWait = false

        func run() async throws {
            try await withAPI { client in
                let baseId = try await client.resolve(ImageDocument.self, base)
                var body: BSONDocument = ["name": .string(name), "base": .string(baseId), "interactive": .bool(interactive)]
                if let description { body["description"] = .string(description) }
                if !tag.isEmpty { body["tags"] = .array(tag.map { .string($0) }) }
                let image = try await client.json(.POST, "/api/v1/images", body: body, as: ImageDocument.self)
                try await ImageCommand.finish(client, image, json: global.json, wait: !noWait, verb: "create")
            }
        }
    }

    struct Configure: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Boot an image to change it (VNC session by default).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The image (name or id).") var image: String
        @Flag(help: "No VNC session: boot, wait for the guest to power off by itself, save.") var noInteractive = false
        @Option(help: "Session length in seconds (bounded by the master).") var sessionSeconds: Int?
        @Flag(help: "Do not wait until it is ready.") var noWait = false

        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve(ImageDocument.self, image)
                var body: BSONDocument = ["status": "configure", "interactive": .bool(!noInteractive)]
                if let sessionSeconds { body["session_seconds"] = .int64(Int64(sessionSeconds)) }
                let doc = try await client.json(.PATCH, "/api/v1/images/\(id)", body: body, as: ImageDocument.self)
                try await ImageCommand.finish(client, doc, json: global.json, wait: !noWait, verb: "configure")
            }
        }
    }

    /// Prints the requested image, then waits for it unless told not to.
    static func finish(_ client: APIClient, _ image: ImageDocument, json: Bool, wait: Bool, verb: String) async throws {
        let id = image.id.hex
        guard wait else {
            if json { try Output.json(image) } else { Output.line("image \(image.name) (\(id)): \(verb) requested; follow it with: talus image show \(id) --wait") }
            return
        }
        if !json { Output.note("image \(image.name) (\(id)): \(verb) requested; waiting…") }
        let ready = try await interruptible({ "stopped waiting; the work continues on the server. Follow it with: talus image show \(id) --wait" }) {
            try await ImageWait.wait(client, id: id, json: json, interval: .seconds(1))
        }
        if json { try Output.jsonLine(ImageEvent(event: "ready", image: id, document: ready)) } else { Output.line("image \(ready.name) is ready") }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an image (the master removes its file, then the image).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The image (name or id).") var image: String
        @Flag(help: "Wait until the image is gone.") var wait = false

        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve(ImageDocument.self, image)
                let doc = try await client.json(.DELETE, "/api/v1/images/\(id)", as: ImageDocument.self)
                if wait {
                    try await interruptible({ "stopped waiting; the deletion continues" }) {
                        while true {
                            do {
                                let current = try await client.get("/api/v1/images/\(id)", as: ImageDocument.self)
                                if current.status.name == .error {
                                    throw CLIError.ended("deleting image \(current.name) failed: \(current.status.reason ?? "no reason given")")
                                }
                                if current.status.name == .ready {
                                    throw CLIError.ended("deleting image \(current.name) was refused: \(current.status.reason ?? "no reason given")")
                                }
                            } catch CLIError.refused(let status, _, _) where status == 404 {
                                return
                            }
                            try await Task.sleep(for: .seconds(1))
                        }
                    }
                }
                if global.json { try Output.json(doc) } else {
                    Output.line(wait ? "image \(doc.name) deleted" : "image \(doc.name) (\(id)): delete requested")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List images.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        @Option(help: "Only this status.") var status: String?
        @Option(help: "Only this os (name or id).") var os: String?
        @Flag(help: "Only mine.") var mine = false

        func run() async throws {
            try await Listing.list(ImageDocument.self, global, list,
                                   filters: [.field("status", status), .reference("os", os, OSDocument.self), .mine(mine)])
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an image (with --wait: follow it until it is ready).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The image (name or id).") var image: String
        @Flag(help: "Wait until the image is ready, printing VNC details when a VM is up.") var wait = false

        func run() async throws {
            guard wait else { return try await Listing.show(ImageDocument.self, image, global) }
            try await withAPI { client in
                let id = try await client.resolve(ImageDocument.self, image)
                _ = try await client.get("/api/v1/images/\(id)", as: ImageDocument.self)
                let doc = try await interruptible({ "stopped waiting; the work continues on the server" }) {
                    try await ImageWait.wait(client, id: id, json: global.json, interval: .seconds(1))
                }
                if global.json { try Output.jsonLine(ImageEvent(event: "ready", image: id, document: doc)); return }
                try await Listing.present(doc, global, client: client)
            }
        }
    }
}

extension ImageDocument: ShownResource {
    static let apiPath = "images", what = "image", filterKeys: Set<String> = ["status", "os", "owner", "tag"]
    static let columns = ["ID", "NAME", "STATUS", "OS", "BASE", "SIZE", "UPDATED"]
    /// Without the names of its os and base (see ``printTable(_:client:)``).
    var row: [String] { row(osNames: [:], names: [:]) }

    func row(osNames: [ObjectId: String], names: [ObjectId: String]) -> [String] {
        [id.hex, name, status.name.rawValue, osNames[os] ?? os.hex, base.map { names[$0] ?? $0.hex } ?? "-",
         file?.size.map(Format.bytes) ?? "-", Format.ago(updated)]
    }

    /// The table names each image's os and base.
    static func printTable(_ items: [ImageDocument], client: APIClient) async throws {
        let oses = try await client.list("/api/v1/os", query: [], limit: nil, as: OSDocument.self)
        let osNames = Dictionary(oses.map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
        let names = Dictionary(items.map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
        Output.table(columns, items.map { $0.row(osNames: osNames, names: names) })
    }

    func printDetails(client: APIClient) async throws {
        let os = try? await client.get("/api/v1/os/\(self.os.hex)", as: OSDocument.self)
        var rows: [(String, String)] = [
            ("id", id.hex), ("name", name),
            ("status", status.name.rawValue + (status.reason.map { " — \($0)" } ?? "") + " (since \(Format.date(status.since)))"),
            ("os", os.map { "\($0.name) (\(self.os.hex))" } ?? self.os.hex), ("base", base?.hex ?? "-"),
        ]
        if let d = description { rows.append(("description", d)) }
        if let f = file {
            rows.append(("file", "\(f.path), \(f.size.map(Format.bytes) ?? "?") on disk, \(f.virtualSize.map(Format.bytes) ?? "?") virtual"))
            rows.append(("sha256", f.sha256 ?? "-"))
        }
        if let deadline = status.deadline { rows.append(("deadline", Format.date(deadline) + " UTC")) }
        if let vnc = status.vnc {
            rows.append(("vnc", "\(vnc.host):\(vnc.port) (vnc://\(vnc.host):\(vnc.port))"))
            rows.append(("vnc password", vnc.password))
        }
        if let vm { rows.append(("vm", "\(vm.cpus) CPU, \(vm.memoryMB) MiB")) } else { rows.append(("vm", "master defaults")) }
        rows += [("owner", owner?.hex ?? "-"), ("created", Format.date(created)), ("updated", Format.date(updated)),
                 ("tags", tags.joined(separator: ", "))]
        Output.fields(rows)
    }
}

struct UploadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upload", abstract: "Upload files for a later import (resumable).",
        subcommands: [Put.self, List.self, Delete.self])

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Upload FILE; prints the upload (import it with `talus image import --upload ID`).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The file.") var file: String

        func run() async throws {
            guard FileManager.default.isReadableFile(atPath: file) else { throw CLIError.usage("cannot read \(file)") }
            try await withAPI { client in
                let progress = Progress(label: "uploading \(URL(fileURLWithPath: file).lastPathComponent)")
                let upload = try await interruptible({ "upload interrupted; run the command again" }) {
                    try await client.upload(path: file, progress: progress)
                }
                if global.json { try Output.json(upload) } else {
                    Output.line("upload \(upload.id.hex): \(Format.bytes(upload.size)), sha256 \(upload.sha256 ?? "?")")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List your uploads.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        func run() async throws { try await Listing.list(UploadDocument.self, global, list) }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an upload and its file.")
        @Argument(help: "The upload id.") var id: String
        func run() async throws {
            try await withAPI { client in
                _ = try await client.raw(.DELETE, "/api/v1/uploads/\(id)")
                Output.line("upload \(id) deleted")
            }
        }
    }
}

extension UploadDocument: ListedResource {
    static let apiPath = "uploads", what = "upload", filterKeys: Set<String> = ["tag"]
    static var nameField: String? { nil }
    static let columns = ["ID", "FILE", "SIZE", "COMPLETE", "EXPIRES"]
    var row: [String] {
        [id.hex, filename, "\(Format.bytes(size)) / \(Format.bytes(expectedSize ?? size))", complete ? "yes" : "no", Format.date(expires)]
    }
}
