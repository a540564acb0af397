// The work queue between hints (change events, the event ingester, timers) and the
// reconcilers (DESIGN §4): keyed by (collection, id); at most one reconcile per key at a time; a
// hint during a reconcile runs the key once more afterwards; per-collection concurrency; failures
// retried with exponential backoff and, after a bound, handed to the reconciler's `giveUp`.

import BSON
import Logging
import ServiceLifecycle
import TalusModel

/// A document to reconcile.
public struct WorkKey: Hashable, Sendable, CustomStringConvertible {
    public let collection: TalusModel.Collection
    public let id: ObjectId
    public init(_ collection: TalusModel.Collection, _ id: ObjectId) { self.collection = collection; self.id = id }
    public var description: String { "\(collection.rawValue)/\(id.hex)" }
}

/// How one reconcile ended, for observers (tests, benchmarks).
public enum ReconcileResult: Sendable, Equatable {
    case done
    case requeued(after: Duration)
    /// Threw; will be retried after a backoff.
    case failed(String)
    /// Threw for the last allowed time; the reconciler's `giveUp` recorded the reason.
    case gaveUp(String)
    case cancelled
}

/// Runs reconciles for hinted documents. Create one per leadership; call ``enqueue(_:)`` from
/// anywhere (before or while ``run()`` runs); ``run()`` works until its task is cancelled.
public final class WorkQueue: Service, Sendable {
    enum Message: Sendable {
        case hint(WorkKey)
        case finished(WorkKey, ReconcileResult, failures: Int)
        case due(WorkKey, generation: Int)
    }

    /// Called after every reconcile (from a child task of ``run()``).
    public typealias Observer = @Sendable (WorkKey, ReconcileResult, Duration) -> Void

    private let reconcilers: [TalusModel.Collection: any DocumentReconciler]
    private let maxAttempts: Int
    private let backoff: Duration
    private let maxBackoff: Duration
    private let logger: Logger
    private let observer: Observer?
    private let stream: AsyncStream<Message>
    private let continuation: AsyncStream<Message>.Continuation

    /// - Parameters:
    ///   - maxAttempts: reconciles of one document that may fail in a row before `giveUp`.
    ///   - backoff: delay after the first failure; doubles per failure up to `maxBackoff`.
    public init(
        reconcilers: [any DocumentReconciler], maxAttempts: Int, backoff: Duration,
        maxBackoff: Duration = .seconds(300), logger: Logger, observer: Observer? = nil
    ) {
        var byCollection: [TalusModel.Collection: any DocumentReconciler] = [:]
        for r in reconcilers { byCollection[r.collection] = r }
        self.reconcilers = byCollection
        self.maxAttempts = max(1, maxAttempts)
        self.backoff = backoff
        self.maxBackoff = maxBackoff
        self.logger = logger
        self.observer = observer
        (stream, continuation) = AsyncStream.makeStream(of: Message.self)
    }

    /// The collections that have a reconciler.
    public var collections: [TalusModel.Collection] { Array(reconcilers.keys) }

    /// Asks for a reconcile of `key` (coalesced with pending ones).
    public func enqueue(_ key: WorkKey) {
        continuation.yield(.hint(key))
    }

    public func enqueue(_ collection: TalusModel.Collection, _ id: ObjectId) {
        enqueue(WorkKey(collection, id))
    }

    /// Processes hints until the task is cancelled; then waits for the reconciles in flight.
    public func run() async {
        var state = QueueState(limits: reconcilers.mapValues { max(1, $0.maxConcurrent) })
        let continuation = self.continuation
        await withDiscardingTaskGroup { group in
            for await message in stream {
                switch message {
                case .hint(let key):
                    guard reconcilers[key.collection] != nil else { continue }
                    state.hint(key)
                case .finished(let key, let result, let failures):
                    state.finish(key, result, failures: failures, backoff: delay(afterFailures:))
                case .due(let key, let generation):
                    state.due(key, generation: generation)
                }
                for (key, delay, generation) in state.takeTimers() {
                    group.addTask {
                        do { try await Task.sleep(for: delay) } catch { return }
                        continuation.yield(.due(key, generation: generation))
                    }
                }
                while let (key, failures) = state.nextRunnable() {
                    group.addTask {
                        let (result, took) = await self.reconcile(key, failures: failures)
                        self.observer?(key, result, took)
                        continuation.yield(.finished(key, result, failures: failures))
                    }
                }
                MasterMetrics.queueDepth.record(state.depth)
            }
        }
    }

    func delay(afterFailures failures: Int) -> Duration {
        var d = backoff
        for _ in 1..<max(1, failures) where d < maxBackoff { d *= 2 }
        return min(d, maxBackoff)
    }

