// Helpers for the Libvirt tests: connections, domain cleanup that runs whether the test passes or
// fails, an event collector that tests wait on with deadlines, and a raw RFB handshake.

import Foundation
import Libvirt
import Synchronization
import TalusTestSupport
import Testing

/// libvirt's in-process test driver: fast, runs nothing, no VNC ports. Domains defined in it live
/// while any connection of this process is open, so tests use unique names.
let testDriverURI = "test:///default"

/// A connection to the real libvirtd (`TALUS_TEST_LIBVIRT_URI`, qemu:///system).
func systemConnection() async throws -> LibvirtConnection {
    try await LibvirtConnection(uri: try TestEnvironment.libvirtURI())
}

/// Runs `body`, then removes (destroys and undefines) every domain named in `names`, also when
/// `body` throws, so a failing test leaves no domain behind.
func withDomainsRemoved<T>(
    _ connection: LibvirtConnection, _ names: [String], _ body: () async throws -> T
) async throws -> T {
    let result: Result<T, any Error>
    do {
        result = .success(try await body())
    } catch {
        result = .failure(error)
    }
    for name in names {
        do {
            try await connection.removeDomain(named: name)
        } catch {
            Issue.record("cleanup of domain \(name) failed: \(error)")
        }
    }
    return try result.get()
}

/// Collects lifecycle events in the background; tests wait for the ones they expect with a deadline.
final class EventCollector: Sendable {
    private final class Box: Sendable {
        let events = Mutex<[DomainLifecycleEvent]>([])
    }
    private let box = Box()
    private let task: Task<Void, Never>

    init(_ sequence: DomainLifecycleEvents) {
        let box = self.box
        task = Task {
            for await event in sequence { box.events.withLock { $0.append(event) } }
        }
    }

    deinit { stop() }

    /// Cancels the consuming task, which ends the sequence and deregisters the callback.
    func stop() { task.cancel() }

    var all: [DomainLifecycleEvent] { box.events.withLock { $0 } }

    /// The events of one domain, in order.
    func kinds(of name: String) -> [DomainLifecycleEvent.Kind] {
        all.filter { $0.domainName == name }.map(\.kind)
    }

    /// Waits until an event of domain `name` with `kind` has arrived.
    func waitFor(
        _ name: String, _ kind: DomainLifecycleEvent.Kind, timeout: Duration = .seconds(20)
    ) async throws {
        try await waitUntil("event \(kind) of \(name); got \(kinds(of: name))", timeout: timeout) {
            kinds(of: name).contains(kind)
        }
    }
}

/// A unix-socket proxy in front of libvirtd's socket, so a test can cut a client's connection
/// (what a libvirtd restart does to clients) without touching the shared daemon.
final class UnixSocketProxy: Sendable {
    let path: String
    private let target: String
    private let listener: Int32
    private let sockets = Mutex<[Int32]>([])

    init(path: String, target: String) throws {
        self.path = path
        self.target = target
        unlink(path)
        listener = try UnixSocketProxy.socketAddress(path) { fd, address, length in
            guard bind(fd, address, length) == 0, listen(fd, 8) == 0 else {
                throw TestSupportError("cannot listen on \(path): errno \(errno)")
            }
        }
        let listener = self.listener
        DispatchQueue.global().async { [self] in
            while true {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { return }
                guard let upstream = try? UnixSocketProxy.socketAddress(target, { fd, address, length in
                    guard connect(fd, address, length) == 0 else { throw TestSupportError("connect: errno \(errno)") }
                }) else {
                    close(client)
                    continue
                }
                sockets.withLock { $0 += [client, upstream] }
                DispatchQueue.global().async { UnixSocketProxy.pump(from: client, to: upstream) }
                DispatchQueue.global().async { UnixSocketProxy.pump(from: upstream, to: client) }
            }
        }
    }

    deinit { stop() }

    /// Cuts every proxied connection: both ends see EOF.
    func cutConnections() {
        for fd in sockets.withLock({ $0 }) { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// Cuts the connections and stops accepting new ones.
    func stop() {
        cutConnections()
        shutdown(listener, Int32(SHUT_RDWR))
        unlink(path)
    }

    private static func pump(from source: Int32, to destination: Int32) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress!, $0.count) }
            guard n > 0 else { break }
            var written = 0
            while written < n {
                let w = buffer.withUnsafeBytes { write(destination, $0.baseAddress! + written, n - written) }
                guard w > 0 else { break }
                written += w
            }
        }
        shutdown(destination, Int32(SHUT_RDWR))
    }

    /// A new unix socket with `body` applied to it and the address of `path`.
    private static func socketAddress(
        _ path: String, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) throws -> Void
    ) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket() failed: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw TestSupportError("socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        do {
            try withUnsafePointer(to: &address) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }
}
