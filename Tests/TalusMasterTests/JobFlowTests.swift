// Jobs end to end against the real SecantusDB and RabbitMQ, with scripted slaves: exact
// progress under duplicated events, restarts, cancel, failing parts, illegal status writes.

import AMQP
import BSON
import Foundation
import Mongo
@testable import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

@Suite(.serialized) struct JobFlowTests {
    @Test func limit50Over5SlavesIsExactWithEveryEventSentTwice() async throws {
        try await MasterFixture.with("exact") { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            var slaves: [TestSlave] = []
            for i in 0..<5 { slaves.append(try await f.slave("s\(i)", capacity: 2, behavior: .init(duplicateEvents: true))) }

            let id = try await f.insertJob(limit: 50)
            let job = try await f.waitForStatus(id, .finished)
            try await f.settled(id)
            #expect(job.progress == 50)
            #expect(job.observed == .finished)
            #expect(try await f.count("results", ["job": .objectId(id)]) == 50)
            let results = try await f.database.collection("results").find(["job": .objectId(id)])
            #expect(Set(results.compactMap { $0["idx"]?.intValue }).count == 50, "one result per part, none twice")
            let parts = try await f.parts(of: id)
            #expect(parts.count == 50, "exactly the parts needed were dispatched")
            #expect(parts.allSatisfy { $0.status.name == .done })
            #expect(try await f.count("runs", ["job": .objectId(id), "state": "finished"]) == 50)
            try await waitUntil("job counters settled") {
                let j = try await f.job(id)
                return j.parts.done == 50 && j.parts.queued == 0 && j.parts.running == 0
            }
            // Every part acked: nothing left in the queue, nothing held by a slave.
            try await waitUntil("every received part acked") {
                slaves.allSatisfy { $0.stats.received == $0.stats.acked }
            }
            let amqp = try await f.amqp()
            #expect(try await amqp.inspectQueue(f.names.partsQueue("default")).messageCount == 0)
            await amqp.close()
            #expect(slaves.reduce(0) { $0 + $1.stats.received } == 50)
            let metrics = try await master.metrics()
            #expect(metricValue(metrics, "talus_master_events_duplicate_total") >= 50 * 4)
        }
    }

    @Test func masterCancelledMidJobAndRestartedKeepsExactTotals() async throws {
        try await MasterFixture.with("restart") { f in
            var slaves: [TestSlave] = []
            for i in 0..<3 {
                slaves.append(try await f.slave("s\(i)", capacity: 2, behavior: .init(duplicateEvents: true, work: .milliseconds(80))))
            }
            let first = try f.startMaster()
            try await first.waitUntilLeader()
            let id = try await f.insertJob(limit: 40)
            try await waitUntil("progress under way", timeout: .seconds(60)) { try await f.job(id).progress >= 10 }
            await first.stop()
            // While no master runs: the slaves finish what they hold, a new job is inserted.
            let later = try await f.insertJob(limit: 5, name: "inserted-while-down")
            #expect(try await f.job(later).status.name == .run)
            let second = try f.startMaster()
            try await second.waitUntilLeader()
            let job = try await f.waitForStatus(id, .finished)
            try await f.settled(id)
            #expect(job.progress == 40)
            #expect(try await f.count("results", ["job": .objectId(id)]) == 40)
            let runs = try await f.database.collection("runs", as: RunDocument.self).find(["job": .objectId(id)])
            #expect(runs.filter { $0.state == .finished }.count == 40, "\(runs.map { "\($0.idx):\($0.state):\($0.progress)" })")
            let parts = try await f.parts(of: id)
            #expect(parts.filter { $0.status.name == .done }.count == 40, "\(parts.map { "\($0.idx):\($0.status.name)" })")
            let other = try await f.waitForStatus(later, .finished)
            #expect(other.progress == 5)
        }
    }

    @Test func cancelStopsRunningPartsAndDropsQueuedOnes() async throws {
        try await MasterFixture.with("cancel") { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            var slaves: [TestSlave] = []
            for i in 0..<2 { slaves.append(try await f.slave("s\(i)", capacity: 2, behavior: .init(work: .seconds(120)))) }
            let id = try await f.insertJob(limit: 100)
            try await waitUntil("four parts running", timeout: .seconds(60)) {
                try await f.count("parts", ["job": .objectId(id), "status.name": "running"]) == 4
            }
            #expect(try await f.count("parts", ["job": .objectId(id), "status.name": "queued"]) > 0)
            let clock = ContinuousClock()
            let start = clock.now
            try await f.setStatus(id, "cancel")
            let job = try await f.waitForStatus(id, .cancelled, timeout: .seconds(20))
            #expect(clock.now - start < .seconds(10))
            #expect(job.progress == 0)
            for slave in slaves {
                #expect(slave.stats.control.contains { $0.type == .cancelJob && $0.job == id })
            }
            // The parts' own documents follow the job's status within seconds (written after it).
            try await waitUntil("no part of the job left queued, running or retrying", timeout: .seconds(10)) {
                try await f.count("parts", ["job": .objectId(id), "status.name": ["$in": ["queued", "running", "retry"]]]) == 0
            }
            try await waitUntil("the four runs cancelled") {  // runs are written just after their parts
                try await f.count("runs", ["job": .objectId(id), "state": "cancelled"]) == 4
            }
            // The queued messages still in the queue are skipped by the slaves, never run.
            try await waitUntil("queued parts drained") {
                let amqp = try await f.amqp()
                let count = try await amqp.inspectQueue(f.names.partsQueue("default")).messageCount
                await amqp.close()
                return count == 0
            }
            #expect(slaves.reduce(0) { $0 + $1.stats.started.count } == 4)
        }
    }

