// Slaves (DESIGN §3, §6, §7): heartbeats and slave-online/offline events upsert a `slaves`
// document per uuid (with `last_heartbeat` a real BSON date under a TTL index); a periodic sweep
// marks silent slaves offline (their running runs become lost: the ingester does that, it owns
// runs and parts); an admin `drain` request becomes a control broadcast and `draining`. The
// free VM slots the slaves report size each job's queued window.

import BSON
import Foundation
import Logging
import Mongo
import Synchronization
import TalusCore
import TalusModel

/// What the master knows about the slaves, in memory, for dispatch decisions.
public final class SlaveTracker: Sendable {
    struct Snapshot: Sendable {
        var vms: Int
        var running: Int
        var state: SlaveState
        var seen: ContinuousClock.Instant
    }

    let store: MasterStore
    let offlineAfter: Duration
    let logger: Logger
    private let snapshots = Mutex<[String: Snapshot]>([:])

    init(store: MasterStore, offlineAfter: Duration, logger: Logger) {
        self.store = store
        self.offlineAfter = offlineAfter
        self.logger = logger
    }

    /// Free VM slots over the online slaves heard from recently.
    public var freeSlots: Int {
        let now = ContinuousClock.now
        return snapshots.withLock { all in
            all.values.reduce(0) { sum, s in
                guard s.state == .online, now - s.seen < offlineAfter else { return sum }
                return sum + max(0, s.vms - s.running)
            }
        }
    }

    /// Loads the online slaves from the database (at the start of a leadership).
    func load() async throws {
        let docs = try await store.slaves.find(["status.name": ["$ne": "offline"]])
        let now = ContinuousClock.now
        var loaded: [String: Snapshot] = [:]
        for doc in docs {
            guard let uuid = doc["uuid"]?.stringValue, let state = doc["status"]?["name"]?.stringValue.flatMap(SlaveState.init) else { continue }
            loaded[uuid] = Snapshot(
                vms: doc["capacity"]?["vms"]?.intValue ?? 0, running: doc["running"]?.arrayValue?.count ?? 0,
                state: state, seen: now)
        }
        snapshots.withLock { $0 = loaded }
        updateGauges()
    }

    private func updateGauges() {
        let (online, free) = (snapshots.withLock { $0.values.count(where: { $0.state != .offline }) }, freeSlots)
        MasterMetrics.slavesOnline.record(online)
        MasterMetrics.freeSlots.record(free)
    }

    /// Applies heartbeats and slave-online/offline events (oldest first) to the `slaves`
    /// collection. Returns the uuids that reported going offline, whose runs are lost.
    func apply(_ events: [EventMessage]) async throws -> [String] {
        // The newest event per slave decides; an offline event wins over earlier heartbeats.
        var latest: [String: EventMessage] = [:]
        var order: [String] = []
        for e in events {
            let uuid: String
            switch e.body {
            case .heartbeat(let info), .slaveOnline(let info), .slaveOffline(let info): uuid = info.uuid
            default: continue
            }
            if latest[uuid] == nil { order.append(uuid) }
            if let previous = latest[uuid], previous.at > e.at { continue }
            latest[uuid] = e
        }
        guard !order.isEmpty else { return [] }
        let existing = try await store.slaves.find(["uuid": ["$in": .array(order.map { .string($0) })]])
        var current: [String: SlaveState] = [:]
        for doc in existing {
            if let uuid = doc["uuid"]?.stringValue { current[uuid] = doc["status"]?["name"]?.stringValue.flatMap(SlaveState.init) ?? .offline }
        }
        let now = bsonNow()
        var models: [WriteModel] = []
        var offline: [String] = []
        var snapshotUpdates: [String: Snapshot] = [:]
        for uuid in order {
            guard let event = latest[uuid] else { continue }
            let info: SlaveInfo
            var desired: SlaveState
            var reason: String?
            switch event.body {
            case .slaveOnline(let i):
                info = i
                desired = i.draining ? .draining : .online
            case .heartbeat(let i):
                info = i
                let state = current[uuid]
                if i.draining {
                    desired = .draining
                } else if state == .drain || state == .draining {
                    desired = state!  // a pending request, or draining until the slave restarts
                } else {
                    desired = .online
                }
            case .slaveOffline(let i):
                info = i
                desired = .offline
                reason = "the slave reported that it stopped"
                offline.append(uuid)
            default: continue
            }
            var set: BSONDocument = [
                "hostname": .string(info.hostname), "version": .string(info.version),
                "capacity": try BSONEncoder.value(info.capacity), "running": try BSONEncoder.value(info.running),
                "last_heartbeat": .datetime(now), "updated": .datetime(now),
            ]
            if let address = info.address { set["address"] = .string(address) }
            var setOnInsert: BSONDocument = [
                "_id": .objectId(ObjectId()), "schema": .int64(Int64(SlaveDocument.currentSchema)),
                "created": .datetime(now), "tags": [],
            ]
            let status = try BSONEncoder.value(Status(desired, reason: reason, since: now))
            if let state = current[uuid] {
                if state != desired { set["status"] = status }
            } else {
                setOnInsert["status"] = status
            }
            models.append(.updateOne(filter: ["uuid": .string(uuid)], update: ["$set": .document(set), "$setOnInsert": .document(setOnInsert)], upsert: true))
            snapshotUpdates[uuid] = Snapshot(vms: info.capacity.vms, running: info.running.count, state: desired, seen: .now)
            if current[uuid] != desired {
                logger.info("slave is \(desired.rawValue)", metadata: [
                    "slave": "\(uuid)", "hostname": "\(info.hostname)", "vms": "\(info.capacity.vms)",
                ])
            }
        }
        try await store.slaves.bulkWrite(models, ordered: false).throwUnlessOnlyDuplicates()
        snapshots.withLock { all in
            for (uuid, s) in snapshotUpdates { all[uuid] = s }
        }
        updateGauges()
        return offline
    }

