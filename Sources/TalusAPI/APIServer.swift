// Assembles the API: store, authenticator, uploads, route collections, the observing middleware
// and the Hummingbird application (with the upload sweeper as a service).

import Foundation
import Hummingbird
import Logging
import Mongo
import NIOCore
import ServiceLifecycle
import TalusModel

/// Builds the `talus-api` application.
public enum TalusAPIServer {
    /// Every route collection, in registration order. `CodeRoutes` is where tool bundles go.
    public static let routeCollections: [any APIRouteCollection] = [
        OpsRoutes(), OSRoutes(), ImageRoutes(), UploadRoutes(), CodeRoutes(), TaskRoutes(), JobRoutes(),
        ResultRoutes(), CrashRoutes(), FileRoutes(), FileSetRoutes(), SlaveRoutes(), UserRoutes(),
        CodeBundleRoutes(),
    ]

    /// The application type `build` returns.
    public typealias App = Application<RouterResponder<APIRequestContext>>

    /// Prepares storage and indexes and returns the application (not yet running) and its
    /// route table. `onRunning` gets the bound port (useful with port 0).
    public static func build(
        config: APIConfig, client: MongoClient, logger: Logger,
        extraRoutes: [any APIRouteCollection] = [], sweepInterval: Duration = .seconds(60),
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws -> (App, APIRouter) {
        do {
            try FileManager.default.createDirectory(atPath: config.uploadsDirectory, withIntermediateDirectories: true)
        } catch {
            throw APIStartError(message: "storage.uploads: cannot create \(config.uploadsDirectory): \(error.localizedDescription)")
        }
        let store = APIStore(database: client.database(config.database))
        try await store.ensureIndexes()
        let uploads = UploadManager(directory: config.uploadsDirectory, maxBytes: config.uploadMaxBytes,
                                    expireAfter: config.uploadExpireAfter, uploads: store.uploads, logger: logger)
        let services = APIServices(
            store: store, config: config,
            authenticator: Authenticator(database: store.database, ttl: config.authCacheTTL, logger: logger),
            uploads: uploads, gridFS: GridFSBucket(files: store.files, chunks: store.chunks))
        let router = Router(context: APIRequestContext.self)
        let api = APIRouter(router: router)
        router.add(middleware: RequestObserver(authenticator: services.authenticator, routes: api, logger: logger))
        for collection in routeCollections + extraRoutes {
            collection.register(on: api, services: services)
        }
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(config.host, port: config.port), serverName: "talus-api"),
            services: [UploadSweeper(manager: uploads, interval: sweepInterval, logger: logger)],
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? config.port) },
            logger: logger)
        return (app, api)
    }

    /// The sweep of expired uploads, callable directly (tests, maintenance).
    public static func sweepUploads(config: APIConfig, client: MongoClient, logger: Logger, now: Date = Date(),
                                    orphanGrace: TimeInterval = 3600) async throws -> Int {
        let store = APIStore(database: client.database(config.database))
        let manager = UploadManager(directory: config.uploadsDirectory, maxBytes: config.uploadMaxBytes,
                                    expireAfter: config.uploadExpireAfter, uploads: store.uploads, logger: logger)
        return try await manager.sweep(now: now, orphanGrace: orphanGrace)
    }
}

/// The API cannot start (storage, database).
public struct APIStartError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