    @Test func partsStillRunningWhenTheJobFinishesLeaveItsCountersTrue() async throws {
        try await MasterFixture.with("lagging") { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            // One slave reaches the limit with a single part; the other's part runs on until the
            // job's end cancels it, after the job stopped dispatching.
            let slow = try await f.slave("slow", capacity: 1, behavior: .init(work: .seconds(120)))
            let id = try await f.insertJob(limit: 4)
            try await waitUntil("the slow slave runs a part", timeout: .seconds(60)) { !slow.stats.started.isEmpty }
            _ = try await f.slave("fast", capacity: 1, behavior: .init(work: .milliseconds(50), progress: 4))
            let job = try await f.waitForStatus(id, .finished, timeout: .seconds(60))
            #expect(job.progress == 4)
            try await f.settled(id)
            let done = try await f.count("parts", ["job": .objectId(id), "status.name": "done"])
            #expect(done >= 1)
            #expect(try await f.count("parts", ["job": .objectId(id), "status.name": "cancelled"]) >= 1)
            var last = PartCounts()
            do {
                try await waitUntil("the job's part counters follow its parts", timeout: .seconds(20)) {
                    last = try await f.job(id).parts
                    return last.running == 0 && last.queued == 0 && last.done == done
                }
            } catch {
                Issue.record("counters \(last), \(done) parts done: \(try await f.parts(of: id).map { "\($0.idx):\($0.status.name)" })")
            }
        }
    }

    @Test func alwaysFailingPartsFailTheJobWithReasonsAndNoProgress() async throws {
        try await MasterFixture.with("failing", overrides: ["jobs.part_attempts": "2", "jobs.max_failed_parts": "2"]) { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            _ = try await f.slave(capacity: 2, behavior: .init(progress: 3, failure: { _ in "target binary missing" }))
            let id = try await f.insertJob(limit: 10)
            let job = try await f.waitForStatus(id, .failed, timeout: .seconds(60))
            try await f.settled(id)
            #expect(job.progress == 0, "failed runs never count")
            #expect(job.status.reason?.contains("target binary missing") == true)
            #expect(job.errors.contains { $0.reason.contains("target binary missing") && $0.reason.contains("exit status 3") })
            #expect(try await f.count("runs", ["job": .objectId(id), "state": "finished"]) == 0)
            let failedParts = try await f.parts(of: id).filter { $0.status.name == .failed }
            #expect(!failedParts.isEmpty)
            #expect(failedParts.allSatisfy { $0.attempt == 2 && $0.failures.count == 2 })
            let run = try await f.database.collection("runs", as: RunDocument.self).findOne(["job": .objectId(id)])
            #expect(run?.serialTail?.contains("target binary missing") == true)
            #expect(run?.exitCode == 3)
            #expect(run?.logs.first?.message.contains("done") == true)
        }
    }

    @Test func illegalStatusWritesAreRefusedAndReported() async throws {
        try await MasterFixture.with("illegal") { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            _ = try await f.slave(capacity: 1, behavior: .init(work: .milliseconds(700)))
            let id = try await f.insertJob(limit: 10)
            _ = try await f.waitForStatus(id, .running)
            for (bad, expected) in [("import", "unknown status \"import\""), ("finished", "running → finished"), ("bogus", "unknown status")] {
                try await f.setStatus(id, bad)
                let raw = try await waitFor("\(bad) refused") {
                    let raw = try await f.rawJob(id)
                    return raw["status"]?["name"]?.stringValue == "running" && raw["status"]?["reason"]?.stringValue?.contains(bad) == true ? raw : nil
                }
                #expect(raw["status"]?["reason"]?.stringValue?.contains(expected) == true)
                #expect(raw["errors"]?.arrayValue?.contains { $0["reason"]?.stringValue?.contains(expected) == true } == true)
            }
            // Not acted on: the job goes on and finishes normally.
            let job = try await f.waitForStatus(id, .finished)
            #expect(job.progress == 10)
            #expect(try await f.count("parts", ["job": .objectId(id)]) == 10)
            // A job created in a state only the master writes is refused too.
            let created = try await f.insertJob(limit: 1, status: .running)
            let refused = try await f.waitForStatus(created, .failed)
            #expect(refused.status.reason?.contains("created in status running") == true)
            #expect(try await f.count("parts", ["job": .objectId(created)]) == 0)
            try await waitUntil("refusals counted") {
                metricValue(try await master.metrics(), "talus_master_illegal_status_total") >= 4
            }
        }
    }

    @Test func aJobWhoseImageIsNotReadyFailsWithTheReason() async throws {
        try await MasterFixture.with("notready") { f in
            let master = try f.startMaster()
            try await master.waitUntilLeader()
            try await f.database.collection("images").updateOne(
                ["_id": .objectId(f.image.id)], ["$set": ["status": ["name": "configuring", "since": .datetime(Date())]]])
            let id = try await f.insertJob(limit: 1)
            let job = try await f.waitForStatus(id, .failed)
            // "configuring", or "error" once the image reconciler has judged that stray status.
            #expect(job.status.reason?.contains(", not ready") == true, "\(job.status.reason ?? "-")")
            let other = JobDocument(name: "x", task: f.task.id, image: f.image.id, tool: "nope", toolCommit: MasterFixture.commit)
            try await f.database.collection("jobs", as: JobDocument.self).insertOne(other)
            let missingTool = try await f.waitForStatus(other.id, .failed)
            #expect(missingTool.status.reason?.contains("tool \"nope\" is not recorded") == true)
        }
    }
}
