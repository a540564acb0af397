// A counting semaphore for async code: waiting suspends the task, never a thread.

import Synchronization

/// Hands out at most `permits` permits; `acquire` suspends (cancellably) while none is free.
///
/// The client uses one permit per `mongoc_client_t` checked out of libmongoc's pool, so a pool
/// thread never blocks in `mongoc_client_pool_pop` (the deadlock mongo-swift-driver describes:
/// cursors holding connections while every thread waits for one).
final class AsyncSemaphore: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var available: Int
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state: Mutex<State>
    let permits: Int

    init(permits: Int) {
        self.permits = permits
        state = Mutex(State(available: permits))
    }

    /// Free permits right now (for tests and metrics).
    var available: Int { state.withLock { $0.available } }

    /// Takes a permit, waiting until one is released. Throws `CancellationError` if the task is
    /// cancelled while waiting.
    func acquire() async throws {
        let id: UInt64? = state.withLock { s in
            if s.available > 0 {
                s.available -= 1
                return nil
            }
            s.nextID += 1
            return s.nextID
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome: Bool? = state.withLock { s in
                    if Task.isCancelled { return false }
                    if s.available > 0 {
                        s.available -= 1
                        return true
                    }
                    s.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                switch outcome {
                case true?: continuation.resume()
                case false?: continuation.resume(throwing: CancellationError())
                case nil: break
                }
            }
        } onCancel: {
            let waiter = state.withLock { s -> Waiter? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: i)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Returns a permit, waking the longest waiter if there is one.
    func release() {
        let next = state.withLock { s -> Waiter? in
            if s.waiters.isEmpty {
                s.available += 1
                return nil
            }
            return s.waiters.removeFirst()
        }
        next?.continuation.resume()
    }
}
