// The slave daemon (DESIGN §6, §7, §10): takes parts from `talus.parts.<queue>` with manual acks
// and a prefetch that follows its free VM slots, runs each in a fresh VM (several at once), acks a
// part only after its end was reported, obeys control messages (cancel job, drain), sends
// heartbeats, and on SIGTERM stops taking parts, lets running ones finish up to a bound and
// requeues the rest.

import AMQP
import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import TalusCore
import TalusModel

/// The version in heartbeats.
public let talusSlaveVersion = "talus-slave/0.1.0"

/// The AMQP names the slave uses (shared with the master through ``AMQPNames``).
public enum SlaveTopology {
    /// The parts exchange, a job queue, and its binding (routing key = the job's queue name).
    public static func parts(queue name: String, names: AMQPNames = .standard) -> (AMQPExchange, AMQPQueue, AMQPBinding) {
        var queue = AMQPQueue(names.partsQueue(name))
        queue.maxPriority = AMQPNames.maxPriority
        queue.deadLetterExchange = names.deadLetterExchange
        return (AMQPExchange(names.partsExchange, kind: .direct),
                queue,
                AMQPBinding(queue: queue.name, exchange: names.partsExchange, routingKey: name))
    }

    /// The events queue, declared with the master's arguments (unreadable events dead-lettered):
    /// whichever daemon declares it first, the other's declaration must match, or RabbitMQ
    /// refuses it (406) and a master starting after its slaves could never lead.
    public static func events(names: AMQPNames = .standard) -> AMQPQueue {
        var queue = AMQPQueue(names.eventsQueue)
        queue.deadLetterExchange = names.deadLetterExchange
        return queue
    }

    /// The events queue of the default namespace.
    public static var events: AMQPQueue { events() }

    /// This slave's control queue: exclusive, gone with the connection, re-declared after a
    /// reconnection, bound to the control fanout.
    public static func control(slave: String, names: AMQPNames = .standard) -> (AMQPExchange, AMQPQueue, AMQPBinding) {
        let queue = AMQPQueue("\(names.namespace).control.\(slave)", durable: false, exclusive: true, autoDelete: true)
        return (AMQPExchange(names.controlExchange, kind: .fanout),
                queue,
                AMQPBinding(queue: queue.name, exchange: names.controlExchange))
    }
}

/// `talus-slave` as a service (run it in a `ServiceGroup` that turns SIGTERM into a graceful
/// shutdown).
public final class Slave: Service, Sendable {
    public let configuration: SlaveConfiguration
    let logger: Logger
    public let metrics: SlaveMetrics
    private let status = StatusBox()

    final class StatusBox: Sendable {
        let value = Mutex<Status>(Status())
        func update(_ body: (inout Status) -> Void) { value.withLock { body(&$0) } }
        var current: Status { value.withLock { $0 } }
    }

    struct Status {
        var id: String?
        var consumerState: AMQPConnectionState = .connecting
        var publisherState: AMQPConnectionState = .connecting
        var ready = false
    }

