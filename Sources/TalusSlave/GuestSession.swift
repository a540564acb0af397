// The guest protocol server on one part's channel socket (DESIGN §7): connects to the unix socket
// libvirt bound for the VM's virtio-serial port, decodes frames with `FrameDecoder`, applies
// `GuestProtocolState`, answers hello with welcome, forwards reports in order, watches the agent's
// heartbeats, and sends `cancel` when asked. Non-blocking (SwiftNIO); a hostile guest can make it
// count errors, never crash or stall the slave.

import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
import TalusModel

/// Something that ends, or may end, a part (from the guest, libvirt, timers or the slave).
public enum PartSignal: Sendable, Equatable {
    case guestHello(agent: String)
    case toolStarted
    case guestFinished(exitCode: Int, reason: String?)
    /// The channel reached end of file (QEMU closed it: the VM is gone or going).
    case channelClosed
    /// The channel could not be opened.
    case channelFailed(String)
    /// The agent went silent after saying hello.
    case guestSilent
    /// The agent did not say hello in time.
    case bootTimeout
    /// The guest produced too many protocol errors.
    case protocolFlood
    /// libvirt reports the domain stopped (with libvirt's detail).
    case domainStopped(String)
    /// The part's VM deadline passed.
    case deadline
    /// The slave cancels the part (job cancelled, shutdown, lost delivery).
    case cancel(outcome: PartOutcome, reason: String)
    /// The guest did not stop within the grace after a cancel.
    case cancelGraceOver
}

/// One part's guest channel.
public final class GuestSession: Sendable {
    let limits: GuestLimits
    let logger: Logger
    let metrics: SlaveMetrics?
    private let state: Mutex<GuestProtocolState>
    private let outgoing: AsyncStream<GuestFrame>.Continuation
    private let outgoingStream: AsyncStream<GuestFrame>
    private let reportsContinuation: AsyncStream<ToolReport>.Continuation
    /// Reports to relay, in the order the guest sent them; ends when the session ends.
    public let reports: AsyncStream<ToolReport>
    private let activity: Mutex<Activity>
    /// Reports waiting to be relayed above this many bytes pause reading from the guest.
    let maxBacklogBytes: Int

    struct Activity {
        var lastFrame: ContinuousClock.Instant
        var backlogBytes = 0
        var hello = false
        var finished = false
    }

    public init(token: String, limits: GuestLimits, logger: Logger, metrics: SlaveMetrics? = nil, maxBacklogBytes: Int = 64 << 20) {
        self.limits = limits
        self.logger = logger
        self.metrics = metrics
        self.maxBacklogBytes = maxBacklogBytes
        state = Mutex(GuestProtocolState(token: token, limits: limits))
        (outgoingStream, outgoing) = AsyncStream.makeStream(of: GuestFrame.self)
        (reports, reportsContinuation) = AsyncStream.makeStream(of: ToolReport.self)
        activity = Mutex(Activity(lastFrame: .now))
    }

    /// Protocol errors so far, summarized ("2 garbage, 1 bad_token"), or nil.
    public var errorSummary: String? { state.withLock { $0.errorSummary } }

    /// Protocol errors so far by kind.
    public var errors: [GuestProtocolErrorKind: Int] { state.withLock { $0.errors } }

    /// Sends `frame` to the guest (queued; written in order).
    public func send(_ frame: GuestFrame) { outgoing.yield(frame) }

    /// The relay calls this after relaying a report, so reading can go on.
    public func relayed(_ report: ToolReport) {
        let size = Self.weight(report)
        activity.withLock { $0.backlogBytes -= size; $0.lastFrame = .now }
    }

    static func weight(_ report: ToolReport) -> Int {
        if case .file(let chunk) = report { return chunk.data.count + 256 }
        return 256
    }

    /// Serves the channel at `socketPath` until it closes or the calling task is cancelled,
    /// reporting what happens through `signal`. Ends ``reports`` when it returns.
    public func run(socketPath: String, signal: @escaping @Sendable (PartSignal) -> Void) async {
        defer { reportsContinuation.finish() }
        activity.withLock { $0.lastFrame = .now }
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await Self.connect(socketPath)
        } catch is CancellationError {
            return
        } catch {
            signal(.channelFailed("cannot open the guest channel \(socketPath): \(error)"))
            return
        }
        let started = ContinuousClock.now
        do {
            try await channel.executeThenClose { inbound, outbound in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { [outgoingStream] in
                        for await frame in outgoingStream {
                            try await outbound.write(ByteBuffer(bytes: try FrameEncoder.encode(frame)))
                        }
                    }
                    group.addTask { await self.watch(since: started, signal: signal) }
                    try await self.read(inbound, signal: signal)
                    group.cancelAll()
                }
            }
        } catch is CancellationError {
        } catch {
            logger.debug("guest channel ended", metadata: ["error": "\(error)"])
        }
        if !Task.isCancelled { signal(.channelClosed) }
    }

    private func read(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>, signal: @escaping @Sendable (PartSignal) -> Void) async throws {
        var decoder = FrameDecoder(maxFrameSize: limits.maxFrameBytes)
        for try await buffer in inbound {
            decoder.append(buffer.readableBytesView)
            while let item = decoder.next() {
                let actions = state.withLock { $0.handle(item) }
                for action in actions { apply(action, signal: signal) }
            }
            // Reports pile up when the broker is slow or away: stop reading (the guest's writes
            // block) until the relay catches up.
            while activity.withLock({ $0.backlogBytes > maxBacklogBytes }) {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    private func apply(_ action: GuestAction, signal: @Sendable (PartSignal) -> Void) {
        switch action {
        case .reply(let frame): send(frame)
        case .hello(let agent):
            activity.withLock { $0.hello = true; $0.lastFrame = .now }
            logger.debug("guest agent said hello", metadata: ["agent": "\(agent)"])
            signal(.guestHello(agent: agent))
        case .started:
            activity.withLock { $0.lastFrame = .now }
            signal(.toolStarted)
        case .heartbeat:
            activity.withLock { $0.lastFrame = .now }
        case .relay(let report):
            activity.withLock { $0.lastFrame = .now; $0.backlogBytes += Self.weight(report) }
            reportsContinuation.yield(report)
        case .finished(let code, let reason):
            activity.withLock { $0.finished = true }
            signal(.guestFinished(exitCode: code, reason: reason))
        case .error(let kind, let detail):
            metrics?.protocolError(kind)
            logger.notice("guest protocol error", metadata: ["kind": "\(kind.rawValue)", "detail": "\(detail.prefix(300))"])
        case .tooManyErrors:
            signal(.protocolFlood)
        }
    }

    /// The boot and heartbeat deadlines.
    private func watch(since start: ContinuousClock.Instant, signal: @Sendable (PartSignal) -> Void) async {
        var warned = false
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            let now = ContinuousClock.now
            let a = activity.withLock { $0 }
            if a.finished || warned { continue }
            if !a.hello {
                if now - start > limits.bootTimeout { warned = true; signal(.bootTimeout) }
            } else if now - a.lastFrame > limits.heartbeatTimeout && a.backlogBytes <= maxBacklogBytes {
                warned = true
                signal(.guestSilent)
            }
        }
    }

    /// Connects to the socket, which libvirt creates when the domain starts (retried briefly).
    static func connect(_ path: String) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        let deadline = ContinuousClock.now.advanced(by: .seconds(10))
        while true {
            do {
                return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(unixDomainSocketPath: path) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
            } catch {
                if ContinuousClock.now >= deadline { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }
}
