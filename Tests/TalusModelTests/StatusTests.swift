import BSON
import Testing
@testable import TalusModel

@Suite struct StatusTests {
    @Test func requestsAreTheOnlyUserStates() {
        #expect(Set(ImageState.allCases.filter(\.isRequest)) == [.import, .configure, .create, .delete])
        #expect(Set(JobState.allCases.filter(\.isRequest)) == [.run, .cancel])
        #expect(PartState.allCases.allSatisfy { !$0.isRequest })
    }

    @Test func illegalTransitionNamesBothStates() throws {
        let id = ObjectId()
        #expect(throws: TransitionError(collection: "jobs", id: id, from: "running", to: "run")) {
            try JobState.running.checkTransition(to: .run, id: id)
        }
        let error = TransitionError(collection: "images", id: id, from: "ready", to: "importing")
        #expect(error.description.contains("ready → importing"))
        #expect(error.description.contains(id.hex))
        try JobState.run.checkTransition(to: .running)
        try ImageState.importing.checkTransition(to: .importing)   // same state: an update, allowed
    }

    @Test func nonInteractiveCreateMayGoStraightToReady() throws {
        try ImageState.create.checkTransition(to: .ready)
        try ImageState.create.checkTransition(to: .creating)
        #expect(!ImageState.import.canMove(to: .ready), "an import always runs a VM")
    }

    @Test func terminalStatesHaveNoWayOut() {
        #expect(JobState.finished.isTerminal && JobState.cancelled.isTerminal && JobState.failed.isTerminal)
        #expect(!JobState.running.isTerminal)
        for next in JobState.allCases where next != .finished { #expect(!JobState.finished.canMove(to: next)) }
    }

    @Test func everyTransitionTargetIsAState() {
        func check<S: StatusName>(_ type: S.Type) {
            for (from, targets) in S.transitions {
                #expect(!targets.contains(from), "\(from) lists itself")
            }
            #expect(!S.initial.isEmpty)
        }
        check(ImageState.self); check(JobState.self); check(PartState.self); check(SlaveState.self)
    }

    @Test func partLifecycle() {
        // Published, started, failed and republished; the new attempt may start before the master
        // recorded it queued again.
        #expect(PartState.queued.canMove(to: .running) && PartState.running.canMove(to: .retry))
        #expect(PartState.retry.canMove(to: .queued) && PartState.retry.canMove(to: .running))
        #expect(PartState.running.canMove(to: .queued))   // its slave died: RabbitMQ redelivers
        #expect(PartState.done.isTerminal && PartState.failed.isTerminal && PartState.cancelled.isTerminal)
    }

    @Test func allowedRequests() {
        #expect(ImageState.ready.allowedRequests == [.configure, .delete])
        #expect(JobState.running.allowedRequests == [.cancel])
        #expect(JobState.finished.allowedRequests == [])
    }

    @Test func runDeduplicatesBySequence() {
        var run = RunDocument(id: "r", job: ObjectId(), idx: 0, attempt: 1, slave: "s")
        var accepted: [Bool] = []
        for seq in [1, 1, 3] { accepted.append(run.accept(seq: seq)) }
        #expect(accepted == [true, false, true])
        #expect(run.seq == 1 && run.pending == [3])    // out of order: kept pending
        accepted = []
        for seq in [3, 2, 2, 0] { accepted.append(run.accept(seq: seq)) }
        #expect(accepted == [false, true, false, false])
        #expect(run.seq == 3 && run.pending.isEmpty)
    }

    @Test func priorityMapping() {
        #expect(AMQPNames.amqpPriority(jobPriority: 1) == 1)
        #expect(AMQPNames.amqpPriority(jobPriority: 50) == 5)
        #expect(AMQPNames.amqpPriority(jobPriority: 100) == 10)
        #expect(AMQPNames.amqpPriority(jobPriority: 0) == 1)
        #expect(AMQPNames.amqpPriority(jobPriority: 1000) == 10)
    }

    @Test func amqpNamesCarryTheirNamespace() {
        #expect(AMQPNames.partsExchange == "talus.parts")
        #expect(AMQPNames.partsQueue("default") == "talus.parts.default")
        #expect(AMQPNames.eventsQueue == "talus.events")
        #expect(AMQPNames.controlExchange == "talus.control")
        #expect(AMQPNames.deadLetterQueue == "talus.dead")
        let test = AMQPNames(namespace: "t1")
        #expect(test.partsExchange == "t1.parts")
        #expect(test.partsQueue("gpu") == "t1.parts.gpu")
        #expect(test.eventsQueue == "t1.events")
        #expect(test.controlExchange == "t1.control")
        #expect(test.deadLetterExchange == "t1.dead")
        #expect(AMQPNames.standard == AMQPNames(namespace: "talus"))
    }

    @Test func runLogsKeepTheNewest() {
        var run = RunDocument(id: "r", job: ObjectId(), idx: 1, attempt: 1, slave: "s")
        for i in 0..<(RunDocument.maxLogs + 5) { run.log(RunLog(at: bsonNow(), level: "info", message: "line \(i)")) }
        #expect(run.logs.count == RunDocument.maxLogs)
        #expect(run.logs.first?.message == "line 5")
        #expect(run.counts)
        run.state = .failed
        #expect(!run.counts)
    }

    @Test func crashBuckets() {
        #expect(CrashSignature.bucket("  SEGV   in parse_header at 0x7ffd1234abcd  ") == "SEGV in parse_header at 0xADDR")
        #expect(CrashSignature.bucket("SEGV in parse_header at 0x55aa00112233") == CrashSignature.bucket("SEGV in parse_header at 0x7ffd1234abcd"))
        #expect(CrashSignature.bucket("abort at 0x12") == "abort at 0x12")
        #expect(CrashSignature.bucket("") == "unknown")
        #expect(CrashSignature.bucket(String(repeating: "a", count: 1000)).count == 256)
    }
}
