// The systemd notify protocol (sd_notify(3)) for `Type=notify` units, without libsystemd: a
// datagram with `READY=1`, `STOPPING=1`, `STATUS=...` to the socket in `NOTIFY_SOCKET`.

import Foundation

/// Sends state changes to systemd when the process runs under a `Type=notify` unit; does nothing
/// otherwise (NOTIFY_SOCKET unset).
public enum SystemdNotifier {
    /// `READY=1` plus a status line: call once the daemon serves.
    public static func ready(status: String? = nil) { send("READY=1" + (status.map { "\nSTATUS=\($0)" } ?? "")) }
    /// `STOPPING=1`: call when a graceful shutdown begins.
    public static func stopping() { send("STOPPING=1") }
    /// `STATUS=...`: a one-line status shown by `systemctl status`.
    public static func status(_ text: String) { send("STATUS=" + text) }

    /// Sends `message` to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    /// Returns false when there is no socket or sending failed.
    @discardableResult
    public static func send(_ message: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(path.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard pathBytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in pathBytes.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count)
        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &addr) { ptr in
            ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        return sent == bytes.count
    }
}
