// The work queue's promises, with reconcilers that record what they are asked to do (the queue
// is pure scheduling; the reconcilers' real work is tested against the services elsewhere).

import BSON
import Foundation
import Logging
import Synchronization
@testable import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

/// A reconciler whose behaviour the test scripts.
final class ScriptedReconciler: DocumentReconciler, Sendable {
    struct Log: Sendable {
        var calls: [ObjectId] = []
        var active: [ObjectId: Int] = [:]
        var maxActivePerKey = 0
        var maxActive = 0
        var gaveUp: [ObjectId: String] = [:]
    }

    let collection: TalusModel.Collection
    let maxConcurrent: Int
    let delay: Duration
    let log = Mutex(Log())
    /// Per call: throw, or the outcome.
    let script: @Sendable (ObjectId, Int) throws -> ReconcileOutcome

    init(_ collection: TalusModel.Collection = .jobs, maxConcurrent: Int = 8, delay: Duration = .milliseconds(20),
         script: @escaping @Sendable (ObjectId, Int) throws -> ReconcileOutcome = { _, _ in .done }) {
        self.collection = collection
        self.maxConcurrent = maxConcurrent
        self.delay = delay
        self.script = script
    }

    func pending() async throws -> [ObjectId] { [] }

    func reconcile(_ id: ObjectId) async throws -> ReconcileOutcome {
        let call = log.withLock { l -> Int in
            l.calls.append(id)
            l.active[id, default: 0] += 1
            l.maxActivePerKey = max(l.maxActivePerKey, l.active[id]!)
            l.maxActive = max(l.maxActive, l.active.values.reduce(0, +))
            return l.calls.count(where: { $0 == id })
        }
        defer { log.withLock { $0.active[id, default: 1] -= 1 } }
        try await Task.sleep(for: delay)
        return try script(id, call)
    }

    func giveUp(_ id: ObjectId, reason: String) async {
        log.withLock { $0.gaveUp[id] = reason }
    }

    func calls(_ id: ObjectId) -> Int { log.withLock { $0.calls.count(where: { $0 == id }) } }
}

struct Boom: Error, CustomStringConvertible { var description: String { "boom" } }

@Suite struct WorkQueueTests {
    func withQueue(_ reconcilers: [ScriptedReconciler], maxAttempts: Int = 3,
                   _ body: (WorkQueue) async throws -> Void) async throws {
        let queue = WorkQueue(reconcilers: reconcilers, maxAttempts: maxAttempts, backoff: .milliseconds(30),
                              logger: Logger(label: "test.queue"))
        let task = Task { await queue.run() }
        defer { task.cancel() }
        try await body(queue)
    }

    @Test func oneReconcilePerKeyAndAHintDuringItRunsOnceMore() async throws {
        let r = ScriptedReconciler(delay: .milliseconds(150))
        let id = ObjectId()
        try await withQueue([r]) { queue in
            queue.enqueue(.jobs, id)
            try await waitUntil("first reconcile running") { r.log.withLock { $0.active[id, default: 0] == 1 } }
            for _ in 0..<20 { queue.enqueue(.jobs, id) }  // hints while it runs: coalesced into one more
            try await waitUntil("second reconcile done") { r.calls(id) == 2 && r.log.withLock { $0.active[id, default: 0] == 0 } }
            // A sentinel hinted now is handled after anything the queue scheduled before it.
            let sentinel = ObjectId()
            queue.enqueue(.jobs, sentinel)
            try await waitUntil("sentinel reconciled") { r.calls(sentinel) == 1 && r.log.withLock { $0.active[sentinel, default: 0] == 0 } }
            #expect(r.calls(id) == 2)
            #expect(r.log.withLock { $0.maxActivePerKey } == 1)
        }
    }

    @Test func differentDocumentsRunConcurrentlyUpToTheLimit() async throws {
        let r = ScriptedReconciler(maxConcurrent: 3, delay: .milliseconds(100))
        let ids = (0..<12).map { _ in ObjectId() }
        try await withQueue([r]) { queue in
            for id in ids { queue.enqueue(.jobs, id) }
            try await waitUntil("all reconciled") { ids.allSatisfy { r.calls($0) == 1 } }
            #expect(r.log.withLock { $0.maxActive } == 3)
        }
    }

    @Test func aSlowCollectionDoesNotBlockAnother() async throws {
        let images = ScriptedReconciler(.images, maxConcurrent: 1, delay: .seconds(30))
        let jobs = ScriptedReconciler(.jobs, delay: .milliseconds(5))
        try await withQueue([images, jobs]) { queue in
            queue.enqueue(.images, ObjectId())
            queue.enqueue(.images, ObjectId())
            let job = ObjectId()
            queue.enqueue(.jobs, job)
            try await waitUntil("the job reconciled while the image is busy", timeout: .seconds(5)) { jobs.calls(job) == 1 }
        }
    }

    @Test func failuresAreRetriedWithBackoffThenGivenUp() async throws {
        let flaky = ObjectId(), broken = ObjectId()
        let r = ScriptedReconciler(delay: .milliseconds(1)) { id, call in
            if id == flaky && call < 3 { throw Boom() }
            if id == broken { throw Boom() }
            return .done
        }
        try await withQueue([r], maxAttempts: 4) { queue in
            queue.enqueue(.jobs, flaky)
            queue.enqueue(.jobs, broken)
            try await waitUntil("flaky succeeded on its third attempt") { r.calls(flaky) == 3 }
            try await waitUntil("broken given up") { r.log.withLock { $0.gaveUp[broken] != nil } }
            #expect(r.calls(broken) == 4)
            #expect(r.log.withLock { $0.gaveUp[broken] }?.contains("boom") == true)
            #expect(r.log.withLock { $0.gaveUp[flaky] } == nil)
        }
    }

    @Test func requeueAfterRunsAgainWithoutAHint() async throws {
        let id = ObjectId()
        let r = ScriptedReconciler(delay: .milliseconds(1)) { _, call in call < 3 ? .requeue(after: .milliseconds(50)) : .done }
        try await withQueue([r]) { queue in
            queue.enqueue(.jobs, id)
            try await waitUntil("three reconciles") { r.calls(id) == 3 }
        }
    }

    @Test func backoffDoublesUpToTheMaximum() {
        let q = WorkQueue(reconcilers: [], maxAttempts: 5, backoff: .seconds(1), maxBackoff: .seconds(5), logger: Logger(label: "t"))
        #expect(q.delay(afterFailures: 1) == .seconds(1))
        #expect(q.delay(afterFailures: 2) == .seconds(2))
        #expect(q.delay(afterFailures: 3) == .seconds(4))
        #expect(q.delay(afterFailures: 9) == .seconds(5))
    }
}
