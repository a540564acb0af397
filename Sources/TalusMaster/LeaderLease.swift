// One active master at a time (DESIGN §4): a lease document `master.lease` in `state`, taken
// and renewed with an atomic find-and-modify.
//
// Time: the lease's `expires` is a wall-clock date written by the holder; a standby takes the
// lease once `expires` is in its own past. The holder judges its own validity with its monotonic
// clock: it stops working `lease − lease/3` after it *sent* its last successful renewal. So two
// masters never work at once as long as the hosts' clocks agree within lease/3 (5 s with the
// default 15 s lease) — keep the master hosts on NTP.

import BSON
import Foundation
import Logging
import Mongo
import TalusCore
import TalusModel

/// The leader lease of one master process.
public final class LeaderLease: Sendable {
    /// This process's unique holder id: hostname, pid and a random suffix.
    public let holder: String
    let collection: MongoCollection<LeaseDocument>
    let duration: Duration
    let logger: Logger

    public init(database: MongoDatabase, duration: Duration, holder: String = LeaderLease.makeHolderID(), logger: Logger) {
        collection = database.collection(TalusModel.Collection.state.rawValue, as: LeaseDocument.self)
        self.duration = duration
        self.holder = holder
        self.logger = logger
    }

    public static func makeHolderID() -> String {
        let host = ProcessInfo.processInfo.hostName
        return "\(host):\(getpid()):\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
    }

    /// How often the holder renews.
    var renewInterval: Duration { duration / 3 }
    /// How much before the written expiry the holder stops.
    var safetyMargin: Duration { duration / 3 }
    /// How often a standby looks at the lease.
    var pollInterval: Duration { min(.seconds(2), max(.milliseconds(250), duration / 6)) }

    /// Takes the lease if it is free or expired, or renews it if this process holds it. Returns
    /// false when another live master holds it.
    public func acquireOrRenew() async throws -> Bool {
        let now = bsonNow()
        let expires = now.addingTimeInterval(duration.secondsDouble)
        let filter: BSONDocument = [
            "_id": .string(LeaseDocument.id),
            "$or": [["holder": .string(holder)], ["expires": ["$lt": .datetime(now)]]],
        ]
        let update: BSONDocument = [
            "$set": ["holder": .string(holder), "expires": .datetime(expires)],
            "$setOnInsert": ["acquired": .datetime(now)],
        ]
        do {
            let before = try await collection.withType(BSONDocument.self).findOneAndUpdate(
                filter, update, options: FindOneAndModifyOptions(returnDocument: .before, upsert: true))
            if before?["holder"]?.stringValue != holder, before != nil {
                // Taken over from an expired holder: record when.
                try await collection.updateOne(["_id": .string(LeaseDocument.id), "holder": .string(holder)],
                                               ["$set": ["acquired": .datetime(now)]])
            }
            return true
        } catch let error as MongoError where error.isDuplicateKey {
            return false  // the document exists and a live holder has it
        }
    }

    /// The current lease document, if any.
    public func current() async throws -> LeaseDocument? {
        try await collection.findOne(["_id": .string(LeaseDocument.id)])
    }

    /// Waits (polling) until this process holds the lease, and returns when the successful
    /// request was sent (the lease's validity counts from then). `standby` is called once with
    /// the current holder when the lease is taken by someone else.
    public func acquire(standby: @Sendable (String?) async -> Void = { _ in }) async throws -> ContinuousClock.Instant {
        var announced = false
        var lastError: String?
        while true {
            try Task.checkCancellation()
            let sent = ContinuousClock.now
            do {
                if try await acquireOrRenew() { return sent }
                if !announced {
                    announced = true
                    let other = try? await current()
                    logger.info("another master holds the lease: standing by", metadata: [
                        "holder": "\(other?.holder ?? "?")", "expires": "\(other.map { TalusJSON.formatDate($0.expires) } ?? "?")",
                    ])
                    await standby(other?.holder)
                }
                lastError = nil
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                let text = "\(error)"
                if text != lastError { logger.warning("cannot reach the lease", metadata: ["error": "\(text)"]) }
                lastError = text
                if !announced {
                    announced = true
                    await standby(nil)
                }
            }
            try await Task.sleep(for: pollInterval)
        }
    }

    /// Renews the lease until it is lost; returns then. Throws `CancellationError` when the task
    /// is cancelled (the lease is kept: call ``release()``).
    ///
    /// "Lost" means another master holds it, or renewing failed until `lease − lease/3` after
    /// the last successful renewal was sent.
    public func holdUntilLost(acquiredAt: ContinuousClock.Instant) async throws {
        let clock = ContinuousClock()
        var validUntil = acquiredAt.advanced(by: duration - safetyMargin)
        var nextRenew = acquiredAt.advanced(by: renewInterval)
        while true {
            let wake = min(nextRenew, validUntil)
            try await Task.sleep(until: wake, clock: clock)
            if clock.now >= validUntil {
                logger.error("could not renew the lease in time: stepping down", metadata: ["holder": "\(holder)"])
                return
            }
            let sent = clock.now
            do {
                guard try await acquireOrRenew() else {
                    logger.error("another master took the lease: stepping down", metadata: ["holder": "\(holder)"])
                    return
                }
                validUntil = sent.advanced(by: duration - safetyMargin)
                nextRenew = sent.advanced(by: renewInterval)
                logger.trace("lease renewed", metadata: ["holder": "\(holder)", "took": "\(clock.now - sent)"])
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                logger.warning("lease renewal failed: retrying", metadata: ["error": "\(error)"])
                nextRenew = clock.now.advanced(by: .milliseconds(500))
            }
        }
    }

    /// Gives the lease up at once so a standby takes over without waiting for the expiry.
    public func release() async {
        do {
            try await collection.deleteOne(["_id": .string(LeaseDocument.id), "holder": .string(holder)])
            logger.info("lease released", metadata: ["holder": "\(holder)"])
        } catch {
            logger.warning("could not release the lease (it expires by itself)", metadata: ["error": "\(error)"])
        }
    }
}
