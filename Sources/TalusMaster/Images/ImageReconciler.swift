// Image reconciliation (DESIGN §5): import, configure, create, delete through libvirt.
// Placeholder until the images work lands: it claims the `images` collection and does nothing.

import BSON
import Logging
import Mongo
import TalusModel

/// Drives image documents toward their requested state.
public struct ImageReconciler: DocumentReconciler {
    public let collection = TalusModel.Collection.images
    public let maxConcurrent = 2

    public init(database: MongoDatabase, config: ImageConfig, logger: Logger) {}

    public func pending() async throws -> [ObjectId] { [] }
    public func reconcile(_ id: ObjectId) async throws -> ReconcileOutcome { .done }
    public func giveUp(_ id: ObjectId, reason: String) async {}
}
