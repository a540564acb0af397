// `/healthz` (open), `/metrics` (admin token unless `http.metrics_public`), `/openapi.yaml`.

import Foundation
import Hummingbird
import NIOCore
import TalusCore

/// A group of endpoints (one resource). Each registers its routes with their access rules.
public protocol APIRouteCollection: Sendable {
    func register(on router: APIRouter, services: APIServices)
}

struct OpsRoutes: APIRouteCollection {
    func register(on router: APIRouter, services: APIServices) {
        router.add(.get, "/healthz", .open) { _, _ in
            var checks: [String: String] = [:]
            do {
                _ = try await services.store.database.runCommand(["ping": 1])
                checks["mongo"] = "ok"
            } catch {
                checks["mongo"] = "\(error)"
            }
            checks["uploads"] = access(services.config.uploadsDirectory, W_OK) == 0
                ? "ok" : "\(services.config.uploadsDirectory) is not writable"
            let report = HealthReport(ok: checks.values.allSatisfy { $0 == "ok" }, checks: checks)
            return try Render.json(report, status: report.ok ? .ok : .serviceUnavailable)
        }
        router.add(.get, "/metrics", services.config.metricsPublic ? .open : .role(.admin)) { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: Observability.prometheusText())))
        }
        router.add(.get, "/openapi.yaml", .role(.user)) { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.yaml)))
        }
    }
}
