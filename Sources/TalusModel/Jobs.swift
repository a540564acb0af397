// Code, tasks, jobs, parts and runs (DESIGN §3, §6, §8).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// The shape of a VM: CPUs, memory and how long one run may take.
public struct VMShape: Codable, Sendable, Equatable {
    public var cpus: Int
    public var memoryMB: Int
    /// Wall-clock limit of one part's VM, seconds; the slave destroys the VM after it.
    public var timeoutS: Int

    public init(cpus: Int = 1, memoryMB: Int = 256, timeoutS: Int = 600) {
        self.cpus = cpus; self.memoryMB = memoryMB; self.timeoutS = timeoutS
    }

    enum CodingKeys: String, CodingKey {
        case cpus
        case memoryMB = "memory_mb"
        case timeoutS = "timeout_s"
    }

    /// Problems with the values, for a 422 answer; empty when valid.
    public func problems() -> [String] {
        var out: [String] = []
        if !(1...64).contains(cpus) { out.append("vm.cpus must be 1…64 (got \(cpus))") }
        if !(64...262_144).contains(memoryMB) { out.append("vm.memory_mb must be 64…262144 (got \(memoryMB))") }
        if !(10...604_800).contains(timeoutS) { out.append("vm.timeout_s must be 10…604800 (got \(timeoutS))") }
        return out
    }
}

/// Network a job's VMs get (DESIGN §7; default: none).
public enum NetworkMode: String, Codable, Sendable, CaseIterable {
    /// No network device at all.
    case none
    /// QEMU user-mode networking (outbound NAT, no inbound), no host bridge needed.
    case user
    /// The isolated libvirt network set up by provisioning (`talus-isolated`), with nwfilters.
    case isolated
}

/// A tool or component recorded by the code hook at one commit (DESIGN §8).
public struct CodeDocument: TalusDocument, Equatable {
    public static let collection = Collection.code
    public static let currentSchema = 1

    public enum Kind: String, Codable, Sendable, CaseIterable { case tool, component }

    public var id: ObjectId
    public var schema: Int
    public var name: String
    public var kind: Kind
    /// Full 40-hex commit id at which this manifest was recorded.
    public var commit: String
    /// The commit time (committer date), for "newest" ordering.
    public var committed: Date
    public var manifest: ToolManifest
    /// Path of the directory in the repository (`tools/<name>`).
    public var path: String
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), name: String, kind: Kind, commit: String, committed: Date,
                manifest: ToolManifest, path: String, tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.name = name; self.kind = kind; self.commit = commit
        self.committed = committed; self.manifest = manifest; self.path = path; created = now; updated = now
        self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, name, kind, commit, committed, manifest, path, created, updated, tags
    }
}

/// A tool, an image and default parameters: what a job runs (DESIGN §3).
public struct TaskDocument: TalusDocument, Equatable {
    public static let collection = Collection.tasks
    public static let currentSchema = 1

    public var id: ObjectId
    public var schema: Int
    public var name: String
    public var tool: String
    /// The tool's commit, pinned at task creation (newest recorded unless given).
    public var toolCommit: String
    public var image: ObjectId
    public var params: BSONDocument
    /// Default limit of jobs created from this task (progress units; −1 = until cancelled).
    public var limit: Int
    public var vm: VMShape
    public var network: NetworkMode
    public var owner: ObjectId?
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), name: String, tool: String, toolCommit: String, image: ObjectId,
                params: BSONDocument = [:], limit: Int = 1, vm: VMShape = VMShape(), network: NetworkMode = .none,
                owner: ObjectId? = nil, tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.name = name; self.tool = tool; self.toolCommit = toolCommit
        self.image = image; self.params = params; self.limit = limit; self.vm = vm; self.network = network
        self.owner = owner; created = now; updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, name, tool
        case toolCommit = "tool_commit"
        case image, params, limit, vm, network, owner, created, updated, tags
    }
}

/// Counts of a job's parts by state.
public struct PartCounts: Codable, Sendable, Equatable {
    public var queued: Int
    public var running: Int
    public var done: Int
    public var failed: Int
    public init(queued: Int = 0, running: Int = 0, done: Int = 0, failed: Int = 0) {
        self.queued = queued; self.running = running; self.done = done; self.failed = failed
    }
}

