// A raw RFB (VNC) client for the first handshake steps: enough to check that a VM's VNC server
// answers and which security types it offers (2 = VNC authentication, 1 = none).

import Foundation

/// What a VNC server says in the first steps of the RFB handshake.
public struct RFBGreeting: Sendable {
    /// The 12-byte ProtocolVersion, e.g. `RFB 003.008\n`.
    public var banner: String
    /// The security types offered after we answer `RFB 003.008\n` (1 = None, 2 = VNC auth).
    public var securityTypes: [UInt8]
}

/// Connects to 127.0.0.1:`port`, reads the banner, answers with version 3.8 and reads the list of
/// security types. Blocking socket I/O with a receive timeout, on a Dispatch thread (not the Swift
/// concurrency pool).
public func rfbGreeting(host: String = "127.0.0.1", port: Int, timeout: Duration = .seconds(10)) async throws -> RFBGreeting {
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
