// The slave's metrics (DESIGN §10), through swift-metrics (exported as Prometheus text by
// `OpsServer`): parts running/done/failed, VM boot seconds, image sync bytes and seconds, guest
// protocol errors by kind, AMQP reconnects.

import Metrics

/// Kinds of guest protocol errors (the `kind` label of `talus_slave_guest_protocol_errors_total`).
public enum GuestProtocolErrorKind: String, Sendable, CaseIterable {
    /// Bytes that were not part of any frame.
    case garbage
    /// A frame longer than `guest.max_frame_bytes`.
    case oversized
    /// A frame whose JSON is not a valid frame.
    case malformed
    /// A hello with the wrong token.
    case badToken = "bad_token"
    /// A frame before a valid hello.
    case unauthenticated
    /// A frame that makes no sense now (a second hello, anything after finished, host frames,
    /// file chunks out of order).
    case outOfOrder = "out_of_order"
    /// A file over the size limits or whose sha256 does not match.
    case fileRejected = "file_rejected"
}

/// The slave's metric handles.
public struct SlaveMetrics: Sendable {
    public let partsRunning: Gauge
    public let partsDone: Counter
    public let partsFailed: Counter
    public let partsCancelled: Counter
    public let vmBootSeconds: Timer
    public let partOverheadSeconds: Timer
    public let imageSyncBytes: Counter
    public let imageSyncSeconds: Timer
    public let imageVerifySeconds: Timer
    public let cacheEvictions: Counter
    public let amqpReconnects: Counter
    public let unreadableMessages: Counter
    private let protocolErrors: [GuestProtocolErrorKind: Counter]

    public init() {
        partsRunning = Gauge(label: "talus_slave_parts_running")
        partsDone = Counter(label: "talus_slave_parts_done_total")
        partsFailed = Counter(label: "talus_slave_parts_failed_total")
        partsCancelled = Counter(label: "talus_slave_parts_cancelled_total")
        vmBootSeconds = Timer(label: "talus_slave_vm_boot_seconds", preferredDisplayUnit: .seconds)
        partOverheadSeconds = Timer(label: "talus_slave_part_overhead_seconds", preferredDisplayUnit: .seconds)
        imageSyncBytes = Counter(label: "talus_slave_image_sync_bytes_total")
        imageSyncSeconds = Timer(label: "talus_slave_image_sync_seconds", preferredDisplayUnit: .seconds)
        imageVerifySeconds = Timer(label: "talus_slave_image_verify_seconds", preferredDisplayUnit: .seconds)
        cacheEvictions = Counter(label: "talus_slave_cache_evictions_total")
        amqpReconnects = Counter(label: "talus_slave_amqp_reconnects_total")
        unreadableMessages = Counter(label: "talus_slave_unreadable_messages_total")
        var errors: [GuestProtocolErrorKind: Counter] = [:]
        for kind in GuestProtocolErrorKind.allCases {
            errors[kind] = Counter(label: "talus_slave_guest_protocol_errors_total", dimensions: [("kind", kind.rawValue)])
        }
        protocolErrors = errors
    }

    /// Counts one guest protocol error of `kind`.
    public func protocolError(_ kind: GuestProtocolErrorKind) {
        protocolErrors[kind]?.increment()
    }
}
