// `talus login`, `os`, `code`, `slave`, `file`, `fileset`, `token`, `user`.

import ArgumentParser
import BSON
import Foundation
import NIOFoundationCompat
import TalusModel

struct Login: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Save the API URL and your token (in ~/.config/talus/config.json, mode 0600).",
        discussion: "The token comes from --token, TALUS_TOKEN, or is read from stdin (typed without echo on a terminal).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The API URL, e.g. http://talus.example:8420") var url: String
    @Option(help: "The token (prefer stdin: it stays out of your shell history).") var token: String?

    func run() async throws {
        guard url.hasPrefix("http://") || url.hasPrefix("https://") else { throw CLIError.usage("the URL must start with http:// or https://") }
        let secret = try token ?? ProcessInfo.processInfo.environment["TALUS_TOKEN"].flatMap { $0.isEmpty ? nil : $0 } ?? Self.readToken()
        let client = APIClient(baseURL: url, token: secret)
        defer { Task { await client.shutdown() } }
        let me: UserDocument
        do {
            me = try await client.get("/api/v1/users/me", as: UserDocument.self)
        } catch CLIError.refused(let status, let detail, _) where status == 403 {
            throw CLIError.refused(status: 403, detail: "\(detail) (slave tokens cannot use the CLI)", problems: [])
        }
        try CLIConfig(url: url, token: secret).save()
        if global.json { try Output.json(me) } else {
            Output.line("logged in to \(url) as \(me.name) (\(me.role.rawValue)); saved in \(CLIConfig.path)")
        }
    }

    static func readToken() throws -> String {
        let terminal = isatty(0) == 1
        if terminal { FileHandle.standardError.write(Data("Token: ".utf8)) }
        var saved = termios()
        if terminal {
            tcgetattr(0, &saved)
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(0, TCSANOW, &quiet)
        }
        let line = readLine(strippingNewline: true)
        if terminal {
            tcsetattr(0, TCSANOW, &saved)
            FileHandle.standardError.write(Data("\n".utf8))
        }
        guard let t = line?.trimmingCharacters(in: .whitespaces), !t.isEmpty else { throw CLIError.usage("no token given") }
        return t
    }
}

struct OSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "os", abstract: "Operating systems images run (admins create and delete).",
        subcommands: [Create.self, List.self, Show.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an os (admin).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name, e.g. win10-x64.") var name: String
        @Option(help: "linux, windows or other.") var family: String
        @Option(help: "Version.") var version: String?
        @Option(help: "Architecture.") var arch: String?
        @Option(help: "A tag (repeatable).") var tag: [String] = []

        func run() async throws {
            try await withAPI { client in
                var body: BSONDocument = ["name": .string(name), "family": .string(family)]
                if let version { body["version"] = .string(version) }
                if let arch { body["arch"] = .string(arch) }
                if !tag.isEmpty { body["tags"] = .array(tag.map { .string($0) }) }
                let os = try await client.json(.POST, "/api/v1/os", body: body, as: OSDocument.self)
                if global.json { try Output.json(os) } else { Output.line("os \(os.name) (\(os.id.hex)) created") }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List operating systems.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        func run() async throws { try await Listing.list(OSDocument.self, global, list) }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an os.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name or id.") var os: String
        func run() async throws { try await Listing.show(OSDocument.self, os, global) }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an os no image uses (admin).")
        @Argument(help: "Name or id.") var os: String
        func run() async throws {
            try await withAPI { client in
                _ = try await client.raw(.DELETE, "/api/v1/os/\(try await client.resolve(OSDocument.self, os))")
                Output.line("os \(os) deleted")
            }
        }
    }
}

extension OSDocument: ShownResource {
    static let apiPath = "os", what = "os", filterKeys: Set<String> = ["tag"]
    static let columns = ["ID", "NAME", "FAMILY", "VERSION", "ARCH"]
    var row: [String] { [id.hex, name, family.rawValue, version ?? "-", arch] }
    func printDetails(client: APIClient) {
        Output.fields([("id", id.hex), ("name", name), ("family", family.rawValue), ("version", version ?? "-"),
                       ("arch", arch), ("tags", tags.joined(separator: ", "))])
    }
}

struct SlaveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slave", abstract: "Hypervisor hosts running talus-slave.", subcommands: [List.self, Show.self, Drain.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List slaves.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        func run() async throws { try await Listing.list(SlaveDocument.self, global, list) }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a slave and the parts it runs.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Hostname or id.") var slave: String
        func run() async throws { try await Listing.show(SlaveDocument.self, slave, global) }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop giving a slave new parts (admin); running parts finish.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Hostname or id.") var slave: String

        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve(SlaveDocument.self, slave)
                let s = try await client.json(.PATCH, "/api/v1/slaves/\(id)", body: ["status": "drain"] as BSONDocument, as: SlaveDocument.self)
                if global.json { try Output.json(s) } else { Output.line("slave \(s.hostname): drain requested") }
            }
        }
    }
}

