// What keeps image reconciles short: long steps (conversions, VM boots, commits, hashes) run as
// background tasks that a later reconcile collects, and a table of slots bounds how many image
// operations run at once (`images.max_concurrent`).

import BSON
import TalusModel

/// The long steps of image operations.
enum ImageStep: String, Sendable {
    /// Probe the upload and convert it into the store.
    case prepareImport
    /// Start the session VM and wait for its VNC server.
    case boot
    /// Commit the session, remove the VM, hash the file.
    case finalize
}

/// What a finished step hands to the reconcile that collects it.
enum ImageStepOutput: Sendable {
    case prepared
    case booted(BootedSession)
    case finalized(ImageFile)
}

/// One background step per image at a time. When a step finishes, `hint` names the image so that
/// the work queue reconciles it at once; the result waits until a reconcile collects it.
actor BackgroundSteps {
    enum Poll: Sendable {
        case running(since: ContinuousClock.Instant)
        case finished(Result<ImageStepOutput, any Error>)
    }

    private struct Entry {
        let serial: Int
        let step: ImageStep
        let started: ContinuousClock.Instant
        let task: Task<Void, Never>
        var result: Result<ImageStepOutput, any Error>?
    }

    private var entries: [ObjectId: Entry] = [:]
    private var nextSerial = 0
    private let hint: @Sendable (ObjectId) -> Void

    init(hint: @escaping @Sendable (ObjectId) -> Void) {
        self.hint = hint
    }

    /// The step of image `id` and its state, nil if there is none. A finished result is
    /// handed out once (the entry is removed).
    func take(_ id: ObjectId) -> (step: ImageStep, poll: Poll)? {
        guard let entry = entries[id] else { return nil }
        guard let result = entry.result else { return (entry.step, .running(since: entry.started)) }
        entries[id] = nil
        return (entry.step, .finished(result))
    }

    /// Starts `step` for image `id` (replacing any other step of that image).
    func start(_ id: ObjectId, _ step: ImageStep, _ body: @escaping @Sendable () async throws -> ImageStepOutput) {
        cancel(id)
        nextSerial += 1
        let serial = nextSerial
        let task = Task { [hint] in
            let result: Result<ImageStepOutput, any Error>
            do {
                result = .success(try await body())
            } catch {
                result = .failure(error)
            }
            if self.finish(id, serial, result) { hint(id) }
        }
        entries[id] = Entry(serial: serial, step: step, started: .now, task: task, result: nil)
    }

    /// Stores the result of the step numbered `serial`; false when that step was cancelled or
    /// replaced meanwhile.
    private func finish(_ id: ObjectId, _ serial: Int, _ result: Result<ImageStepOutput, any Error>) -> Bool {
        guard entries[id]?.serial == serial else { return false }
        entries[id]?.result = result
        return true
    }

    /// Cancels the step of image `id`, if any. The task sees the cancellation at its next
    /// suspension point and cleans up after itself.
    func cancel(_ id: ObjectId) {
        entries.removeValue(forKey: id)?.task.cancel()
    }

    /// Cancels every step (the reconciler stops).
    func cancelAll() {
        for entry in entries.values { entry.task.cancel() }
        entries.removeAll()
    }

    /// Whether image `id` has a step in flight or uncollected.
    func hasStep(_ id: ObjectId) -> Bool { entries[id] != nil }
}

/// Bounds the image operations that run at once. An operation holds its slot from its start
/// (conversion or VM boot) to `ready`, `error` or removal. Waiting images are named to `hint`
/// when a slot frees up.
actor ImageSlots {
    let limit: Int
    private var holders = Set<ObjectId>()
    private var waiting = Set<ObjectId>()
    private let hint: @Sendable (ObjectId) -> Void

    init(limit: Int, hint: @escaping @Sendable (ObjectId) -> Void) {
        self.limit = limit
        self.hint = hint
    }

    /// Takes a slot for `id` (true), or records it as waiting (false). A holder gets true again.
    func acquire(_ id: ObjectId) -> Bool {
        if holders.contains(id) { return true }
        guard holders.count < limit else {
            waiting.insert(id)
            return false
        }
        waiting.remove(id)
        holders.insert(id)
        return true
    }

    /// Marks `id` as holding a slot whatever the limit: an operation found running (after a
    /// restart) keeps going.
    func hold(_ id: ObjectId) {
        holders.insert(id)
        waiting.remove(id)
    }

    /// Gives up `id`'s slot (or its place in the wait) and hints the waiting images.
    func release(_ id: ObjectId) {
        waiting.remove(id)
        guard holders.remove(id) != nil else { return }
        for waiter in waiting { hint(waiter) }
    }

    var running: Int { holders.count }
    var waitingCount: Int { waiting.count }
}