/// One error kept on a job (bounded list; the newest are kept).
public struct JobError: Codable, Sendable, Equatable {
    public var idx: Int?
    public var attempt: Int?
    public var slave: String?
    public var reason: String
    public var at: Date
    public init(idx: Int? = nil, attempt: Int? = nil, slave: String? = nil, reason: String, at: Date = bsonNow()) {
        self.idx = idx; self.attempt = attempt; self.slave = slave; self.reason = reason; self.at = at
    }
}

/// A task run until `limit` progress units are reached (DESIGN §3).
public struct JobDocument: TalusDocument, Equatable {
    public static let collection = Collection.jobs
    public static let currentSchema = 1
    /// Most errors kept on a job document.
    public static let maxErrors = 50

    public var id: ObjectId
    public var schema: Int
    public var name: String
    public var task: ObjectId
    public var image: ObjectId
    public var tool: String
    public var toolCommit: String
    /// The task's params with the job's own merged over them.
    public var params: BSONDocument
    /// 1 (lowest) … 100 (highest); mapped to AMQP message priority.
    public var priority: Int
    /// Progress units to reach; −1 runs until cancelled.
    public var limit: Int
    /// Progress units counted so far (successful runs only; never above `limit`).
    public var progress: Int
    public var parts: PartCounts
    public var errors: [JobError]
    public var vm: VMShape
    public var network: NetworkMode
    /// AMQP queue the parts go to (slaves consume `default` unless configured otherwise).
    public var queue: String
    /// Keep VMs' serial logs and more event detail.
    public var debug: Bool
    public var status: Status<JobState>
    /// The status the master last accepted (written by the master with every status it writes).
    /// A status that is neither this one nor a request allowed from it is an illegal write: the
    /// master restores this status and reports the write on the job.
    public var observed: JobState?
    /// Progress units of the job's counting runs (running or finished) without the cap at
    /// `limit`; `progress` is this capped. Written by the master only.
    public var counted: Int?
    /// The next part index the master hands out (parts are numbered 1, 2, 3, …).
    public var nextIdx: Int?
    public var owner: ObjectId?
    public var created: Date
    public var updated: Date
    public var tags: Tags

    public init(id: ObjectId = ObjectId(), name: String, task: ObjectId, image: ObjectId, tool: String,
                toolCommit: String, params: BSONDocument = [:], priority: Int = 50, limit: Int = 1,
                vm: VMShape = VMShape(), network: NetworkMode = .none, queue: String = "default", debug: Bool = false,
                status: Status<JobState> = Status(.run), owner: ObjectId? = nil, tags: Tags = [], now: Date = bsonNow()) {
        self.id = id; schema = Self.currentSchema; self.name = name; self.task = task; self.image = image
        self.tool = tool; self.toolCommit = toolCommit; self.params = params; self.priority = priority
        self.limit = limit; progress = 0; parts = PartCounts(); errors = []; self.vm = vm; self.network = network
        self.queue = queue; self.debug = debug; self.status = status; self.owner = owner; created = now
        updated = now; self.tags = tags
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", schema, name, task, image, tool
        case toolCommit = "tool_commit"
        case params, priority, limit, progress, parts, errors, vm, network, queue, debug, status, observed, counted
        case nextIdx = "next_idx"
        case owner, created, updated, tags
    }

    /// True when progress has reached the limit (never for `limit == -1`).
    public var isComplete: Bool { limit >= 0 && progress >= limit }
}

/// One part of a job: a unit of dispatch, run (and retried) until it succeeds or fails for good.
/// `_id` is `"<job id>:<idx>"`, so publishing a part twice can never create two.
public struct PartDocument: Codable, Sendable, Equatable {
    public static let collection = Collection.parts

    public var id: String
    public var job: ObjectId
    public var idx: Int
    /// The attempt currently published or running (1-based).
    public var attempt: Int
    public var status: Status<PartState>
    /// Failed attempts so far, with their reasons (bounded by the master's retry limit).
    public var failures: [JobError]
    /// The run currently executing this part, if any.
    public var run: String?
    public var slave: String?
    public var created: Date
    public var updated: Date

