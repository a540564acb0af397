// Logging and metrics for the daemons (DESIGN §10): swift-log to stderr, one line per event
// with structured metadata; swift-metrics exported as Prometheus text; `/healthz` and `/metrics`
// on a loopback port for the master and the slave (the API serves its own).

import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import Synchronization

/// Process-wide logging and metrics set-up. Call ``bootstrap(level:)`` once, first thing in `main`.
public enum Observability {
    private static let registryBox = Mutex<PrometheusCollectorRegistry?>(nil)

    /// The Prometheus registry the metrics go to (after ``bootstrap(level:)``; a private one before).
    public static var registry: PrometheusCollectorRegistry {
        registryBox.withLock { box in
            if let r = box { return r }
            let r = PrometheusCollectorRegistry()
            box = r
            return r
        }
    }

    /// Logs to stderr at `level` (stdout is block-buffered when piped) and exports metrics
    /// through Prometheus. Safe to call more than once (later calls do nothing).
    public static func bootstrap(level: Logger.Level) {
        let first = registryBox.withLock { box -> Bool in
            if box != nil { return false }
            box = PrometheusCollectorRegistry()
            return true
        }
        guard first else { return }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// The metrics in Prometheus text format.
    public static func prometheusText() -> String { registry.emitToString() }
}

/// What `/healthz` reports.
public struct HealthReport: Sendable, Codable {
    public var ok: Bool
    /// Per dependency: "ok" or what is wrong.
    public var checks: [String: String]
    public init(ok: Bool, checks: [String: String]) { self.ok = ok; self.checks = checks }
}

/// A tiny HTTP server with `GET /healthz` (200 or 503 with a JSON ``HealthReport``) and
/// `GET /metrics` (Prometheus text), for daemons that have no other HTTP server.
public enum OpsServer {
    /// An application (a `Service`) serving health and metrics on `host:port`.
    public static func application(
        host: String, port: Int, logger: Logger,
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        health: @escaping @Sendable () async -> HealthReport
    ) -> some ApplicationProtocol {
        let router = Router()
        router.get("/healthz") { _, _ -> Response in
            let report = await health()
            let body = (try? JSONEncoder().encode(report)) ?? Data("{}".utf8)
            return Response(status: report.ok ? .ok : .serviceUnavailable,
                            headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(bytes: Observability.registry.emitToBuffer())))
        }
        return Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "talus"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? port) },
            logger: logger
        )
    }
}
