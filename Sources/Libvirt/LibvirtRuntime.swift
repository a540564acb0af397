// LibvirtRuntime: what libvirt needs once per process — a silenced default error printer, the
// default event loop implementation driven by a thread of its own, and a pool of threads on which
// every blocking libvirt call runs (never the Swift concurrency cooperative pool).

import CLibvirt
import Logging
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

let libvirtLogger = Logger(label: "talus.libvirt")

/// Process-wide libvirt state, set up on first use (the first ``LibvirtConnection``).
///
/// - `virSetErrorFunc` with a no-op, so libvirt does not print every error to stderr (errors
///   reach the caller as ``LibvirtError`` instead).
/// - `virEventRegisterDefaultImpl()` once, then `virEventRunDefaultImpl()` in a loop on a
///   dedicated thread named `libvirt-events`, for domain events, close callbacks and keepalive.
///   The thread lives as long as the process.
/// - A ``NIOPosix/NIOThreadPool`` (``defaultThreadPool``) on which connections run their blocking
///   calls unless given another pool.
public enum LibvirtRuntime {
    /// The threads (8) on which connections run blocking libvirt calls by default. Started on
    /// first use, never shut down.
    public static var defaultThreadPool: NIOThreadPool { shared.threadPool }

    /// Sets up the process-wide state if that has not happened yet; throws if libvirt could not
    /// register its event loop. ``LibvirtConnection`` calls this itself; calling it earlier only
    /// moves the cost.
    public static func start() throws(LibvirtError) {
        if let error = shared.startupError { throw error }
    }

    /// Whether the event loop thread is running (it starts with ``start()``).
    public static var isEventLoopRunning: Bool { shared.startupError == nil }

    static let shared = Shared()

    final class Shared: Sendable {
        let threadPool: NIOThreadPool
        let startupError: LibvirtError?

        init() {
            // A no-op global error handler: libvirt's default one prints to stderr.
            virSetErrorFunc(nil) { _, _ in }
            threadPool = NIOThreadPool(numberOfThreads: 8)
            threadPool.start()
            if virInitialize() < 0 {
                startupError = LibvirtError.last("virInitialize")
                return
            }
            if virEventRegisterDefaultImpl() < 0 {
                startupError = LibvirtError.last("virEventRegisterDefaultImpl")
                return
            }
            startupError = Shared.startEventThread()
        }

        private static func startEventThread() -> LibvirtError? {
            #if canImport(Darwin)
            var thread: pthread_t?
            #else
            var thread = pthread_t()
            #endif
            let rc = pthread_create(&thread, nil, { _ in
                _ = CLibvirt_setCurrentThreadName("libvirt-events")
                LibvirtRuntime.runEventLoop()
            }, nil)
            guard rc == 0 else {
                return LibvirtError(
                    code: .systemError, message: "pthread_create failed: \(rc)",
                    operation: "start libvirt event thread")
            }
            #if canImport(Darwin)
            if let thread { pthread_detach(thread) }
            #else
            pthread_detach(thread)
            #endif
            libvirtLogger.debug("libvirt event loop thread started")
            return nil
        }
    }

    /// The body of the event thread: `virEventRunDefaultImpl()` forever. A failing iteration is
    /// logged and retried after a short pause, so a persistent failure cannot spin a core.
    private static func runEventLoop() -> Never {
        while true {
            if virEventRunDefaultImpl() < 0 {
                let error = LibvirtError.last("virEventRunDefaultImpl")
                libvirtLogger.error("libvirt event loop iteration failed", metadata: ["error": "\(error)"])
                usleep(100_000)
            }
        }
    }

    /// Runs `body` on a thread of `pool` and returns its result. Every libvirt call of this module
    /// goes through here. Once submitted, the work runs to completion even if the calling task is
    /// cancelled (libvirt calls are bounded by libvirt's own timeouts and keepalive), so cleanup
    /// such as `destroy()` still happens in a cancelled task.
    static func run<T: Sendable>(
        on pool: NIOThreadPool, _ body: @escaping @Sendable () throws(LibvirtError) -> T
    ) async throws(LibvirtError) -> T {
        let result: Result<T, LibvirtError> = await withCheckedContinuation { continuation in
            pool.submit { state in
                switch state {
                case .active:
                    continuation.resume(returning: Result(catching: body))
                case .cancelled:
                    continuation.resume(
                        returning: .failure(
                            LibvirtError(
                                code: .internalError, message: "the libvirt thread pool is shut down",
                                operation: "submit libvirt call")))
                }
            }
        }
        return try result.get()
    }

    // MARK: The choke point: libvirt return values to LibvirtError, on the calling thread.

    /// `rc` of a libvirt call that returns -1 on failure; throws that thread's last error.
    @discardableResult
    static func check(_ operation: String, _ rc: Int32) throws(LibvirtError) -> Int32 {
        if rc < 0 { throw LibvirtError.last(operation) }
        return rc
    }

    /// A pointer returned by a libvirt call that returns NULL on failure.
    static func check<P>(_ operation: String, _ pointer: P?) throws(LibvirtError) -> P {
        guard let pointer else { throw LibvirtError.last(operation) }
        return pointer
    }

    /// The UUID string of a domain handle (kept in the handle: no RPC); empty if unavailable.
    static func uuidString(of domain: OpaquePointer) -> String {
        var buffer = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
        guard virDomainGetUUIDString(domain, &buffer) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The name of a domain handle (kept in the handle: no RPC); empty if unavailable.
    static func name(of domain: OpaquePointer) -> String {
        virDomainGetName(domain).map { String(cString: $0) } ?? ""
    }

    /// A `char *` returned by a libvirt call (NULL on failure) that the caller must free.
    static func takeString(_ operation: String, _ pointer: UnsafeMutablePointer<CChar>?) throws(LibvirtError)
        -> String
    {
        let p = try check(operation, pointer)
        defer { free(p) }
        return String(cString: p)
    }
}
