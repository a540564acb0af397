// The master daemon (DESIGN §2, §4): a standby until it holds the leader lease, then the
// leader's components — work queue with the reconcilers, change-stream watcher, event ingester,
// slave sweep — until the lease is lost or the service stops. `/healthz` and `/metrics` are
// served throughout.

import AMQP
import BSON
import Foundation
import Logging
import Mongo
import ServiceLifecycle
import Synchronization
import TalusCore
import TalusModel

/// The master's role, as `/healthz` and systemd's STATUS show it.
public enum MasterRole: String, Sendable {
    case starting, standby, leader, stopping
}

/// What `/healthz` reports: the role and the state of each dependency.
final class MasterHealth: Sendable {
    private struct State {
        var role = MasterRole.starting
        var problems: [String: String] = [:]
        var holder: String?
    }

    private let state = Mutex(State())

    var role: MasterRole { state.withLock { $0.role } }

    func set(role: MasterRole, holder: String? = nil) {
        state.withLock { s in
            s.role = role
            s.holder = holder
            if role != .leader { s.problems = s.problems.filter { $0.key == "mongo" } }
        }
        MasterMetrics.leader.record(role == .leader ? 1 : 0)
    }

    /// Records a dependency as failing (`problem`) or fine (nil).
    func set(_ check: String, _ problem: String?) {
        state.withLock { $0.problems[check] = problem }
    }

    /// ok / standby / degraded with reasons.
    func report() -> HealthReport {
        state.withLock { s in
            var checks: [String: String] = ["role": s.role.rawValue]
            if s.role == .standby { checks["lease"] = "held by \(s.holder ?? "another master")" }
            for (name, problem) in s.problems { checks[name] = problem }
            let degraded = !s.problems.isEmpty || s.role == .starting || s.role == .stopping
            checks["status"] = degraded ? "degraded" : (s.role == .leader ? "ok" : "standby")
            return HealthReport(ok: !degraded, checks: checks)
        }
    }
}

/// The whole master: run it directly (tests) or in a `ServiceGroup` (the daemon; SIGTERM stops
/// it gracefully and releases the lease).
public final class MasterService: Service, Sendable {
    public let config: MasterConfig
    let logger: Logger
    let extraReconcilers: [@Sendable (MasterContext) -> any DocumentReconciler]
    let observer: WorkQueue.Observer?
    let health = MasterHealth()
    private let boundPort = Mutex<Int?>(nil)
    /// This process's lease holder id.
    public let holder = LeaderLease.makeHolderID()

    /// What extra reconcilers (tests, benchmarks) get to work with.
    public struct MasterContext: Sendable {
        public let database: MongoDatabase
        public let logger: Logger
    }

    /// - Parameters:
    ///   - extraReconcilers: more reconcilers for collections the master does not drive itself
    ///     (benchmarks and tests watch their reaction times).
    ///   - observer: called after every reconcile.
    public init(
        config: MasterConfig, logger: Logger = Logger(label: "talus.master"),
        extraReconcilers: [@Sendable (MasterContext) -> any DocumentReconciler] = [],
        observer: WorkQueue.Observer? = nil
    ) {
        self.config = config
        self.logger = logger
        self.extraReconcilers = extraReconcilers
        self.observer = observer
    }

