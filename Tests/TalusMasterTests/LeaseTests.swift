// The leader lease against the real SecantusDB: one holder at a time, renewal, release, expiry,
// and two masters in one process handing over.

import BSON
import Foundation
import Logging
import Mongo
@testable import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

@Suite struct LeaseTests {
    @Test func oneHolderAtATimeUntilReleaseOrExpiry() async throws {
        try await MasterFixture.with("lease") { f in
            let logger = Logger(label: "test.lease")
            let a = LeaderLease(database: f.database, duration: .seconds(60), holder: "a", logger: logger)
            let b = LeaderLease(database: f.database, duration: .seconds(60), holder: "b", logger: logger)
            #expect(try await a.acquireOrRenew())
            #expect(try await !b.acquireOrRenew())
            #expect(try await a.acquireOrRenew())   // renewal
            #expect(try await a.current()?.holder == "a")
            await a.release()
            #expect(try await b.acquireOrRenew())
            #expect(try await !a.acquireOrRenew())
            // A short lease that is not renewed expires: c gets it once it did, and not before.
            await b.release()
            let d = LeaderLease(database: f.database, duration: .seconds(2), holder: "d", logger: logger)
            let c = LeaderLease(database: f.database, duration: .seconds(60), holder: "c", logger: logger)
            #expect(try await d.acquireOrRenew())
            let expires = try #require(try await d.current()?.expires)
            _ = try await c.acquire()
            #expect(Date() >= expires, "not before d's lease expired")
            #expect(try await c.current()?.holder == "c")
        }
    }

    @Test func aHolderThatCannotRenewStepsDown() async throws {
        try await MasterFixture.with("steal") { f in
            let logger = Logger(label: "test.lease")
            let a = LeaderLease(database: f.database, duration: .seconds(3), holder: "a", logger: logger)
            let acquired = try await a.acquire()
            // Someone else takes the lease (as after a long pause of this process): a notices at
            // its next renewal and returns.
            try await f.database.collection("state").updateOne(
                ["_id": .string(LeaseDocument.id)], ["$set": ["holder": "intruder", "expires": .datetime(Date().addingTimeInterval(60))]])
            let clock = ContinuousClock()
            let start = clock.now
            try await a.holdUntilLost(acquiredAt: acquired)
            #expect(clock.now - start < .seconds(3))
        }
    }

    @Test func twoMastersInOneProcessHandOverOnStop() async throws {
        try await MasterFixture.with("handover") { f in
            let first = try f.startMaster()
            try await first.waitUntilLeader()
            let second = try f.startMaster()
            try await waitUntil("second stands by") { second.service.role == .standby }
            #expect(second.service.healthReport().checks["status"] == "standby")
            #expect(first.service.healthReport().checks["status"] == "ok")
            await first.stop()
            try await second.waitUntilLeader(timeout: .seconds(5))
            _ = try await f.slave()
            let id = try await f.insertJob(limit: 2)
            #expect(try await f.waitForStatus(id, .finished).progress == 2)
        }
    }
}
