// The master is a reconciler (DESIGN §4): change-stream events are hints that name a document;
// a reconciler re-reads the document and drives it from its current status toward the requested
// one, idempotently. The work queue guarantees at most one reconcile per document at a time,
// retries failures with backoff, and after a bound asks the reconciler to record the failure.

import BSON
import TalusModel

/// What a reconcile asks of the work queue when it returns.
public enum ReconcileOutcome: Sendable, Equatable {
    /// Nothing more to do until the next hint.
    case done
    /// Look again after `after` even without a hint (deadlines, polling fallbacks, progress).
    case requeue(after: Duration)
}

/// Drives the documents of one collection toward their requested state.
///
/// Implementations must be idempotent: running `reconcile` twice, or again after a crash
/// halfway, converges to the same end. They re-read the document; the hint carries no payload.
public protocol DocumentReconciler: Sendable {
    /// The collection whose change events are routed to this reconciler.
    var collection: TalusModel.Collection { get }
    /// How many documents of this collection may be reconciled at once (image builds are
    /// bounded; jobs are not).
    var maxConcurrent: Int { get }
    /// Ids of every document that may need work (non-terminal), for the start-up resync.
    func pending() async throws -> [ObjectId]
    /// One step toward the requested state.
    func reconcile(_ id: ObjectId) async throws -> ReconcileOutcome
    /// Called after the bounded number of failed attempts: record `reason` on the document
    /// (`error` / `failed`). Must not throw; log instead.
    func giveUp(_ id: ObjectId, reason: String) async
}
