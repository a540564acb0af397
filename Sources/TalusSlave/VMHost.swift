// The slave's libvirt side: one connection (reopened with backoff when libvirtd goes away), the
// domain type, lifecycle events dispatched to the part that owns each domain, and the clean-up of
// domains a previous run of this slave left behind.

import Foundation
import Libvirt
import Logging
import Synchronization

/// libvirt for the slave.
public final class VMHost: Sendable {
    public let uri: String
    public let domainType: DomainType
    let logger: Logger
    private let state: Mutex<State>
    private let watchers = Mutex<[String: @Sendable (DomainLifecycleEvent) -> Void]>([:])

    struct State {
        var connection: LibvirtConnection
        var eventsTask: Task<Void, Never>?
    }

    private init(uri: String, domainType: DomainType, connection: LibvirtConnection, logger: Logger) {
        self.uri = uri
        self.domainType = domainType
        self.logger = logger
        state = Mutex(State(connection: connection, eventsTask: nil))
    }

    /// Opens `uri` and starts dispatching lifecycle events. With `auto`, a KVM test guest decides
    /// the domain type (``LibvirtConnection/probeDomainType(directory:timeout:)``, its firmware log
    /// in `probeDirectory`, which QEMU must reach: the run directory).
    public static func open(uri: String, domainType: DomainTypeSetting, probeDirectory: String = "/var/lib/talus/run",
                            logger: Logger = Logger(label: "talus.slave.libvirt")) async throws -> VMHost {
        let connection = try await LibvirtConnection(uri: uri, logger: logger)
        var type = DomainType.qemu
        switch domainType {
        case .kvm: type = .kvm
        case .qemu: type = .qemu
        case .auto:
            let probe = await connection.probeDomainType(directory: probeDirectory)
            type = probe.type
            logger.info("VM domain type chosen", metadata: ["type": "\(probe.type.rawValue)", "why": "\(probe.reason)"])
        }
        let host = VMHost(uri: uri, domainType: type, connection: connection, logger: logger)
        try await host.startEvents(connection)
        return host
    }

    private func startEvents(_ connection: LibvirtConnection) async throws {
        let events = try await connection.lifecycleEvents()
        let task = Task { [weak self] in
            for await event in events {
                guard let self else { return }
                let handler = self.watchers.withLock { $0[event.domainName] }
                handler?(event)
            }
        }
        state.withLock { $0.eventsTask = task }
    }

    /// A live connection: the current one, or a new one when libvirtd went away (retried with
    /// backoff for up to `patience`).
    public func connection(patience: Duration = .seconds(60)) async throws -> LibvirtConnection {
        let current = state.withLock { $0.connection }
        if !current.isClosed { return current }
        let deadline = ContinuousClock.now.advanced(by: patience)
        var delay = Duration.milliseconds(200)
        while true {
            do {
                let fresh = try await LibvirtConnection(uri: uri, logger: logger)
                let old = swapConnection(fresh)
                old?.cancel()
                try await startEvents(fresh)
                logger.notice("reconnected to libvirt", metadata: ["uri": "\(uri)"])
                return fresh
            } catch {
                if ContinuousClock.now >= deadline { throw error }
                logger.warning("libvirt unavailable; retrying", metadata: ["uri": "\(uri)", "error": "\(error)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    private func swapConnection(_ fresh: LibvirtConnection) -> Task<Void, Never>? {
        state.withLock { s in
            let t = s.eventsTask
            s.connection = fresh
            s.eventsTask = nil
            return t
        }
    }

    /// Calls `handler` with the lifecycle events of the domain `name` until ``unwatch(_:)``.
    public func watch(_ name: String, _ handler: @escaping @Sendable (DomainLifecycleEvent) -> Void) {
        watchers.withLock { $0[name] = handler }
    }

    public func unwatch(_ name: String) {
        _ = watchers.withLock { $0.removeValue(forKey: name) }
    }

    /// Destroys every domain whose owner tag starts with `ownerPrefix` (a previous run of this
    /// slave left them); returns their names.
    @discardableResult
    public func destroyDomains(ownerPrefix: String) async throws -> [String] {
        let connection = try await connection()
        var names: [String] = []
        for owned in try await connection.listDomains(ownerPrefix: ownerPrefix) {
            if try await Self.remove(owned.domain) {
                names.append(owned.domain.name)
                logger.notice("destroyed a leftover domain", metadata: ["domain": "\(owned.domain.name)", "owner": "\(owned.owner)"])
            }
        }
        return names
    }

    /// Destroys (and undefines) `domain`; false when it was gone already.
    static func remove(_ domain: LibvirtDomain) async throws -> Bool {
        let outcome: Result<Void, LibvirtError> = await {
            do throws(LibvirtError) { try await domain.remove(); return .success(()) } catch { return .failure(error) }
        }()
        switch outcome {
        case .success: return true
        case .failure(let error) where error.isNoDomain: return false
        case .failure(let error): throw error
        }
    }

    /// Closes the connection (domains created with auto-destroy go with it).
    public func close() async {
        let (connection, task) = state.withLock { ($0.connection, $0.eventsTask) }
        task?.cancel()
        await connection.close()
    }
}
