// One part, start to end (DESIGN §7): part-started → image chain and tool bundle from the cache →
// qcow2 overlay → config ISO → transient domain → guest protocol → end (finished, cancel, VM
// deadline, silent guest, dead domain) → domain destroyed, files removed → part-ended, confirmed.
// The caller acks the AMQP delivery only after `execute()` says the end was reported.

import Foundation
import Libvirt
import Logging
import Synchronization
import TalusCore
import TalusModel

/// The files of one part in its run directory.
public struct PartPaths: Sendable {
    public static let socketName = "agent.sock"
    public let directory: String
    public var overlay: String { directory + "/overlay.qcow2" }
    public var iso: String { directory + "/config.iso" }
    public var config: String { directory + "/config.json" }
    public var socket: String { directory + "/" + Self.socketName }
    public var serialLog: String { directory + "/serial.log" }
    public init(runDir: String, run: String) { directory = runDir + "/" + run }
}

/// What every part of this slave shares.
public struct PartEnvironment: Sendable {
    public var slaveID: String
    public var host: VMHost
    public var artifacts: ArtifactStore
    public var agentPath: String
    public var runDir: String
    public var limits: GuestLimits
    public var isoMaxBytes: Int64
    public var isolatedNetwork: String
    public var logger: Logger
    public var metrics: SlaveMetrics?

    public init(slaveID: String, host: VMHost, artifacts: ArtifactStore, agentPath: String, runDir: String,
                limits: GuestLimits = GuestLimits(), isoMaxBytes: Int64 = 256 << 20, isolatedNetwork: String = "talus-isolated",
                logger: Logger = Logger(label: "talus.slave.part"), metrics: SlaveMetrics? = nil) {
        self.slaveID = slaveID; self.host = host; self.artifacts = artifacts; self.agentPath = agentPath
        self.runDir = runDir; self.limits = limits; self.isoMaxBytes = isoMaxBytes; self.isolatedNetwork = isolatedNetwork
        self.logger = logger; self.metrics = metrics
    }

    /// The owner tag of this slave's part domains: `part:<slave uuid>:`.
    public var ownerPrefix: String { "part:\(slaveID):" }
}

/// How a part ended.
public struct PartResult: Sendable, Equatable {
    public var outcome: PartOutcome
    public var reason: String?
    public var exitCode: Int?
    public var serialTail: String?
    /// The part-ended event was confirmed by the broker: the delivery may be settled.
    public var reported: Bool
}

/// One execution of a part.
public final class PartRun: Sendable {
    public let part: PartMessage
    public let run: String
    public let events: RunEvents
    let env: PartEnvironment
    let logger: Logger
    /// When the slave received the part (for the overhead metric).
    let received: ContinuousClock.Instant
    private let signals: AsyncStream<PartSignal>
    private let signal: AsyncStream<PartSignal>.Continuation
    private let cancelled = Mutex<(PartOutcome, String)?>(nil)
    private let domainName: String
    /// When the domain was created and when the guest said hello (for metrics and benchmarks).
    public let timeline = Mutex<Timeline>(Timeline())

    public struct Timeline: Sendable {
        public var domainCreated: ContinuousClock.Instant?
        public var hello: ContinuousClock.Instant?
        public var ended: ContinuousClock.Instant?
    }

    public init(part: PartMessage, env: PartEnvironment, sink: any EventSink, run: String = UUID().uuidString.lowercased(),
                received: ContinuousClock.Instant = .now) {
        self.part = part
        self.run = run
        self.env = env
        self.received = received
        events = RunEvents(slave: env.slaveID, part: part, run: run, sink: sink)
        var logger = env.logger
        logger[metadataKey: "job"] = "\(part.job.hex)"
        logger[metadataKey: "idx"] = "\(part.idx)"
        logger[metadataKey: "run"] = "\(run)"
        self.logger = logger
        (signals, signal) = AsyncStream.makeStream(of: PartSignal.self)
        domainName = "talus-" + run
    }

    /// The libvirt domain name of this run.
    public var domain: String { domainName }
    /// The owner tag of this run's domain.
    public var owner: String { "\(env.ownerPrefix)\(part.job.hex):\(part.idx):\(run)" }
    public var paths: PartPaths { PartPaths(runDir: env.runDir, run: run) }

