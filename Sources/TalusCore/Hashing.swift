// SHA-256 of files, streamed (images are many GiB), with swift-crypto (SHA-NI where available).

import Crypto
import Foundation

/// Lowercase hex of a digest.
public func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0x0F)]) }
    return String(decoding: out, as: UTF8.self)
}

/// SHA-256 of `bytes` (a digest of 32 bytes).
public func sha256(_ bytes: some Sequence<UInt8>) -> [UInt8] {
    Array(SHA256.hash(data: Array(bytes)))
}

/// SHA-256 of the file at `path`, read in 1 MiB blocks on the calling thread (call it from a
/// thread that may block, e.g. through ``blockingIO(_:)``).
public func sha256OfFile(_ path: String) throws -> (hex: String, size: Int64) {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw POSIXErrorWithPath(errno: errno, path: path) }
    defer { close(fd) }
    var hasher = SHA256()
    var size: Int64 = 0
    let block = 1 << 20
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: block, alignment: 16)
    defer { buffer.deallocate() }
    while true {
        let n = read(fd, buffer.baseAddress, block)
        if n < 0 {
            if errno == EINTR { continue }
            throw POSIXErrorWithPath(errno: errno, path: path)
        }
        if n == 0 { break }
        hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        size += Int64(n)
    }
    return (hexString(hasher.finalize()), size)
}

/// A failed system call on a path.
public struct POSIXErrorWithPath: Error, CustomStringConvertible, Sendable {
    public let errno: Int32
    public let path: String
    public init(errno: Int32, path: String) { self.errno = errno; self.path = path }
    public var description: String { "\(path): \(String(cString: strerror(errno)))" }
}

/// Runs blocking work (file hashing, large copies) off the cooperative pool, on a new thread.
public func blockingIO<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            continuation.resume(with: Result { try work() })
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// A random token of `bytes` random bytes, URL-safe base64 without padding.
public func randomToken(bytes: Int = 32) -> String {
    var rng = SystemRandomNumberGenerator()
    let raw = (0..<bytes).map { _ in UInt8.random(in: 0...255, using: &rng) }
    return Data(raw).base64EncodedString()
        .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

/// A random VNC password: 8 characters (VNC authentication uses at most 8), letters and digits.
public func randomVNCPassword() -> String {
    let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
    var rng = SystemRandomNumberGenerator()
    return String((0..<8).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
}
