// A whole Talus installation for the end-to-end tests, made of the built executables as separate
// processes: talus-api, talus-master and two talus-slave processes (separate cache and run
// directories, one libvirtd), a code repository made by talus-code, and a logged-in `talus` CLI.
// Everything is private to one cluster: a database of its own on the shared SecantusDB, a vhost
// of its own on the shared RabbitMQ (the daemons use the real exchange and queue names), and
// libvirt domains found by their owner tags (slave UUIDs chosen here, image ids of this database).
// `shutDown()` removes all of it, whether the test passed or not.

import BSON
import Foundation
import Libvirt
import Mongo
import TalusCore
import TalusModel
import TalusTestSupport

/// Writes a line to stderr (phase timings and progress of the long scenarios).
func note(_ text: String) {
    FileHandle.standardError.write(Data("[e2e] \(text)\n".utf8))
}

/// Seconds of a duration, for the timings printed.
func seconds(_ d: Duration) -> String {
    String(format: "%.1f s", Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
}

/// A talus-slave process with its own id, cache and run directories.
final class SlaveNode: @unchecked Sendable {
    // `process` is replaced only by start(), which the single test driving the cluster calls.
    let name: String
    let id = UUID().uuidString.lowercased()
    let dir: String
    let config: String
    var process: TestProcess?
    private var starts = 0

    init(name: String, dir: String, yaml: String) throws {
        self.name = name
        self.dir = dir
        config = dir + "/slave.yaml"
        try FileManager.default.createDirectory(atPath: dir + "/cache", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/run", withIntermediateDirectories: true)
        try (id + "\n").write(toFile: dir + "/slave-id", atomically: true, encoding: .utf8)
        try yaml.write(toFile: config, atomically: true, encoding: .utf8)
    }

    /// The owner tag prefix of this slave's part domains.
    var ownerPrefix: String { "part:\(id):" }

    func start() throws {
        starts += 1
        process = try TestProcess(try TestEnvironment.executable("talus-slave"), ["serve", "--config", config],
                                  logPath: dir + "/slave-\(starts).log")
    }
}

/// One Talus installation of built executables.
final class Cluster: @unchecked Sendable {
    // Set up by start() and read by the one test that drives the cluster.
    let dir: String
    let database: String
    let client: MongoClient
    let db: MongoDatabase
    let libvirt: LibvirtConnection
    let guest: GuestArtifacts
    var vhost: PrivateVhost?
    let apiPort: Int
    var apiURL: String { "http://127.0.0.1:\(apiPort)" }
    var api: TestProcess?
    var master: TestProcess?
    var slaves: [SlaveNode] = []
    /// HOME of the logged-in CLI.
    let home: String
    var adminToken = ""
    var slaveToken = ""

    private init(dir: String, client: MongoClient, libvirt: LibvirtConnection, guest: GuestArtifacts) throws {
        self.dir = dir
        database = uniqueName("e2e")
        self.client = client
        db = client.database(database)
        self.libvirt = libvirt
        self.guest = guest
        apiPort = try freeLoopbackPort()
        home = dir + "/home"
    }

    // MARK: Configuration files

    var mongoURI: String { (try? TestEnvironment.mongoURI()) ?? "" }

    func apiYAML() -> String {
        """
        http:
          listen: "127.0.0.1:\(apiPort)"
        mongo:
          uri: "\(mongoURI)"
          database: "\(database)"
        storage:
          uploads: "\(dir)/uploads"
          images: "\(dir)/images"
        code:
          repository: "\(dir)/code.git"
          bundle_cache: "\(dir)/bundles"
        auth:
          cache_ttl: "1s"

        """
    }

    func masterYAML(vhost: PrivateVhost) throws -> String {
        """
        mongo:
          uri: "\(mongoURI)"
          database: "\(database)"
        amqp:
          url: "\(vhost.url)"
        metrics:
          listen: "127.0.0.1:0"
        images:
          store: "\(dir)/images"
          vm_memory_mb: 256
          vm_cpus: 1
          boot_timeout: "5m"
        storage:
          uploads: "\(dir)/uploads"
        libvirt:
          uri: "\(try TestEnvironment.libvirtURI())"
          domain_type: "qemu"
        jobs:
          window: 0
        slaves:
          offline_after: "6s"

        """
    }

    func slaveYAML(_ sdir: String, vhost: PrivateVhost) throws -> String {
        """
        slave:
          id_file: "\(sdir)/slave-id"
          vms: 1
          memory_mb: 1024
        amqp:
          url: "\(vhost.url)"
        api:
          url: "\(apiURL)"
          token: "\(slaveToken)"
        cache:
          dir: "\(sdir)/cache"
        run:
          dir: "\(sdir)/run"
        agent:
          path: "\(guest.agent)"
        libvirt:
          uri: "\(try TestEnvironment.libvirtURI())"
          domain_type: "qemu"
        guest:
          boot_timeout: "240s"
        heartbeat:
          interval: "1s"
        shutdown:
          grace: "5s"
        metrics:
          listen: ""

        """
    }

    var codeYAML: String {
        """
        mongo:
          uri: "\(mongoURI)"
          database: "\(database)"
        code:
          repository: "\(dir)/code.git"
          bundle_cache: "\(dir)/bundles"

        """
    }

    // MARK: Start

    /// Builds the guest artifacts, then starts API, master and two slaves with an admin and a
    /// slave token. On failure everything started so far is removed again.
    static func start() async throws -> Cluster {
        let guest = try await GuestArtifacts.shared()
        let dir = try TestEnvironment.scratchDirectory("e2e")
        // libvirt-qemu must traverse to the image store and the slave caches.
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir)
        let c = try Cluster(dir: dir, client: try MongoClient(uri: try TestEnvironment.mongoURI()),
                            libvirt: try await LibvirtConnection(uri: try TestEnvironment.libvirtURI()), guest: guest)
        do {
            try await c.boot()
        } catch {
            note("cluster start failed: \(error)\n\(c.logTails())")
            await c.shutDown(keepFiles: true)
            throw error
        }
        return c
    }

    private func boot() async throws {
        let fm = FileManager.default
        for sub in ["uploads", "images", "bundles", "home"] {
            try fm.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true)
        }
        let vhost = try await PrivateVhost.create("e2e")
        self.vhost = vhost
        try apiYAML().write(toFile: dir + "/api.yaml", atomically: true, encoding: .utf8)
        try masterYAML(vhost: vhost).write(toFile: dir + "/master.yaml", atomically: true, encoding: .utf8)
        try codeYAML.write(toFile: dir + "/code.yaml", atomically: true, encoding: .utf8)

        // The first admin, then the API.
        let bootstrap = try await runCommand(try TestEnvironment.executable("talus-api"),
                                             ["bootstrap-admin", "--config", dir + "/api.yaml", "--name", "e2e-admin", "--json"],
                                             timeout: .seconds(60))
        adminToken = try Self.token(in: bootstrap.stdout)
        let api = try TestProcess(try TestEnvironment.executable("talus-api"), ["serve", "--config", dir + "/api.yaml"],
                                  logPath: dir + "/api.log")
        self.api = api
        let port = apiPort
        try await waitUntil("talus-api to listen on \(port)", timeout: .seconds(60)) {
            guard api.isRunning else { throw TestSupportError("talus-api exited: \(api.logTail())") }
            return isListening(port: port)
        }

        // The CLI logs in as the admin and makes the slaves' user and token.
        let login = try await cli(["login", apiURL], stdin: adminToken + "\n")
        guard login.status == 0 else { throw TestSupportError("talus login: \(login)") }
        try await ok(["user", "create", "e2e-slaves", "--role", "slave", "--json"])
        slaveToken = try Self.token(in: try await ok(["token", "create", "slaves", "--user", "e2e-slaves", "--json"]).stdout)

        // Slaves first: they declare the topology before the master does, and both must agree.
        for name in ["slave-a", "slave-b"] {
            let sdir = dir + "/" + name
            try fm.createDirectory(atPath: sdir, withIntermediateDirectories: true)
            let node = try SlaveNode(name: name, dir: sdir, yaml: try slaveYAML(sdir, vhost: vhost))
            slaves.append(node)
            try node.start()
        }
        try await waitUntil("the slaves to declare the events queue", timeout: .seconds(60), interval: .milliseconds(200)) {
            for node in self.slaves where node.process?.isRunning == false {
                throw TestSupportError("\(node.name) exited: \(node.process?.logTail() ?? "")")
            }
            // A slave logs "serving" once its topology is declared and it consumes.
            return self.slaves.allSatisfy { $0.process?.logTail(1 << 20).contains("[TalusSlave] serving") == true }
        }
        master = try TestProcess(try TestEnvironment.executable("talus-master"), ["serve", "--config", dir + "/master.yaml"],
                                 logPath: dir + "/master.log")
        for node in slaves { try await waitOnline(node) }
    }

    /// The secret token in the JSON a token-creating command printed.
    static func token(in json: String) throws -> String {
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8))
        func find(_ value: Any) -> String? {
            if let s = value as? String, s.hasPrefix("talus_") { return s }
            if let d = value as? [String: Any] {
                if let t = d["token"] as? String { return t }
                for v in d.values { if let s = find(v) { return s } }
            }
            return nil
        }
        guard let token = find(object) else { throw TestSupportError("no token in \(json)") }
        return token
    }

    /// Waits until the master lists `node` as online (its heartbeats arrive).
    func waitOnline(_ node: SlaveNode, timeout: Duration = .seconds(90)) async throws {
        try await waitUntil("\(node.name) online at the master", timeout: timeout, interval: .milliseconds(200)) {
            try self.checkDaemons()
            return try await self.db.collection("slaves").countDocuments(["uuid": .string(node.id), "status.name": "online"]) == 1
        }
    }

    /// Throws when a daemon that should run exited.
    func checkDaemons() throws {
        for (name, p) in [("talus-api", api), ("talus-master", master)] where p?.isRunning == false {
            throw TestSupportError("\(name) exited: \(p?.logTail() ?? "")")
        }
    }

    // MARK: The CLI

    /// Runs `talus` as the logged-in admin.
    func cli(_ arguments: [String], stdin: String? = nil, timeout: Duration = .seconds(120)) async throws -> CLIRun {
        try await runTalus(arguments, env: ["HOME": home, "XDG_CONFIG_HOME": ""], stdin: stdin, timeout: timeout)
    }

    /// Runs `talus` and throws unless it exits 0.
    @discardableResult
    func ok(_ arguments: [String], timeout: Duration = .seconds(120)) async throws -> CLIRun {
        let r = try await cli(arguments, timeout: timeout)
        guard r.status == 0 else { throw TestSupportError("talus \(arguments.joined(separator: " ")): \(r)") }
        return r
    }

    /// `talus … --json`, decoded as `T` (the CLI prints the model types with TalusJSON).
    func json<T: Decodable>(_ arguments: [String], as type: T.Type) async throws -> T {
        let r = try await ok(arguments + ["--json"])
        return try TalusJSON.decoder().decode(T.self, from: Data(r.stdout.utf8))
    }

    func job(_ id: String) async throws -> JobDocument {
        try await json(["job", "show", id], as: JobDocument.self)
    }

    // MARK: libvirt

    /// Names of the domains of this cluster's slaves whose owner tag contains `filter` (a job id).
    func partDomains(containing filter: String = "") async throws -> [String] {
        var names: [String] = []
        for node in slaves {
            names += try await libvirt.listDomains(ownerPrefix: node.ownerPrefix).filter { $0.owner.contains(filter) }.map(\.domain.name)
        }
        return names
    }

    func domains(of node: SlaveNode) async throws -> [String] {
        try await libvirt.listDomains(ownerPrefix: node.ownerPrefix).map(\.domain.name)
    }

    // MARK: Teardown

    /// The end of every daemon's log, for failure messages.
    func logTails(_ bytes: Int = 3000) -> String {
        var text = ""
        for (name, p) in [("talus-api", api), ("talus-master", master)] + slaves.map({ ($0.name, $0.process) }) {
            if let p { text += "--- \(name) (\(p.logPath))\n\(p.logTail(bytes))\n" }
        }
        return text
    }

    /// Stops every process, destroys every domain of the cluster, deletes the vhost and the
    /// database, and removes the files (kept after a failure, for the logs).
    func shutDown(keepFiles: Bool) async {
        for node in slaves { await node.process?.stop(timeout: .seconds(20)) }
        await master?.stop(timeout: .seconds(20))
        await api?.stop(timeout: .seconds(10))
        var owned: [OwnedDomain] = []
        for node in slaves { owned += (try? await libvirt.listDomains(ownerPrefix: node.ownerPrefix)) ?? [] }
        owned += ((try? await libvirt.listDomains(ownerPrefix: "image:")) ?? []).filter { $0.owner.hasSuffix("@" + database) }
        for o in owned {
            note("removing leftover domain \(o.domain.name) (\(o.owner))")
            try? await o.domain.remove()
        }
        await vhost?.delete()
        try? await db.drop()
        await client.close()
        await libvirt.close()
        if keepFiles {
            note("files and logs kept in \(dir)")
        } else {
            try? FileManager.default.removeItem(atPath: dir)
        }
    }
}