    /// Marks `uuids` offline (a sweep found them silent). The ingester calls this and then
    /// handles their runs.
    func markOffline(_ uuids: [String], reason: String) async throws {
        guard !uuids.isEmpty else { return }
        let now = bsonNow()
        try await store.slaves.updateMany(
            ["uuid": ["$in": .array(uuids.map { .string($0) })], "status.name": ["$ne": "offline"]],
            ["$set": ["status": try BSONEncoder.value(Status(SlaveState.offline, reason: reason, since: now)), "updated": .datetime(now)]])
        snapshots.withLock { all in
            for uuid in uuids { all[uuid]?.state = .offline }
        }
        updateGauges()
        for uuid in uuids { logger.warning("slave is offline", metadata: ["slave": "\(uuid)", "reason": "\(reason)"]) }
    }

    /// Slaves whose last heartbeat is older than `offlineAfter` and that are not offline yet.
    func silentSlaves() async throws -> [String] {
        let cutoff = bsonNow().addingTimeInterval(-offlineAfter.secondsDouble)
        let docs = try await store.slaves.find(
            ["last_heartbeat": ["$lt": .datetime(cutoff)], "status.name": ["$ne": "offline"]],
            options: FindOptions(projection: ["uuid": 1]))
        return docs.compactMap { $0["uuid"]?.stringValue }
    }

    /// Every `offlineAfter / 3`, hands silent slaves to `offline`.
    func sweep(offline: @Sendable ([String]) async -> Void) async {
        let interval = max(.milliseconds(200), offlineAfter / 3)
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: interval)
                let silent = try await silentSlaves()
                if !silent.isEmpty { await offline(silent) }
            } catch is CancellationError {
                return
            } catch {
                logger.warning("slave sweep failed", metadata: ["error": "\(error)"])
            }
        }
    }
}

/// Drives admin `drain` requests on slaves: broadcast `drain-slave`, then `draining`.
struct SlaveReconciler: DocumentReconciler {
    let collection = TalusModel.Collection.slaves
    let maxConcurrent = 4
    let store: MasterStore
    let publisher: MasterPublisher
    let logger: Logger

    func pending() async throws -> [ObjectId] {
        try await store.slaves.find(["status.name": "drain"], options: FindOptions(projection: ["_id": 1]))
            .compactMap { $0["_id"]?.objectIdValue }
    }

    func reconcile(_ id: ObjectId) async throws -> ReconcileOutcome {
        guard let doc = try await store.slaves.findOne(["_id": .objectId(id)]),
              doc["status"]?["name"]?.stringValue == SlaveState.drain.rawValue,
              let uuid = doc["uuid"]?.stringValue else { return .done }
        try await publisher.broadcast(ControlMessage(.drainSlave, slave: uuid))
        try await store.slaves.updateOne(
            ["_id": .objectId(id), "status.name": "drain"],
            ["$set": ["status": try BSONEncoder.value(Status(SlaveState.draining, reason: "drain requested")), "updated": .datetime(bsonNow())]])
        return .done
    }

    func giveUp(_ id: ObjectId, reason: String) async {
        logger.error("cannot drain slave", metadata: ["id": "\(id.hex)", "reason": "\(reason)"])
    }
}