extension SlaveDocument: ShownResource {
    static let apiPath = "slaves", what = "slave", filterKeys: Set<String> = ["tag"]
    static var nameField: String? { "hostname" }
    static let columns = ["ID", "HOSTNAME", "STATUS", "RUNNING", "CAPACITY", "HEARTBEAT", "VERSION"]
    var row: [String] {
        [id.hex, hostname, status.name.rawValue, String(running.count), "\(capacity.vms) VMs, \(capacity.memoryMB) MiB", Format.ago(lastHeartbeat), version]
    }
    func printDetails(client: APIClient) {
        Output.fields([("id", id.hex), ("uuid", uuid), ("hostname", hostname), ("address", address ?? "-"),
                       ("status", status.name.rawValue), ("capacity", "\(capacity.vms) VMs, \(capacity.memoryMB) MiB"),
                       ("heartbeat", Format.ago(lastHeartbeat)), ("version", version)])
        for p in running { Output.line("  job \(p.job.hex) part \(p.idx) attempt \(p.attempt) since \(Format.ago(p.since))") }
    }
}

struct FileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "file", abstract: "Stored files: corpora, result files, crash inputs.",
        subcommands: [Upload.self, List.self, Get.self, Delete.self])

    struct Upload: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Store files (each gets an id; group them with talus fileset create).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Files.") var files: [String]
        @Option(help: "A tag (repeatable).") var tag: [String] = []

        func run() async throws {
            for f in files where !FileManager.default.isReadableFile(atPath: f) { throw CLIError.usage("cannot read \(f)") }
            try await withAPI { client in
                var stored: [StoredFileDocument] = []
                for f in files {
                    let name = URL(fileURLWithPath: f).lastPathComponent
                    let query = APIClient.encodeQuery([("filename", name)] + tag.map { ("tag", $0) })
                    let size = (try FileManager.default.attributesOfItem(atPath: f)[.size] as? NSNumber)?.int64Value ?? 0
                    let doc = try await client.storeFile(path: f, size: size, query: query)
                    stored.append(doc)
                    if !global.json { Output.line("\(doc.id.hex)  \(doc.filename)  \(Format.bytes(doc.length))  sha256 \(doc.metadata.sha256)") }
                }
                if global.json { try Output.json(stored) }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List stored files.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        @Option(help: "Only this file name.") var name: String?
        @Option(help: "Only files a job produced (name or id).") var job: String?
        @Flag(help: "Only mine.") var mine = false

        func run() async throws {
            try await Listing.list(StoredFileDocument.self, global, list,
                                   filters: [.field("filename", name), .reference("job", job, JobDocument.self), .mine(mine)])
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Download a stored file byte-exact (checked against its sha256).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "File id.") var id: String
        @Option(name: .shortAndLong, help: "Where to write it (`-`: stdout; default: its name in the current directory).") var output: String?

        func run() async throws {
            try await withAPI { client in
                let meta = try await client.get("/api/v1/files/\(id)", as: StoredFileDocument.self)
                let dest = output ?? String(meta.filename.map { $0 == "/" ? "_" : $0 })
                let (bytes, sha) = try await client.download("/api/v1/files/\(id)/content", to: dest)
                if dest == "-" { return }
                struct Got: Encodable { var path: String; var bytes: Int64; var sha256: String }
                if global.json { try Output.json(Got(path: dest, bytes: bytes, sha256: sha)) } else {
                    Output.line("\(dest): \(Format.bytes(bytes)), sha256 \(sha)")
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a stored file (not while a fileset holds it).")
        @Argument(help: "File id.") var id: String
        func run() async throws {
            try await withAPI { client in
                _ = try await client.raw(.DELETE, "/api/v1/files/\(id)")
                Output.line("file \(id) deleted")
            }
        }
    }
}

extension StoredFileDocument: ListedResource {
    static let apiPath = "files", what = "file", filterKeys: Set<String> = ["filename", "job", "owner", "tag"]
    static var nameField: String? { nil }
    static let columns = ["ID", "NAME", "SIZE", "UPLOADED", "SHA256"]
    var row: [String] { [id.hex, filename, Format.bytes(length), Format.date(uploadDate), String(metadata.sha256.prefix(16))] }
}

extension APIClient {
    /// POSTs the file at `path` as a stored file.
    func storeFile(path: String, size: Int64, query: String) async throws -> StoredFileDocument {
        var r = request(.POST, "/api/v1/files?" + query)
        r.headers.add(name: "Content-Type", value: "application/octet-stream")
        let body = try await sendFile(r, path: path, offset: 0, size: size, progress: nil)
        return try TalusJSON.decoder().decode(StoredFileDocument.self, from: body)
    }
}

struct FileSetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fileset", abstract: "Named groups of stored files (corpora) for fileset parameters.",
        subcommands: [Create.self, List.self, Show.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a fileset from stored file ids.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name.") var name: String
        @Argument(help: "Stored file ids (talus file upload prints them).") var files: [String] = []
        @Option(help: "Description.") var description: String?
        @Option(help: "A tag (repeatable).") var tag: [String] = []

        func run() async throws {
            try await withAPI { client in
                var body: BSONDocument = ["name": .string(name), "files": .array(files.map { .string($0) })]
                if let description { body["description"] = .string(description) }
                if !tag.isEmpty { body["tags"] = .array(tag.map { .string($0) }) }
                let set = try await client.json(.POST, "/api/v1/filesets", body: body, as: FileSetDocument.self)
                if global.json { try Output.json(set) } else { Output.line("fileset \(set.name) (\(set.id.hex)): \(set.files.count) files") }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List filesets.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        func run() async throws { try await Listing.list(FileSetDocument.self, global, list) }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a fileset and its files.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name or id.") var fileset: String
        func run() async throws { try await Listing.show(FileSetDocument.self, fileset, global) }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a fileset (its files stay).")
        @Argument(help: "Name or id.") var fileset: String
        func run() async throws {
            try await withAPI { client in
                _ = try await client.raw(.DELETE, "/api/v1/filesets/\(try await client.resolve(FileSetDocument.self, fileset))")
                Output.line("fileset \(fileset) deleted")
            }
        }
    }
}

extension FileSetDocument: ShownResource {
    static let apiPath = "filesets", what = "fileset", filterKeys: Set<String> = ["tag"]
    static let columns = ["ID", "NAME", "FILES", "SIZE", "CREATED"]
    var row: [String] { [id.hex, name, String(files.count), Format.bytes(files.reduce(0) { $0 + $1.size }), Format.date(created)] }
    func printDetails(client: APIClient) {
        Output.fields([("id", id.hex), ("name", name), ("description", description ?? "-"), ("files", String(files.count)),
                       ("owner", owner?.hex ?? "-"), ("created", Format.date(created))])
        Output.table(["FILE", "NAME", "SIZE", "SHA256"], files.map { [$0.id.hex, $0.name, Format.bytes($0.size), String($0.sha256.prefix(16))] })
    }
}

/// A token as the API shows it (`token` only right after creation).
struct TokenInfo: Codable {
    var id: String
    var user: String
    var name: String
    var prefix: String
    var expires: Date?
    var lastUsed: Date?
    var created: Date
    var tags: [String]
    var token: String?
    enum CodingKeys: String, CodingKey {
        case id = "_id", user, name, prefix, expires
        case lastUsed = "last_used"
        case created, tags, token
    }
}

extension TokenInfo: ListedResource {
    /// The tokens endpoint takes no tag filter: `--tag` is not sent.
    static let apiPath = "tokens", what = "token", filterKeys: Set<String> = []
    static var nameField: String? { nil }
    static let columns = ["ID", "NAME", "USER", "PREFIX", "EXPIRES", "LAST USED"]
    var row: [String] { [id, name, user, prefix + "…", Format.date(expires), Format.ago(lastUsed)] }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "API tokens (the secret is shown once, at creation).",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token (for yourself, or --user for another user, admin only).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "A name to recognise it by.") var name: String
        @Option(help: "The user (name or id; admins only).") var user: String?
        @Option(help: "Expire after this many days.") var expiresDays: Int?

        func run() async throws {
            try await withAPI { client in
                var body: BSONDocument = ["name": .string(name)]
                if let user { body["user"] = .string(try await client.resolve(UserDocument.self, user)) }
                if let expiresDays { body["expires_in_days"] = .int64(Int64(expiresDays)) }
                let t = try await client.json(.POST, "/api/v1/tokens", body: body, as: TokenInfo.self)
                if global.json { try Output.json(t); return }
                Output.line("token \(t.name) (\(t.id)). The secret, shown only this once:\n\n  \(t.token ?? "?")\n")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tokens (yours; admins see all).")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        func run() async throws { try await Listing.list(TokenInfo.self, global, list) }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token at once.")
        @Argument(help: "Token id.") var id: String
        func run() async throws {
            try await withAPI { client in
                _ = try await client.raw(.DELETE, "/api/v1/tokens/\(id)")
                Output.line("token \(id) revoked")
            }
        }
    }
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user", abstract: "Users (admin).", subcommands: [Create.self, List.self, Show.self, Update.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a user (then give them a token: talus token create NAME --user USER).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name.") var name: String
        @Option(help: "admin, user or slave.") var role: String = "user"

        func run() async throws {
            try await withAPI { client in
                let u = try await client.json(.POST, "/api/v1/users", body: ["name": .string(name), "role": .string(role)] as BSONDocument,
                                              as: UserDocument.self)
                if global.json { try Output.json(u) } else { Output.line("user \(u.name) (\(u.id.hex)), role \(u.role.rawValue)") }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List users.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        func run() async throws { try await Listing.list(UserDocument.self, global, list) }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a user (`me` for yourself).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name, id or me.") var user: String
        func run() async throws { try await Listing.show(UserDocument.self, user, global) }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a user's role, or disable/enable them.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name or id.") var user: String
        @Option(help: "admin, user or slave.") var role: String?
        @Flag(help: "Disable (their tokens stop working).") var disable = false
        @Flag(help: "Enable again.") var enable = false

        func run() async throws {
            if disable && enable { throw CLIError.usage("--disable or --enable, not both") }
            try await withAPI { client in
                var body: BSONDocument = [:]
                if let role { body["role"] = .string(role) }
                if disable { body["disabled"] = true }
                if enable { body["disabled"] = false }
                let u = try await client.json(.PATCH, "/api/v1/users/\(try await client.resolve(UserDocument.self, user))", body: body, as: UserDocument.self)
                if global.json { try Output.json(u) } else { Output.line("user \(u.name): role \(u.role.rawValue)\(u.disabled ? ", disabled" : "")") }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a user and their tokens.")
        @Argument(help: "Name or id.") var user: String
        func run() async throws {
            try await withAPI { client in
                _ = try await client.raw(.DELETE, "/api/v1/users/\(try await client.resolve(UserDocument.self, user))")
                Output.line("user \(user) deleted")
            }
        }
    }
}

extension UserDocument: ShownResource {
    static let apiPath = "users", what = "user", filterKeys: Set<String> = ["tag"]
    static let columns = ["ID", "NAME", "ROLE", "DISABLED", "CREATED"]
    var row: [String] { [id.hex, name, role.rawValue, disabled ? "yes" : "no", Format.date(created)] }
    func printDetails(client: APIClient) {
        Output.fields([("id", id.hex), ("name", name), ("role", role.rawValue), ("disabled", disabled ? "yes" : "no"),
                       ("created", Format.date(created))])
    }
    /// `me` is the caller.
    static func path(of argument: String, client: APIClient) async throws -> String {
        argument == "me" ? "/api/v1/users/me" : "/api/v1/users/\(try await client.resolve(Self.self, argument))"
    }
}
