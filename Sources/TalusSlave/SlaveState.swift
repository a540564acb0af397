// The slave's book-keeping: which parts it holds (admitted or waiting for room), VM slots and
// memory, jobs known to be cancelled, draining and stopping.

import AMQP
import BSON
import Foundation
import TalusModel

/// Parts held by the slave and the room they take.
actor SlaveState {
    struct Entry {
        let run: PartRun
        let delivery: AMQPDelivery?
        let queue: String
        let since: Date
        var admitted = false
        /// Give the part back to the queue when it ends cancelled (shutdown, lost delivery).
        var requeue = false
    }

    let vms: Int
    let memoryMB: Int
    private(set) var entries: [String: Entry] = [:]
    private var vmsInUse = 0
    private var memoryInUse = 0
    private var waiters: [(run: String, continuation: CheckedContinuation<Bool, Never>)] = []
    private var cancelledJobs: [ObjectId: ContinuousClock.Instant] = [:]
    private(set) var draining = false
    private(set) var stopping = false

    init(vms: Int, memoryMB: Int) {
        self.vms = vms
        self.memoryMB = memoryMB
    }

    var count: Int { entries.count }
    var admittedCount: Int { vmsInUse }

    func register(_ run: PartRun, delivery: AMQPDelivery?, queue: String) {
        entries[run.run] = Entry(run: run, delivery: delivery, queue: queue, since: Date())
        if isJobCancelled(run.part.job) { run.cancel(outcome: .cancelled, reason: "the job was cancelled") }
    }

    /// Waits (first come, first served) until the part's VM fits: a free VM slot and enough
    /// memory. Returns false without waiting (or as soon as it happens) when the part was
    /// cancelled meanwhile; it then takes no room.
    func admit(_ run: PartRun) async -> Bool {
        if run.isCancelled { return false }
        if waiters.isEmpty && fits(run) {
            take(run)
            return true
        }
        return await withCheckedContinuation { continuation in
            waiters.append((run.run, continuation))
        }
    }

    private func fits(_ run: PartRun) -> Bool {
        vmsInUse < vms && memoryInUse + run.part.vm.memoryMB <= memoryMB
    }

    private func take(_ run: PartRun) {
        vmsInUse += 1
        memoryInUse += run.part.vm.memoryMB
        entries[run.run]?.admitted = true
    }

    private func wakeWaiters() {
        // Cancelled waiters leave at once; then admit from the head while parts fit.
        var kept: [(run: String, continuation: CheckedContinuation<Bool, Never>)] = []
        for waiter in waiters {
            if let run = entries[waiter.run]?.run, !run.isCancelled {
                kept.append(waiter)
            } else {
                waiter.continuation.resume(returning: false)
            }
        }
        waiters = kept
        while let head = waiters.first, let run = entries[head.run]?.run, fits(run) {
            waiters.removeFirst()
            take(run)
            head.continuation.resume(returning: true)
        }
    }

    /// The part ended: frees its room. Returns whether it is to be requeued.
    func finish(_ run: PartRun) -> Bool {
        guard let entry = entries.removeValue(forKey: run.run) else { return false }
        if entry.admitted {
            vmsInUse -= 1
            memoryInUse -= run.part.vm.memoryMB
        }
        wakeWaiters()
        return entry.requeue
    }

    // MARK: Cancelling

    func isJobCancelled(_ job: ObjectId) -> Bool {
        let now = ContinuousClock.now
        cancelledJobs = cancelledJobs.filter { now - $0.value < .seconds(24 * 3600) }
        return cancelledJobs[job] != nil
    }

    /// Cancels every part of `job` held now, and those that arrive later.
    func cancelJob(_ job: ObjectId) -> Int {
        cancelledJobs[job] = .now
        var n = 0
        for entry in entries.values where entry.run.part.job == job {
            entry.run.cancel(outcome: .cancelled, reason: "the job was cancelled")
            n += 1
        }
        wakeWaiters()
        return n
    }

    /// Cancels every part held; with `requeue` their deliveries go back to the queue.
    func cancelAll(reason: String, requeue: Bool) {
        for (id, entry) in entries {
            if requeue { entries[id]?.requeue = true }
            entry.run.cancel(outcome: .cancelled, reason: reason)
        }
        wakeWaiters()
    }

    /// Cancels the parts whose deliveries went stale (the broker requeued them).
    func cancelStale() -> Int {
        var n = 0
        for (id, entry) in entries where entry.delivery?.isStale == true && !entry.run.isCancelled {
            entries[id]?.requeue = true
            entry.run.cancel(outcome: .cancelled, reason: "the slave lost its broker connection; RabbitMQ requeued the part")
            n += 1
        }
        wakeWaiters()
        return n
    }

    // MARK: Draining and stopping

    func setDraining(_ value: Bool) { draining = value }

    func beginStopping() { stopping = true }

    /// Returns when no part is held, or after `timeout`.
    func waitUntilIdle(timeout: Duration) async {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while !entries.isEmpty && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    // MARK: Reporting

    /// Parts held per queue (each holds one unacked delivery).
    func heldPerQueue() -> [String: Int] {
        entries.values.reduce(into: [:]) { $0[$1.queue, default: 0] += 1 }
    }

    func runningParts() -> [SlaveDocument.RunningPart] {
        entries.values.sorted { $0.since < $1.since }.map {
            SlaveDocument.RunningPart(job: $0.run.part.job, idx: $0.run.part.idx, attempt: $0.run.part.attempt, run: $0.run.run, since: $0.since)
        }
    }

    func run(_ id: String) -> PartRun? { entries[id]?.run }
}
