// A small buffer between producers (an AMQP consumer, commands) and one batching consumer.

import Synchronization

/// Items pushed from anywhere, taken in batches by one task.
final class Inbox<Item: Sendable>: Sendable {
    private struct State {
        var items: [Item] = []
        var finished = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func push(_ item: Item) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard !s.finished else { return nil }
            s.items.append(item)
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// No more items will come; a waiting ``next(max:linger:)`` returns what is left, then nil.
    func finish() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.finished = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    var count: Int { state.withLock { $0.items.count } }

    /// Waits for at least one item, then up to `linger` for more (unless `max` are there), and
    /// returns at most `max`. Nil once finished and empty, or when the task is cancelled.
    func next(max: Int, linger: Duration) async -> [Item]? {
        while true {
            if Task.isCancelled { return nil }
            let (available, finished) = state.withLock { ($0.items.count, $0.finished) }
            if available > 0 {
                if available < max, !finished, linger > .zero {
                    try? await Task.sleep(for: linger)
                }
                return state.withLock { s in
                    let n = Swift.min(max, s.items.count)
                    let batch = Array(s.items.prefix(n))
                    s.items.removeFirst(n)
                    return batch
                }
            }
            if finished { return nil }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { s -> Bool in
                        if !s.items.isEmpty || s.finished || s.waiter != nil || Task.isCancelled { return true }
                        s.waiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            } onCancel: {
                let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
                    defer { s.waiter = nil }
                    return s.waiter
                }
                waiter?.resume()
            }
        }
    }
}
