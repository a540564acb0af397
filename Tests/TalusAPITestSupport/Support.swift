// The API served in-process on an ephemeral loopback port, against its own database on the
// shared SecantusDB, with an admin token; plus helpers for HTTP requests (the `talus` CLI runner
// is in TalusTestSupport).

import AsyncHTTPClient
import BSON
import Crypto
import Foundation
import Logging
import Mongo
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import ServiceLifecycle
import Synchronization
import TalusAPI
import TalusCore
import TalusModel
import TalusTestSupport

/// An HTTP answer.
public struct HTTPAnswer: Sendable {
    public let status: Int
    public let headers: HTTPHeaders
    public let body: Data

    public var text: String { String(decoding: body, as: UTF8.self) }
    /// The body as a JSON object (nil when it is not one).
    public var object: [String: Any]? { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] }
    public func header(_ name: String) -> String? { headers.first(name: name) }
    /// The field names of a problem's `errors`.
    public var problemFields: [String] {
        ((object?["errors"] as? [[String: Any]]) ?? []).compactMap { $0["field"] as? String }
    }
}

/// A running API for one test. Call ``stop()`` at the end.
public final class APITestServer: Sendable {
    public let config: APIConfig
    public let baseURL: String
    public let port: Int
    public let client: MongoClient
    public let database: MongoDatabase
    public let store: APIStore
    public let routes: [RouteInfo]
    public let adminToken: String
    public let admin: UserDocument
    public let http: HTTPClient
    public let scratch: String
    private let group: ServiceGroup
    private let running: Task<Void, any Error>

    /// Starts an API on a fresh database. `configure` may change the configuration.
    public static func start(_ prefix: String = "apitest", configure: (inout APIConfig) -> Void = { _ in }) async throws -> APITestServer {
        let scratch = try TestEnvironment.scratchDirectory(prefix)
        var config = APIConfig(host: "127.0.0.1", port: 0, mongoURI: try TestEnvironment.mongoURI(), database: uniqueName(prefix),
                               uploadsDirectory: scratch + "/uploads", imagesDirectory: scratch + "/images")
        try FileManager.default.createDirectory(atPath: config.imagesDirectory, withIntermediateDirectories: true)
        configure(&config)
        // Metrics go to the process-wide Prometheus registry (what /metrics shows).
        Observability.bootstrap(level: .warning)
        var logger = Logger(label: "test.api")
        logger.logLevel = ProcessInfo.processInfo.environment["TALUS_TEST_API_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        let client = try MongoClient(uri: config.mongoURI, logger: logger)
        let port = Mutex<Int?>(nil)
        let (app, router) = try await TalusAPIServer.build(config: config, client: client, logger: logger) { p in
            port.withLock { $0 = p }
        }
        let group = ServiceGroup(configuration: .init(services: [app], logger: logger))
        let running = Task { try await group.run() }
        let bound = try await waitFor("the API to listen", timeout: .seconds(30)) { port.withLock { $0 } }
        let store = APIStore(database: client.database(config.database))
        let (admin, token) = try await bootstrapAdmin(store: store, name: "root", force: false)
        return APITestServer(config: config, port: bound, client: client, store: store, routes: router.routes, adminToken: token,
                             admin: admin, scratch: scratch, group: group, running: running)
    }

    private init(config: APIConfig, port: Int, client: MongoClient, store: APIStore, routes: [RouteInfo], adminToken: String,
                 admin: UserDocument, scratch: String, group: ServiceGroup, running: Task<Void, any Error>) {
        self.config = config; self.port = port; self.client = client; self.store = store; self.routes = routes
        self.adminToken = adminToken; self.admin = admin; self.scratch = scratch; self.group = group; self.running = running
        baseURL = "http://127.0.0.1:\(port)"
        database = store.database
        http = HTTPClient(eventLoopGroupProvider: .singleton)
    }

    /// Stops the server, drops the database, removes the scratch directory.
    public func stop() async {
        try? await http.shutdown()
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        try? await database.drop()
        await client.close()
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// A new user with `role` and a token for them.
    public func makeUser(_ name: String = uniqueName("user"), role: Role) async throws -> (user: ObjectId, token: String) {
        let created = try await request(.POST, "/api/v1/users", token: adminToken, json: ["name": name, "role": role.rawValue])
        guard created.status == 201, let id = (created.object?["_id"] as? String).flatMap(ObjectId.init) else {
            throw TestSupportError("cannot create user: \(created.status) \(created.text)")
        }
        let token = try await request(.POST, "/api/v1/tokens", token: adminToken, json: ["name": "t", "user": id.hex])
        guard token.status == 201, let secret = token.object?["token"] as? String else {
            throw TestSupportError("cannot create token: \(token.status) \(token.text)")
        }
        return (id, secret)
    }

    /// Sends a request; `json` is serialized with JSONSerialization, `body` sent as is.
    public func request(_ method: HTTPMethod, _ path: String, token: String?, json: Any? = nil, body: Data? = nil,
                        headers: [(String, String)] = []) async throws -> HTTPAnswer {
        var r = HTTPClientRequest(url: baseURL + path)
        r.method = method
        if let token { r.headers.add(name: "Authorization", value: "Bearer \(token)") }
        for (k, v) in headers { r.headers.add(name: k, value: v) }
        if let json {
            r.headers.add(name: "Content-Type", value: "application/json")
            r.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
        } else if let body {
            if !headers.contains(where: { $0.0.lowercased() == "content-type" }) {
                r.headers.add(name: "Content-Type", value: "application/octet-stream")
            }
            r.body = .bytes(ByteBuffer(bytes: body))
        }
        let response = try await http.execute(r, timeout: .seconds(120))
        let data = try await response.body.collect(upTo: 256 << 20)
        return HTTPAnswer(status: Int(response.status.code), headers: response.headers, body: Data(buffer: data))
    }

    /// Inserts a ready image whose file holds `contents`, and returns its id.
    public func insertReadyImage(name: String = uniqueName("img"), contents: Data, sha256: String) async throws -> ObjectId {
        let oses = store.database.collection("os", as: OSDocument.self)
        if try await oses.findOne(["name": "test-os"]) == nil {
            try? await oses.insertOne(OSDocument(name: "test-os", family: .linux))
        }
        guard let os = try await oses.findOne(["name": "test-os"]) else { throw TestSupportError("no test os") }
        let id = ObjectId()
        let file = ImageFile(path: id.hex + ".qcow2", sha256: sha256, size: Int64(contents.count), virtualSize: Int64(contents.count))
        FileManager.default.createFile(atPath: config.imagesDirectory + "/" + file.path, contents: contents)
        let image = ImageDocument(id: id, name: name, os: os.id, file: file, status: ImageStatus(.ready), owner: admin.id)
        try await store.database.collection("images", as: ImageDocument.self).insertOne(image)
        return id
    }
}

/// Lowercase hex SHA-256 of `data` by `sha256sum` (an implementation independent of the API's).
public func sha256sum(path: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    p.arguments = [path]
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let out = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(String(decoding: out, as: UTF8.self).prefix(64))
}

/// Lowercase hex SHA-256 of `data`.
public func sha256Hex(_ data: Data) -> String {
    SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
}