    /// Stops the part: the guest gets a `cancel`, the VM is destroyed after the grace. Before the
    /// VM exists, the part ends without booting. The first cancel wins.
    public func cancel(outcome: PartOutcome = .cancelled, reason: String) {
        let first = cancelled.withLock { c -> Bool in
            guard c == nil else { return false }
            c = (outcome, reason)
            return true
        }
        if first { signal.yield(.cancel(outcome: outcome, reason: reason)) }
    }

    public var isCancelled: Bool { cancelled.withLock { $0 != nil } }

    /// Runs the part and reports its start and end. Never throws: every failure becomes the
    /// part's outcome. `reported` is false only when part-ended could not be published (the
    /// sink was closed): the caller must then requeue the delivery.
    public func execute() async -> PartResult {
        do {
            try await events.emit(.partStarted)
        } catch {
            logger.warning("part-started could not be published", metadata: ["error": "\(error)"])
            return PartResult(outcome: .failure, reason: "\(error)", exitCode: nil, serialTail: nil, reported: false)
        }
        logger.info("part started", metadata: ["tool": "\(part.tool.name)", "image": "\(part.image.id.hex)"])
        var result = await runVM()
        timeline.withLock { $0.ended = .now }
        switch result.outcome {
        case .success: env.metrics?.partsDone.increment()
        case .failure: env.metrics?.partsFailed.increment()
        case .cancelled: env.metrics?.partsCancelled.increment()
        }
        do {
            try await events.emit(.partEnded(outcome: result.outcome, reason: result.reason, exitCode: result.exitCode,
                                             serialTail: result.serialTail))
            result.reported = true
        } catch {
            logger.warning("part-ended could not be published", metadata: ["error": "\(error)"])
        }
        logger.info("part ended", metadata: [
            "outcome": "\(result.outcome.rawValue)", "reason": "\(result.reason ?? "")", "exit_code": "\(result.exitCode.map(String.init) ?? "")"])
        return result
    }

    // MARK: - The VM

    private func end(_ outcome: PartOutcome, _ reason: String?, exitCode: Int? = nil) -> PartResult {
        PartResult(outcome: outcome, reason: reason, exitCode: exitCode, serialTail: nil, reported: false)
    }