    /// The port `/healthz` and `/metrics` listen on, once listening.
    public var opsPort: Int? { boundPort.withLock { $0 } }
    /// The current role.
    public var role: MasterRole { health.role }
    /// The health report `/healthz` serves.
    public func healthReport() -> HealthReport { health.report() }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await cancelWhenGracefulShutdown { try await self.serve() }
        } onGracefulShutdown: {
            SystemdNotifier.stopping()
            self.logger.info("stopping: SIGTERM or shutdown requested")
        }
    }

    private func serve() async throws {
        let mongo = try MongoClient(
            uri: config.mongoURI, configuration: .init(threadPoolSize: 12, appName: "talus-master"),
            logger: Logger(label: "talus.mongo"))
        let database = mongo.database(config.database)
        let lease = LeaderLease(database: database, duration: config.lease, holder: holder, logger: logger)
        let health = self.health
        let logger = self.logger
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                let ops = OpsServer.application(
                    host: config.metricsHost, port: config.metricsPort, logger: Logger(label: "talus.master.ops"),
                    onRunning: { port in
                        self.boundPort.withLock { $0 = port }
                        logger.info("serving /healthz and /metrics", metadata: ["address": "\(self.config.metricsHost):\(port)"])
                    }, health: { health.report() })
                // The server stops through a graceful shutdown (cancelling Hummingbird logs
                // errors), so it runs in a task of its own that cancellation does not reach.
                let opsGroup = ServiceGroup(configuration: .init(services: [ops], logger: Logger(label: "talus.master.ops")))
                let opsTask = Task { try await opsGroup.run() }
                group.addTask {
                    try await withTaskCancellationHandler {
                        try await opsTask.value
                    } onCancel: {
                        Task { await opsGroup.triggerGracefulShutdown() }
                    }
                }
                group.addTask { await Self.pingLoop(mongo, health: health) }
                group.addTask { try await self.roles(database: database, lease: lease) }
                defer { group.cancelAll() }
                _ = try await group.next()
            }
        } catch {
            health.set(role: .stopping)
            await Task { await mongo.close() }.value
            throw error
        }
        health.set(role: .stopping)
        await Task { await mongo.close() }.value
    }

    /// Checks the database every few seconds for `/healthz`.
    static func pingLoop(_ client: MongoClient, health: MasterHealth) async {
        while !Task.isCancelled {
            do {
                _ = try await client.runCommand(["ping": 1])
                health.set("mongo", nil)
            } catch is CancellationError {
                return
            } catch {
                health.set("mongo", "unreachable: \(error)")
            }
            try? await Task.sleep(for: .seconds(5))
        }
    }

    private struct LeaseLost: Error {}

    /// READY=1 with the first role, STATUS=<role> afterwards.
    private func announce(_ role: MasterRole) {
        let first = readySent.withLock { sent in
            defer { sent = true }
            return !sent
        }
        if first { SystemdNotifier.ready(status: role.rawValue) } else { SystemdNotifier.status(role.rawValue) }
    }

    private let readySent = Mutex(false)

    /// Standby → leader → (lease lost) → standby ... until cancelled; releases the lease when
    /// stopping.
    private func roles(database: MongoDatabase, lease: LeaderLease) async throws {
        while true {
            if health.role == .leader {
                announce(.standby)
                health.set(role: .standby)
            }
            let acquiredAt = try await lease.acquire(standby: { [self] other in
                announce(.standby)
                health.set(role: .standby, holder: other)
            })
            logger.info("leader lease acquired: starting to lead", metadata: ["holder": "\(lease.holder)"])
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        try await lease.holdUntilLost(acquiredAt: acquiredAt)
                        throw LeaseLost()
                    }
                    group.addTask { try await self.lead(database: database) }
                    defer { group.cancelAll() }
                    _ = try await group.next()
                }
            } catch is LeaseLost {
                MasterMetrics.leaseLost.increment()
                logger.error("lost the leader lease: stopped leading, standing by")
            } catch where Task.isCancelled {
                health.set(role: .stopping)
                await Task { await lease.release() }.value
                throw CancellationError()
            } catch {
                logger.error("leading failed: giving the lease up and trying again", metadata: ["error": "\(error)"])
                await Task { await lease.release() }.value
                announce(.standby)
                health.set(role: .standby)
                try await Task.sleep(for: .seconds(2))
            }
        }
    }

    /// The leader's work, until cancelled or a component fails.
    private func lead(database: MongoDatabase) async throws {
        let names = AMQPNames(namespace: config.amqpNamespace)
        let amqpLogger = Logger(label: "talus.amqp")
        let publisherConnection = try await AMQPConnection.connect(
            try AMQPConfiguration(url: config.amqpURL, connectionName: "talus-master-publish"),
            topology: MasterTopology.base(names), logger: amqpLogger)
        let consumerConnection: AMQPConnection
        do {
            consumerConnection = try await AMQPConnection.connect(
                try AMQPConfiguration(url: config.amqpURL, connectionName: "talus-master-events"), logger: amqpLogger)
        } catch {
            await publisherConnection.close()
            throw error
        }
        do {
            try await leadWith(database: database, names: names, publisherConnection: publisherConnection,
                               consumerConnection: consumerConnection)
        } catch {
            await Task {
                await consumerConnection.close()
                await publisherConnection.close()
            }.value
            throw error
        }
    }

    private func leadWith(database: MongoDatabase, names: AMQPNames, publisherConnection: AMQPConnection,
                          consumerConnection: AMQPConnection) async throws {
        let store = MasterStore(database: database)
        try await store.ensureIndexes()
        let slaves = SlaveTracker(store: store, offlineAfter: config.offlineAfter, logger: logger)
        try await slaves.load()
        let publisher = MasterPublisher(connection: publisherConnection, names: names, logger: logger)
        try await publisher.ensurePartsQueue("default")

        let queueBox = Mutex<WorkQueue?>(nil)
        let hint: @Sendable (WorkKey) -> Void = { key in queueBox.withLock { $0 }?.enqueue(key) }
        let ingestor = EventIngestor(
            store: store, connection: consumerConnection, names: names, publisher: publisher, slaves: slaves,
            limits: .init(partAttempts: config.partAttempts, maxErrors: config.maxErrors, crashSamples: config.crashSamples,
                          batchSize: config.eventBatch, linger: config.eventLinger),
            hint: hint, logger: logger)
        let jobs = JobReconciler(
            store: store, publisher: publisher, slaves: slaves,
            limits: .init(window: config.jobWindow, partAttempts: config.partAttempts,
                          maxFailedParts: config.maxFailedParts, maxErrors: config.maxErrors),
            ingest: { ingestor.post($0) }, accountingPending: { ingestor.accountingPending($0) }, logger: logger)
        let context = MasterContext(database: database, logger: logger)
        let reconcilers: [any DocumentReconciler] = [
            jobs,
            ImageReconciler(database: database, config: config.images, logger: logger),
            SlaveReconciler(store: store, publisher: publisher, logger: logger),
        ] + extraReconcilers.map { $0(context) }
        // Job accounting is repaired before anything reconciles (a crash between a batch's run
        // writes and its job writes would otherwise make the dispatcher publish too many parts).
        try await ingestor.recomputeActiveJobs()
        let queue = WorkQueue(reconcilers: reconcilers, maxAttempts: config.reconcileAttempts,
                              backoff: config.reconcileBackoff, logger: logger, observer: observer)
        queueBox.withLock { $0 = queue }
        let watcher = ChangeStreamWatcher(store: store, reconcilers: reconcilers, queue: queue, health: health, logger: logger)
        let health = self.health

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await queue.run() }
            // Leading from now on: AMQP is connected, accounting repaired, components started.
            announce(.leader)
            health.set(role: .leader)
            logger.info("leading", metadata: ["holder": "\(holder)"])
            group.addTask { try await watcher.run() }
            group.addTask { try await ingestor.run() }
            group.addTask {
                await slaves.sweep { uuids in
                    ingestor.post(.slavesOffline(uuids, reason: "no heartbeat for \(self.config.offlineAfter)"))
                }
            }
            for (name, connection) in [("amqp.publish", publisherConnection), ("amqp.events", consumerConnection)] {
                group.addTask { await Self.watch(connection, name: name, health: health) }
            }
            defer { group.cancelAll() }
            // Any component ending ends the leadership (the caller decides what next).
            _ = try await group.next()
            try Task.checkCancellation()
            throw IngestError("a leader component stopped unexpectedly")
        }
    }

    /// Follows a connection's state for `/healthz` and the reconnect counter.
    static func watch(_ connection: AMQPConnection, name: String, health: MasterHealth) async {
        var wasConnected = connection.state.isConnected
        for await state in connection.stateChanges() {
            switch state {
            case .connected:
                health.set(name, nil)
                if !wasConnected { MasterMetrics.amqpReconnects.increment() }
                wasConnected = true
            case .connecting:
                break
            case .reconnecting, .closed:
                health.set(name, "\(state)")
                if case .reconnecting = state { wasConnected = false }
            }
            if Task.isCancelled { return }
        }
    }
}

/// The `talus-master` daemon: a ``MasterService`` in a `ServiceGroup` that stops gracefully on
/// SIGTERM and SIGINT.
public enum MasterDaemon {
    public static func run(config: MasterConfig, logger: Logger = Logger(label: "talus.master")) async throws {
        logger.info("talus-master starting", metadata: [
            "database": "\(config.database)", "namespace": "\(config.amqpNamespace)",
            "lease": "\(config.lease)", "metrics": "\(config.metricsHost):\(config.metricsPort)",
        ])
        MasterMetrics.registerAtStart()
        let service = MasterService(config: config, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("talus-master stopped")
    }
}
