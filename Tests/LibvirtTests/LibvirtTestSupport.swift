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

/// What a VNC server says in the first steps of the RFB handshake.
struct RFBGreeting {
    /// The 12-byte ProtocolVersion, e.g. `RFB 003.008\n`.
    var banner: String
    /// The security types offered after we answer `RFB 003.008\n` (1 = None, 2 = VNC auth).
    var securityTypes: [UInt8]
}

/// Connects to 127.0.0.1:`port`, reads the banner, answers with version 3.8 and reads the list of
/// security types. Blocking socket I/O with a receive timeout, on a Dispatch thread (not the Swift
/// concurrency pool).
func rfbGreeting(host: String = "127.0.0.1", port: Int, timeout: Duration = .seconds(10)) async throws -> RFBGreeting {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            continuation.resume(with: Result { try rfbGreetingBlocking(host: host, port: port, timeout: timeout) })
        }
    }
}

private func rfbGreetingBlocking(host: String, port: Int, timeout: Duration) throws -> RFBGreeting {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket() failed: errno \(errno)") }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr(host)
    let connected = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { throw TestSupportError("connect to \(host):\(port) failed: errno \(errno)") }

    func readExactly(_ count: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            guard n > 0 else { throw TestSupportError("RFB read failed after \(got) of \(count) bytes: errno \(errno)") }
            got += n
        }
        return buffer
    }

    let banner = String(decoding: try readExactly(12), as: UTF8.self)
    let reply = Array("RFB 003.008\n".utf8)
    guard send(fd, reply, reply.count, 0) == reply.count else { throw TestSupportError("RFB send failed") }
    let count = Int(try readExactly(1)[0])
    return RFBGreeting(banner: banner, securityTypes: count == 0 ? [] : try readExactly(count))
}