    /// One reconcile; on the last allowed failure, `giveUp`.
    private func reconcile(_ key: WorkKey, failures: Int) async -> (ReconcileResult, Duration) {
        guard let reconciler = reconcilers[key.collection] else { return (.done, .zero) }
        let collection = key.collection.rawValue
        let clock = ContinuousClock()
        let start = clock.now
        let result: ReconcileResult
        do {
            switch try await reconciler.reconcile(key.id) {
            case .done: result = .done
            case .requeue(let after): result = .requeued(after: after)
            }
            MasterMetrics.reconciles(collection, "ok").increment()
        } catch where Task.isCancelled {
            result = .cancelled
        } catch {
            MasterMetrics.reconcileErrors(collection).increment()
            let attempt = failures + 1
            let reason = String(describing: error)
            if attempt >= maxAttempts {
                logger.error("reconcile failed for the last time: giving up", metadata: [
                    "collection": "\(collection)", "id": "\(key.id.hex)", "attempt": "\(attempt)", "error": "\(reason)",
                ])
                await reconciler.giveUp(key.id, reason: "gave up after \(attempt) failed attempts: \(reason)")
                MasterMetrics.reconcileGiveUps(collection).increment()
                result = .gaveUp(reason)
            } else {
                logger.warning("reconcile failed: will retry", metadata: [
                    "collection": "\(collection)", "id": "\(key.id.hex)", "attempt": "\(attempt)",
                    "retry_in": "\(delay(afterFailures: attempt))", "error": "\(reason)",
                ])
                result = .failed(reason)
            }
        }
        let took = clock.now - start
        MasterMetrics.reconcileSeconds(collection).recordNanoseconds(took.nanoseconds)
        return (result, took)
    }
}

extension Duration {
    /// Whole nanoseconds (saturating).
    var nanoseconds: Int64 {
        let (s, atto) = components
        let (ns, overflow) = s.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : ns &+ atto / 1_000_000_000
    }
}

/// The bookkeeping of ``WorkQueue/run()``: pure state, no concurrency.
struct QueueState {
    enum Phase: Equatable {
        case waiting
        case running(dirty: Bool)
        /// Waiting for a `requeue(after:)` delay; a hint ends it early.
        case delayedRequeue
        /// Waiting after a failure; hints do not shorten it (they may be echoes of the failed
        /// reconcile's own writes).
        case delayedBackoff
    }

    struct Entry {
        var phase: Phase
        var failures = 0
        var generation = 0
    }

    let limits: [TalusModel.Collection: Int]
    private(set) var entries: [WorkKey: Entry] = [:]
    private var ready: [TalusModel.Collection: [ObjectId]] = [:]
    private var readyHead: [TalusModel.Collection: Int] = [:]
    private var running: [TalusModel.Collection: Int] = [:]
    private var timers: [(WorkKey, Duration, Int)] = []
    private var order: [TalusModel.Collection]
    private var rotation = 0

    init(limits: [TalusModel.Collection: Int]) {
        self.limits = limits
        order = limits.keys.sorted { $0.rawValue < $1.rawValue }
    }

    /// Documents known to the queue (waiting, running or delayed).
    var depth: Int { entries.count }

    mutating func hint(_ key: WorkKey) {
        guard var entry = entries[key] else {
            entries[key] = Entry(phase: .waiting)
            push(key)
            return
        }
        switch entry.phase {
        case .waiting, .delayedBackoff, .running(dirty: true): return
        case .running(dirty: false): entry.phase = .running(dirty: true)
        case .delayedRequeue:
            entry.phase = .waiting
            entry.generation += 1
            push(key)
        }
        entries[key] = entry
    }

    mutating func finish(_ key: WorkKey, _ result: ReconcileResult, failures: Int, backoff: (Int) -> Duration) {
        running[key.collection, default: 1] -= 1
        guard var entry = entries[key], case .running(let dirty) = entry.phase else { return }
        switch result {
        case .done, .gaveUp, .cancelled:
            if dirty && result != .cancelled {
                entry.phase = .waiting
                entry.failures = 0
                entries[key] = entry
                push(key)
            } else {
                entries[key] = nil
            }
        case .requeued(let after):
            entry.failures = 0
            if dirty {
                entry.phase = .waiting
                entries[key] = entry
                push(key)
            } else {
                entry.phase = .delayedRequeue
                entry.generation += 1
                entries[key] = entry
                timers.append((key, after, entry.generation))
            }
        case .failed:
            entry.failures = failures + 1
            entry.phase = .delayedBackoff
            entry.generation += 1
            entries[key] = entry
            timers.append((key, backoff(entry.failures), entry.generation))
        }
    }

    mutating func due(_ key: WorkKey, generation: Int) {
        guard var entry = entries[key], entry.generation == generation else { return }
        guard entry.phase == .delayedRequeue || entry.phase == .delayedBackoff else { return }
        entry.phase = .waiting
        entries[key] = entry
        push(key)
    }

    mutating func takeTimers() -> [(WorkKey, Duration, Int)] {
        defer { timers.removeAll() }
        return timers
    }

    /// The next key to reconcile, round-robin over collections with room; marks it running.
    mutating func nextRunnable() -> (WorkKey, Int)? {
        guard !order.isEmpty else { return nil }
        for step in 0..<order.count {
            let collection = order[(rotation + step) % order.count]
            guard running[collection, default: 0] < limits[collection, default: 1] else { continue }
            while let id = pop(collection) {
                let key = WorkKey(collection, id)
                guard var entry = entries[key], entry.phase == .waiting else { continue }
                entry.phase = .running(dirty: false)
                entries[key] = entry
                running[collection, default: 0] += 1
                rotation = (rotation + step + 1) % order.count
                return (key, entry.failures)
            }
        }
        return nil
    }

    private mutating func push(_ key: WorkKey) {
        ready[key.collection, default: []].append(key.id)
    }

    private mutating func pop(_ collection: TalusModel.Collection) -> ObjectId? {
        guard var list = ready[collection] else { return nil }
        var head = readyHead[collection, default: 0]
        guard head < list.count else { return nil }
        let id = list[head]
        head += 1
        if head >= 256 && head * 2 >= list.count {
            list.removeFirst(head)
            head = 0
        }
        ready[collection] = head == list.count ? [] : list
        readyHead[collection] = head == list.count ? 0 : head
        return id
    }
}
