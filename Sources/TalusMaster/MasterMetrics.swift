// The master's metrics (DESIGN §10), through swift-metrics (exported as Prometheus text on
// `/metrics` once `Observability.bootstrap` ran).

import CoreMetrics
import Metrics

/// Names and handles of every metric the master exports.
enum MasterMetrics {
    // MARK: Parts
    static let partsPublished = Counter(label: "talus_master_parts_published_total")
    static let partsPublishFailed = Counter(label: "talus_master_parts_publish_failed_total")
    /// Parts of active jobs by state (`queued`, `running`, `done`, `failed`), summed over jobs.
    static func parts(_ state: String) -> Gauge { Gauge(label: "talus_master_parts", dimensions: [("state", state)]) }

    // MARK: Events
    static func events(_ type: String) -> Counter {
        Counter(label: "talus_master_events_ingested_total", dimensions: [("type", type)])
    }
    static let eventsDuplicate = Counter(label: "talus_master_events_duplicate_total")
    static func deadLettered(_ reason: String) -> Counter {
        Counter(label: "talus_master_events_dead_lettered_total", dimensions: [("reason", reason)])
    }
    static let eventBatchSeconds = Timer(label: "talus_master_event_batch_seconds")
    static let eventBatchErrors = Counter(label: "talus_master_event_batch_errors_total")

    // MARK: Reconciles
    static func reconciles(_ collection: String, _ outcome: String) -> Counter {
        Counter(label: "talus_master_reconciles_total", dimensions: [("collection", collection), ("outcome", outcome)])
    }
    static func reconcileErrors(_ collection: String) -> Counter {
        Counter(label: "talus_master_reconcile_errors_total", dimensions: [("collection", collection)])
    }
    static func reconcileGiveUps(_ collection: String) -> Counter {
        Counter(label: "talus_master_reconcile_give_ups_total", dimensions: [("collection", collection)])
    }
    static func reconcileSeconds(_ collection: String) -> Timer {
        Timer(label: "talus_master_reconcile_seconds", dimensions: [("collection", collection)])
    }
    static let queueDepth = Gauge(label: "talus_master_work_queue_depth")
    static let illegalStatus = Counter(label: "talus_master_illegal_status_total")

    // MARK: Change stream
    static let changeStreamLag = Gauge(label: "talus_master_change_stream_lag_seconds")
    static let changeStreamEvents = Counter(label: "talus_master_change_stream_events_total")
    static let changeStreamRestarts = Counter(label: "talus_master_change_stream_restarts_total")

    // MARK: Connections and leadership
    static let amqpReconnects = Counter(label: "talus_master_amqp_reconnects_total")
    static let leader = Gauge(label: "talus_master_leader")
    static let leaseLost = Counter(label: "talus_master_lease_lost_total")

    // MARK: Slaves
    static let slavesOnline = Gauge(label: "talus_master_slaves_online")
    static let freeSlots = Gauge(label: "talus_master_free_slots")

    /// Creates the families operators alert on, at zero, so that `/metrics` lists them from the
    /// start (handles are otherwise created on first use, and a quiet master would export none).
    static func registerAtStart() {
        for state in ["queued", "running", "done", "failed"] { parts(state).record(0) }
        for collection in ["images", "jobs"] {
            reconciles(collection, "done").increment(by: 0)
            reconcileErrors(collection).increment(by: 0)
        }
        changeStreamLag.record(0)
        amqpReconnects.increment(by: 0)
        leader.record(0)
        slavesOnline.record(0)
        freeSlots.record(0)
    }
}