    public init(configuration: SlaveConfiguration, logger: Logger = Logger(label: "talus.slave"), metrics: SlaveMetrics = SlaveMetrics()) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
    }

    /// What `/healthz` reports.
    public func health() -> HealthReport {
        let s = status.current
        var checks: [String: String] = [:]
        checks["amqp.parts"] = s.consumerState.isConnected ? "ok" : "\(s.consumerState)"
        checks["amqp.events"] = s.publisherState.isConnected ? "ok" : "\(s.publisherState)"
        checks["serving"] = s.ready ? "ok" : "starting"
        return HealthReport(ok: checks.values.allSatisfy { $0 == "ok" }, checks: checks)
    }

    public func run() async throws {
        let config = configuration
        let id = try loadOrCreateSlaveID(at: config.idFile)
        status.update { $0.id = id }
        var logger = self.logger
        logger[metadataKey: "slave"] = "\(id)"
        logger.info("starting", metadata: ["queues": "\(config.queues.joined(separator: ","))", "vms": "\(config.vms)",
                                          "memory_mb": "\(config.memoryMB)"])
        try FileManager.default.createDirectory(atPath: config.runDir, withIntermediateDirectories: true)
        chmod(config.runDir, 0o755)
        guard FileManager.default.isReadableFile(atPath: config.agentPath) else {
            throw SettingsError(key: SlaveKeys.agentPath.name, problem: "\(config.agentPath) does not exist or cannot be read")
        }

        // libvirt first: domains of a previous run of this slave go before their files.
        let host = try await VMHost.open(uri: config.libvirtURI, domainType: config.domainType, probeDirectory: config.runDir, logger: logger)
        let leftovers = try await host.destroyDomains(ownerPrefix: "part:\(id):")
        let removed = Self.cleanRunDirectory(config.runDir)
        if !leftovers.isEmpty || removed > 0 {
            logger.notice("cleaned up after an earlier run", metadata: ["domains": "\(leftovers.count)", "run_dirs": "\(removed)"])
        }

        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(
            timeout: .init(connect: .seconds(10), read: .seconds(120))))
        do {
            try await serve(id: id, host: host, http: http, logger: logger)
        } catch {
            try? await http.shutdown()
            await host.close()
            throw error
        }
        try? await http.shutdown()
        await host.close()
    }

    /// Removes the run directories (named by run id) an earlier run left; returns how many.
    static func cleanRunDirectory(_ path: String) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        var n = 0
        for name in names where UUID(uuidString: name) != nil {
            if (try? FileManager.default.removeItem(atPath: path + "/" + name)) != nil { n += 1 }
        }
        return n
    }

    private func serve(id: String, host: VMHost, http: HTTPClient, logger: Logger) async throws {
        let config = configuration
        let cache = try FileCache(root: config.cacheDir, maxBytes: config.cacheMaxBytes, policy: config.cacheVerify,
                                  verifyInterval: config.cacheVerifyInterval, logger: logger, metrics: metrics)
        let downloader = APIDownloader(client: http, baseURL: config.apiURL, token: config.apiToken, logger: logger)
        let artifacts = ArtifactStore(cache: cache, downloader: downloader, logger: logger, metrics: metrics)
        let env = PartEnvironment(slaveID: id, host: host, artifacts: artifacts, agentPath: config.agentPath, runDir: config.runDir,
                                  limits: config.guest, isoMaxBytes: config.isoMaxBytes, isolatedNetwork: config.isolatedNetwork,
                                  logger: logger, metrics: metrics)

        let publisher = try await connect(name: "talus-slave \(id) events", logger: logger)
        let consumerConnection: AMQPConnection
        do {
            consumerConnection = try await connect(name: "talus-slave \(id) parts", logger: logger)
        } catch {
            await publisher.close()
            throw error
        }
        let sink = AMQPEventSink(connection: publisher, queue: configuration.amqpNames.eventsQueue, logger: logger)
        let state = SlaveState(vms: config.vms, memoryMB: config.memoryMB)
        let node = SlaveNode(id: id, config: config, env: env, state: state, sink: sink, consumerConnection: consumerConnection,
                             logger: logger, metrics: metrics)
        do {
            try await declareTopology(consumerConnection, slave: id, logger: logger)
            try await node.run(status: status)
        } catch {
            await consumerConnection.close()
            await publisher.close()
            throw error
        }
        await consumerConnection.close()
        await publisher.close()
    }

    /// Connects to the broker, retrying with backoff until it answers (or the task is cancelled).
    private func connect(name: String, logger: Logger) async throws -> AMQPConnection {
        var delay = Duration.milliseconds(500)
        while true {
            do {
                let configuration = try AMQPConfiguration(url: configuration.amqpURL, connectionName: name)
                return try await AMQPConnection.connect(configuration, logger: logger)
            } catch {
                if error.kind == .invalidArgument || error.kind == .authenticationFailed {
                    throw SettingsError(key: SlaveKeys.amqpURL.name, problem: "\(error)")
                }
                try Task.checkCancellation()
                logger.warning("broker unavailable; retrying", metadata: ["error": "\(error)", "retry_in": "\(delay)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(30))
            }
        }
    }

    /// Declares what the slave consumes and publishes to. A declaration that clashes with one
    /// the master made (different arguments) is logged and left as the master made it.
    private func declareTopology(_ connection: AMQPConnection, slave: String, logger: Logger) async throws {
        for name in configuration.queues {
            let (exchange, queue, binding) = SlaveTopology.parts(queue: name, names: configuration.amqpNames)
            try Self.tolerate(await Self.result { () throws(AMQPError) in try await connection.declareExchange(exchange) },
                                    "exchange \(exchange.name)", logger)
            try Self.tolerate(await Self.result { () throws(AMQPError) in _ = try await connection.declareQueue(queue) },
                                    "queue \(queue.name)", logger)
            try await connection.bind(binding)
        }
        let events = SlaveTopology.events(names: configuration.amqpNames)
        try Self.tolerate(await Self.result { () throws(AMQPError) in _ = try await connection.declareQueue(events) },
                                "queue \(events.name)", logger)
        let (exchange, queue, binding) = SlaveTopology.control(slave: slave, names: configuration.amqpNames)
        try Self.tolerate(await Self.result { () throws(AMQPError) in try await connection.declareExchange(exchange) },
                                "exchange \(exchange.name)", logger)
        try await connection.declareQueue(queue)
        try await connection.bind(binding)
    }

    private static func result(_ body: () async throws(AMQPError) -> Void) async -> Result<Void, AMQPError> {
        do throws(AMQPError) {
            try await body()
            return .success(())
        } catch {
            return .failure(error)
        }
    }

    /// A declaration that clashes with one the master made (different arguments) is logged and
    /// left as the master made it; other failures are thrown.
    private static func tolerate(_ result: Result<Void, AMQPError>, _ what: String, _ logger: Logger) throws {
        if case .failure(let error) = result {
            guard error.isPreconditionFailed else { throw error }
            logger.warning("\(what) exists with other arguments; using it as it is", metadata: ["error": "\(error)"])
        }
    }
}

/// The running slave: consumers, parts, control, heartbeats, shutdown.
final class SlaveNode: Sendable {
    let id: String
    let config: SlaveConfiguration
    let env: PartEnvironment
    let state: SlaveState
    let sink: AMQPEventSink
    let consumerConnection: AMQPConnection
    let logger: Logger
    let metrics: SlaveMetrics
    let hostname = ProcessInfo.processInfo.hostName
    private let consumers = Mutex<[String: (consumer: AMQPConsumer, task: Task<Void, Never>)]>([:])
    private let work: AsyncStream<(AMQPDelivery, String)>
    private let workContinuation: AsyncStream<(AMQPDelivery, String)>.Continuation
    private let prefetchLock = AsyncLock()

    init(id: String, config: SlaveConfiguration, env: PartEnvironment, state: SlaveState, sink: AMQPEventSink,
         consumerConnection: AMQPConnection, logger: Logger, metrics: SlaveMetrics) {
        self.id = id; self.config = config; self.env = env; self.state = state; self.sink = sink
        self.consumerConnection = consumerConnection; self.logger = logger; self.metrics = metrics
        (work, workContinuation) = AsyncStream.makeStream(of: (AMQPDelivery, String).self)
    }

    func info() async -> SlaveInfo {
        SlaveInfo(uuid: id, hostname: hostname, address: nil, version: talusSlaveVersion,
                  capacity: SlaveDocument.Capacity(vms: config.vms, memoryMB: config.memoryMB),
                  running: await state.runningParts(), draining: await isDrainingOrStopping())
    }

    private func isDrainingOrStopping() async -> Bool {
        let draining = await state.draining
        let stopping = await state.stopping
        return draining || stopping
    }

    func run(status: Slave.StatusBox) async throws {
        try await sink.publish(EventMessage(slave: id, source: nil, body: .slaveOnline(await info())))
        try await startConsumers()
        let control = try await startControl()
        status.update { $0.ready = true }
        SystemdNotifier.ready(status: "taking parts from \(config.queues.joined(separator: ", ")) with \(config.vms) VM slots")
        logger.info("serving", metadata: ["queues": "\(config.queues.joined(separator: ","))"])

        await withDiscardingTaskGroup { group in
            group.addTask { await self.heartbeats() }
            group.addTask { await self.watch(self.consumerConnection, status: status, \.consumerState) }
            group.addTask { await self.watch(self.sink.connection, status: status, \.publisherState) }
            group.addTask {
                // SIGTERM (graceful shutdown) or cancellation: stop taking parts.
                do { try await gracefulShutdown() } catch {}
                await self.stopTaking()
            }
            for await (delivery, queue) in work {
                group.addTask { await self.handle(delivery, queue: queue) }
            }
            // No more deliveries: let running parts finish up to the grace, then requeue the rest.
            await state.waitUntilIdle(timeout: config.shutdownGrace)
            let remaining = await state.count
            if remaining > 0 {
                logger.notice("shutdown grace over: cancelling and requeueing the remaining parts", metadata: ["parts": "\(remaining)"])
                await state.cancelAll(reason: "the slave is shutting down", requeue: true)
                await state.waitUntilIdle(timeout: config.guest.cancelGrace + .seconds(60))
            }
            control.cancel()
            group.cancelAll()
        }
        status.update { $0.ready = false }
        let offline = EventMessage(slave: id, source: nil, body: .slaveOffline(await info()))
        _ = await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await self.sink.publish(offline)) != nil }
            group.addTask { try? await Task.sleep(for: .seconds(10)); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        logger.info("stopped")
    }

    /// Graceful shutdown: no new parts; deliveries already received are requeued.
    func stopTaking() async {
        guard await !state.stopping else { return }
        SystemdNotifier.stopping()
        let running = await state.count
        logger.info("shutting down: no new parts", metadata: ["running": "\(running)"])
        await state.beginStopping()
        await stopConsumers()
        workContinuation.finish()
    }

    // MARK: Consumers

    private func startConsumers() async throws {
        for queue in config.queues {
            let consumer = try await consumerConnection.consume(queue: config.amqpNames.partsQueue(queue), prefetch: UInt16(min(config.vms, 65535)))
            let task = Task {
                do {
                    for try await delivery in consumer { self.workContinuation.yield((delivery, queue)) }
                } catch {
                    if !Task.isCancelled { self.logger.warning("part consumer ended", metadata: ["queue": "\(queue)", "error": "\(error)"]) }
                }
            }
            consumers.withLock { $0[queue] = (consumer, task) }
        }
        await updatePrefetch()
    }

    private func stopConsumers() async {
        let all = consumers.withLock { c -> [(consumer: AMQPConsumer, task: Task<Void, Never>)] in
            defer { c.removeAll() }
            return Array(c.values)
        }
        for (consumer, task) in all {
            try? await consumer.cancel()
            await task.value
        }
    }

    /// Keeps each consumer's prefetch at its parts held plus the slave's free slots, so the
    /// broker never hands this slave more parts than it can start.
    private func updatePrefetch() async {
        await prefetchLock.run {
            let held = await state.heldPerQueue()
            let free = max(0, config.vms - held.values.reduce(0, +))
            let current = consumers.withLock { $0 }
            for (queue, entry) in current {
                let target = UInt16(clamping: max(1, (held[queue] ?? 0) + free))
                if entry.consumer.prefetch != target { try? await entry.consumer.setPrefetch(target) }
            }
        }
    }

    // MARK: Parts

    private func handle(_ delivery: AMQPDelivery, queue: String) async {
        let received = ContinuousClock.now
        let part: PartMessage
        do {
            part = try TalusJSON.decoder().decode(PartMessage.self, from: Data(delivery.body))
        } catch {
            metrics.unreadableMessages.increment()
            logger.error("unreadable part message dead-lettered", metadata: ["queue": "\(queue)", "error": "\(error)"])
            try? delivery.reject(requeue: false)
            return
        }
        if await state.stopping {
            try? delivery.nack(requeue: true)
            return
        }
        let run = PartRun(part: part, env: env, sink: sink, received: received)
        await state.register(run, delivery: delivery, queue: queue)
        if let deadline = part.deadline, deadline < Date() {
            run.cancel(outcome: .cancelled, reason: "the part's deadline passed before it could start")
        } else if part.vm.memoryMB > config.memoryMB {
            run.cancel(outcome: .failure, reason: "the VM needs \(part.vm.memoryMB) MiB; this slave has \(config.memoryMB) MiB (slave.memory_mb)")
        }
        await updatePrefetch()
        _ = await state.admit(run)
        metrics.partsRunning.record(await state.admittedCount)
        let result = await run.execute()
        let requeue = await state.finish(run)
        metrics.partsRunning.record(await state.admittedCount)
        do {
            if !result.reported || (result.outcome == .cancelled && requeue) {
                try delivery.nack(requeue: true)
            } else {
                try delivery.ack()
            }
        } catch {
            logger.notice("part delivery could not be settled (the broker requeued it)", metadata: [
                "job": "\(part.job.hex)", "idx": "\(part.idx)", "error": "\(error)"])
        }
        await updatePrefetch()
    }

    // MARK: Control

    private func startControl() async throws -> Task<Void, Never> {
        let (_, queue, _) = SlaveTopology.control(slave: id, names: config.amqpNames)
        let consumer = try await consumerConnection.consume(queue: queue.name, prefetch: 20)
        return Task {
            do {
                for try await delivery in consumer {
                    await self.control(delivery)
                    try? delivery.ack()
                }
            } catch {
                if !Task.isCancelled { self.logger.warning("control consumer ended", metadata: ["error": "\(error)"]) }
            }
        }
    }

    private func control(_ delivery: AMQPDelivery) async {
        let message: ControlMessage
        do {
            message = try TalusJSON.decoder().decode(ControlMessage.self, from: Data(delivery.body))
        } catch {
            metrics.unreadableMessages.increment()
            logger.warning("unreadable control message ignored", metadata: ["error": "\(error)"])
            return
        }
        switch message.type {
        case .cancelJob:
            guard let job = message.job else { return }
            let n = await state.cancelJob(job)
            logger.info("job cancelled", metadata: ["job": "\(job.hex)", "parts": "\(n)"])
        case .drainSlave:
            guard message.slave == id, await !state.draining else { return }
            logger.notice("draining: no new parts until undrained")
            await state.setDraining(true)
            await stopConsumers()
            await sink.publishUnconfirmed(EventMessage(slave: id, source: nil, body: .heartbeat(await info())))
        case .undrainSlave:
            guard message.slave == id, await state.draining, await !state.stopping else { return }
            logger.notice("taking parts again")
            await state.setDraining(false)
            do { try await startConsumers() } catch { logger.error("cannot consume again", metadata: ["error": "\(error)"]) }
        case .reloadConfig:
            logger.notice("reload-config received: restart talus-slave to apply configuration changes")
        }
    }

    // MARK: Heartbeats and connections

    private func heartbeats() async {
        while !Task.isCancelled {
            await sink.publishUnconfirmed(EventMessage(slave: id, source: nil, body: .heartbeat(await info())))
            try? await Task.sleep(for: config.heartbeatInterval)
        }
    }

    private func watch(_ connection: AMQPConnection, status: Slave.StatusBox, _ field: any WritableKeyPath<Slave.Status, AMQPConnectionState> & Sendable) async {
        var wasDown = false
        for await s in connection.stateChanges() {
            status.update { $0[keyPath: field] = s }
            switch s {
            case .reconnecting:
                if !wasDown { logger.warning("broker connection lost; reconnecting", metadata: ["state": "\(s)"]) }
                wasDown = true
                if connection === consumerConnection {
                    let n = await state.cancelStale()
                    if n > 0 { logger.warning("parts requeued by the broker were stopped", metadata: ["parts": "\(n)"]) }
                }
            case .connected where wasDown:
                wasDown = false
                metrics.amqpReconnects.increment()
                logger.notice("broker connection re-established")
                if connection === consumerConnection { _ = await state.cancelStale() }
            default:
                break
            }
        }
    }
}

/// A mutual-exclusion lock for async code (FIFO).
final class AsyncLock: Sendable {
    private let state = Mutex<(locked: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func run<T: Sendable>(_ body: () async throws -> T) async rethrows -> T {
        await acquire()
        defer { release() }
        return try await body()
    }

    private func acquire() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if !s.locked { s.locked = true; return true }
                s.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    private func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty { s.locked = false; return nil }
            return s.waiters.removeFirst()
        }
        next?.resume()
    }
}