    private func runVM() async -> PartResult {
        if let (outcome, reason) = cancelled.withLock({ $0 }) { return end(outcome, reason) }
        let paths = self.paths
        var image: ImageLease?
        var bundle: BundleLease?
        var domain: LibvirtDomain?
        var session: GuestSession?
        var tasks: [Task<Void, Never>] = []
        var relay: Task<Void, Never>?
        var result: PartResult
        do {
            try FileManager.default.createDirectory(atPath: paths.directory, withIntermediateDirectories: true)
            chmod(paths.directory, 0o755)
            // Image chain and bundle in parallel; whichever fails first fails the part.
            async let imageLease = env.artifacts.acquireImage(part.image, logger: logger)
            async let bundleLease = env.artifacts.acquireBundle(name: part.tool.name, commit: part.tool.commit)
            do { image = try await imageLease } catch { bundle = try? await bundleLease; throw PartSetupError("image \(part.image.id.hex): \(error)") }
            do { bundle = try await bundleLease } catch { throw PartSetupError("tool bundle \(part.tool.name)@\(part.tool.commit): \(error)") }
            if let (outcome, reason) = cancelled.withLock({ $0 }) { throw PartCancelled(outcome: outcome, reason: reason) }

            try await runCommand("qemu-img", ["create", "-q", "-f", "qcow2", "-b", image!.path, "-F", "qcow2", paths.overlay],
                                 timeout: .seconds(120))
            let token = randomToken()
            let config = GuestConfig(
                job: part.job, idx: part.idx, attempt: part.attempt, run: run, tool: part.tool, entry: part.tool.entry,
                params: part.params, token: token, bundle: "tool.tar.gz",
                heartbeatSeconds: max(1, Int(env.limits.agentHeartbeat.secondsDouble.rounded())), maxFileBytes: env.limits.maxFileBytes)
            try TalusJSON.encoder().encode(config).write(to: URL(fileURLWithPath: paths.config))
            try await ConfigISO.build(paths.iso, files: [
                "config.json": paths.config, "tool.tar.gz": bundle!.path, "talus-agent": env.agentPath,
            ], maxBytes: env.isoMaxBytes)

            let xml = try domainXML(paths)
            let session0 = GuestSession(token: token, limits: env.limits, logger: logger, metrics: env.metrics)
            session = session0
            let signal = self.signal
            env.host.watch(domainName) { event in
                if event.kind.isStopped { signal.yield(.domainStopped("\(event.kind)")) }
            }
            let connection = try await env.host.connection()
            domain = try await connection.createDomain(xml, options: .autoDestroy)
            let created = ContinuousClock.now
            timeline.withLock { $0.domainCreated = created }
            env.metrics?.partOverheadSeconds.record(duration: created - received)
            logger.debug("domain created", metadata: ["domain": "\(domainName)", "overhead": "\(created - received)"])

            tasks.append(Task { await session0.run(socketPath: paths.socket, signal: { signal.yield($0) }) })
            let events = self.events
            relay = Task {
                for await report in session0.reports {
                    do { try await events.emit(.report(report)) } catch { break }
                    session0.relayed(report)
                }
            }
            let timeout = Duration.seconds(part.vm.timeoutS)
            tasks.append(Task {
                try? await Task.sleep(for: timeout)
                if !Task.isCancelled { signal.yield(.deadline) }
            })
            result = await decide(session: session0)
        } catch let c as PartCancelled {
            result = end(c.outcome, c.reason)
        } catch let e as PartSetupError {
            result = end(.failure, "setting up the VM failed: \(e.description)")
        } catch {
            result = end(.failure, "setting up the VM failed: \(error)")
        }

        // Tear down: the VM first (it may still write), then the channel, the relay, the files.
        env.host.unwatch(domainName)
        if let domain {
            logger.debug("destroying the domain")
            do { _ = try await VMHost.remove(domain) } catch { logger.warning("destroying the domain failed", metadata: ["error": "\(error)"]) }
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        await relay?.value
        if result.outcome != .success, domain != nil {
            result.serialTail = Self.tail(of: paths.serialLog)
            if let errors = session?.errorSummary, !(result.reason ?? "").contains("protocol errors") {
                result.reason = (result.reason ?? "") + " (guest protocol errors: \(errors))"
            }
        }
        await image?.release()
        await bundle?.release()
        try? FileManager.default.removeItem(atPath: paths.directory)
        return result
    }

    /// Waits for the signals that end the part and turns them into its result.
    private func decide(session: GuestSession) async -> PartResult {
        var cancelPending: (PartOutcome, String)?
        var hello = false
        var graceTask: Task<Void, Never>?
        var domainStoppedDetail: String?
        defer { graceTask?.cancel() }
        let signal = self.signal
        for await s in signals {
            switch s {
            case .guestHello:
                hello = true
                let now = ContinuousClock.now
                let created = timeline.withLock { t -> ContinuousClock.Instant? in t.hello = now; return t.domainCreated }
                if let created { env.metrics?.vmBootSeconds.record(duration: now - created) }
                logger.debug("guest agent connected")
                if let (_, reason) = cancelPending { session.send(.cancel(reason: reason)) }
            case .toolStarted:
                logger.debug("tool started")
            case .guestFinished(let code, let reason):
                logger.debug("guest agent finished", metadata: ["exit_code": "\(code)"])
                if code == 0 { return end(.success, nil, exitCode: 0) }
                if let (outcome, why) = cancelPending { return end(outcome, why, exitCode: code) }
                return end(.failure, reason ?? "the tool exited with status \(code)", exitCode: code)
            case .channelClosed:
                if let (outcome, why) = cancelPending { return end(outcome, why) }
                let detail = domainStoppedDetail.map { " (\($0))" } ?? ""
                return end(.failure, hello
                    ? "the VM stopped\(detail) before the guest agent reported the end"
                    : "the VM stopped\(detail) before the guest agent connected")
            case .domainStopped(let detail):
                // The channel's end of file follows, after any last frames: wait for it briefly.
                domainStoppedDetail = detail
                graceTask?.cancel()
                graceTask = Task {
                    try? await Task.sleep(for: .seconds(3))
                    if !Task.isCancelled { signal.yield(.channelClosed) }
                }
            case .channelFailed(let why):
                if let (outcome, reason) = cancelPending { return end(outcome, reason) }
                return end(.failure, why)
            case .guestSilent:
                if let (outcome, reason) = cancelPending { return end(outcome, reason) }
                return end(.failure, "the guest agent sent nothing for \(env.limits.heartbeatTimeout) (guest.heartbeat_timeout)")
            case .bootTimeout:
                if let (outcome, reason) = cancelPending { return end(outcome, reason) }
                return end(.failure, "the guest agent did not connect within \(env.limits.bootTimeout) of the VM starting (guest.boot_timeout)")
            case .protocolFlood:
                return end(.failure, "the guest sent too many malformed or unauthorized frames (\(session.errorSummary ?? ""))")
            case .deadline:
                if let (outcome, reason) = cancelPending { return end(outcome, reason) }
                return end(.failure, "the VM ran past its deadline of \(part.vm.timeoutS) s (vm.timeout_s)")
            case .cancel(let outcome, let reason):
                guard cancelPending == nil else { continue }
                cancelPending = (outcome, reason)
                guard hello else { return end(outcome, reason) }
                logger.info("cancelling the part", metadata: ["reason": "\(reason)"])
                session.send(.cancel(reason: reason))
                let grace = env.limits.cancelGrace
                graceTask?.cancel()
                graceTask = Task {
                    try? await Task.sleep(for: grace)
                    if !Task.isCancelled { signal.yield(.cancelGraceOver) }
                }
            case .cancelGraceOver:
                if let (outcome, reason) = cancelPending { return end(outcome, reason) }
            }
        }
        return end(.failure, "the part was abandoned")
    }

    private func domainXML(_ paths: PartPaths) throws -> DomainXML {
        var xml = DomainXML(name: domainName, type: env.host.domainType, memoryMiB: part.vm.memoryMB, vcpus: part.vm.cpus)
        xml.disks = [.init(path: paths.overlay, target: "vda"), .cdrom(path: paths.iso, target: "hdc")]
        xml.channels = [.init(socketPath: paths.socket, targetName: "org.talus.agent.0")]
        xml.serial = .file(paths.serialLog)
        xml.vnc = .init(listen: "127.0.0.1", password: randomVNCPassword(),
                        passwordValidUntil: Date().addingTimeInterval(Double(part.vm.timeoutS) + 600))
        switch part.network {
        case .none: xml.interfaces = []
        case .user: xml.interfaces = [.init(.user)]
        case .isolated: xml.interfaces = [.init(.network(env.isolatedNetwork))]
        }
        xml.owner = owner
        return xml
    }

    /// The last lines of the serial console (at most 4 KiB, whole lines, printable).
    static func tail(of path: String, bytes: Int = 4096) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > UInt64(bytes) ? size - UInt64(bytes) : 0
        try? handle.seek(toOffset: start)
        guard var data = try? handle.readToEnd(), !data.isEmpty else { return nil }
        if start > 0, let newline = data.firstIndex(of: UInt8(ascii: "\n")) { data = data[(newline + 1)...] }
        let text = String(decoding: data, as: UTF8.self).unicodeScalars.filter { $0 == "\n" || $0 == "\t" || $0.value >= 0x20 && $0.value != 0x7F }
        return String(String.UnicodeScalarView(text))
    }
}

struct PartSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

struct PartCancelled: Error {
    let outcome: PartOutcome
    let reason: String
}

/// The config ISO (DESIGN §7): volume label `TALUSCFG`, Rock Ridge and Joliet.
public enum ConfigISO {
    /// Builds `output` from `files` (name on the ISO → path on the host) without copying them.
    public static func build(_ output: String, files: [String: String], maxBytes: Int64) async throws {
        var total: Int64 = 0
        for (name, path) in files {
            guard let size = FileCache.stat(path)?.size else { throw PartSetupError("\(name): \(path) is missing") }
            total += size
        }
        guard total <= maxBytes else {
            throw PartSetupError("the config ISO would hold \(total) bytes, more than guest.iso_max_bytes (\(maxBytes))")
        }
        let grafts = files.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        try await runCommand("genisoimage", ["-quiet", "-V", "TALUSCFG", "-r", "-J", "-o", output, "-graft-points"] + grafts,
                             timeout: .seconds(120))
    }
}