    public init(job: ObjectId, idx: Int, attempt: Int = 1, status: Status<PartState> = Status(.queued), now: Date = bsonNow()) {
        id = PartDocument.id(job: job, idx: idx); self.job = job; self.idx = idx; self.attempt = attempt
        self.status = status; failures = []; run = nil; slave = nil; created = now; updated = now
    }

    public static func id(job: ObjectId, idx: Int) -> String { "\(job.hex):\(idx)" }

    enum CodingKeys: String, CodingKey {
        case id = "_id", job, idx, attempt, status, failures, run, slave, created, updated
    }
}

/// One line a tool logged during a run.
public struct RunLog: Codable, Sendable, Equatable {
    public var at: Date
    public var level: String
    public var message: String
    public init(at: Date, level: String, message: String) { self.at = at; self.level = level; self.message = message }
}

/// One execution of a part on a slave. A redelivered part (its slave died) runs again under a
/// new run id, so events of the two executions never mix. Progress is counted per run and taken
/// back when the run does not end successfully: failed runs never count.
public struct RunDocument: Codable, Sendable, Equatable {
    public static let collection = Collection.runs
    /// Most log lines kept per run (the newest).
    public static let maxLogs = 100

    public enum State: String, Codable, Sendable { case running, finished, failed, lost, cancelled }

    /// The run id chosen by the slave (UUID string).
    public var id: String
    public var job: ObjectId
    public var idx: Int
    public var attempt: Int
    public var slave: String
    public var state: State
    /// Progress units this run reported (counted into the job while the run is not failed).
    public var progress: Int
    /// Highest event sequence number applied with every lower one applied too.
    public var seq: Int
    /// Applied sequence numbers above `seq` (out-of-order arrivals); normally empty.
    public var pending: [Int]
    public var reason: String?
    /// The tool's exit status, when the run ended and the slave knew it.
    public var exitCode: Int?
    /// The end of the VM's serial console when the run failed.
    public var serialTail: String?
    /// The tool's log lines (the newest ``maxLogs``).
    public var logs: [RunLog]
    public var started: Date
    public var ended: Date?

    public init(id: String, job: ObjectId, idx: Int, attempt: Int, slave: String, started: Date = bsonNow()) {
        self.id = id; self.job = job; self.idx = idx; self.attempt = attempt; self.slave = slave
        state = .running; progress = 0; seq = 0; pending = []; reason = nil; exitCode = nil; serialTail = nil
        logs = []; self.started = started; ended = nil
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", job, idx, attempt, slave, state, progress, seq, pending, reason
        case exitCode = "exit_code", serialTail = "serial_tail"
        case logs, started, ended
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        job = try c.decode(ObjectId.self, forKey: .job)
        idx = try c.decode(Int.self, forKey: .idx)
        attempt = try c.decode(Int.self, forKey: .attempt)
        slave = try c.decode(String.self, forKey: .slave)
        state = try c.decode(State.self, forKey: .state)
        progress = try c.decode(Int.self, forKey: .progress)
        seq = try c.decode(Int.self, forKey: .seq)
        pending = try c.decodeIfPresent([Int].self, forKey: .pending) ?? []
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        exitCode = try c.decodeIfPresent(Int.self, forKey: .exitCode)
        serialTail = try c.decodeIfPresent(String.self, forKey: .serialTail)
        logs = try c.decodeIfPresent([RunLog].self, forKey: .logs) ?? []
        started = try c.decode(Date.self, forKey: .started)
        ended = try c.decodeIfPresent(Date.self, forKey: .ended)
    }

    /// True while the run's progress counts toward its job (running or finished successfully).
    public var counts: Bool { state == .running || state == .finished }

    /// Marks `seq` applied. Returns false when it was applied before (a duplicate to drop).
    public mutating func accept(seq n: Int) -> Bool {
        guard n > seq, !pending.contains(n) else { return false }
        pending.append(n)
        pending.sort()
        while let first = pending.first, first == seq + 1 {
            seq = first
            pending.removeFirst()
        }
        return true
    }

    /// Appends a log line, keeping the newest ``maxLogs``.
    public mutating func log(_ line: RunLog) {
        logs.append(line)
        if logs.count > Self.maxLogs { logs.removeFirst(logs.count - Self.maxLogs) }
    }
}
