// Illegal status writes (DESIGN §3): users write only requests; the master writes every other
// state and records the status it accepted in `observed`. A status that is neither the observed
// one nor a request allowed from it is refused: the master restores the observed status with a
// reason and never acts on the illegal one.

import TalusModel

/// The verdict on a document's status.
enum StatusVerdict<S: StatusName>: Equatable {
    /// Act on this state.
    case accept(S)
    /// Refuse the written status: restore `restore` (nil: the document never had a valid
    /// status) and report `reason`.
    case refuse(restore: S?, reason: String)
}

enum StatusGuard {
    /// Judges `written` (the raw `status.name`) against `observed` (the raw `observed`).
    static func judge<S: StatusName>(_ type: S.Type, written: String?, observed: String?) -> StatusVerdict<S> {
        let previous = observed.flatMap(S.init(rawValue:))
        guard let written else {
            return .refuse(restore: previous, reason: "the status was removed")
        }
        guard let state = S(rawValue: written) else {
            let allowed = previous.map { $0.allowedRequests.map(\.rawValue) } ?? S.initial.map(\.rawValue).sorted()
            return .refuse(restore: previous, reason: "unknown status \"\(written)\"" +
                           (allowed.isEmpty ? "" : " (allowed here: \(allowed.joined(separator: ", ")))"))
        }
        guard let previous else {
            if S.initial.contains(state) || (state.isRequest && S.initial.contains { $0.canMove(to: state) }) {
                return .accept(state)
            }
            return .refuse(restore: nil, reason: "created in status \(state.rawValue); new \(S.collection.rawValue) start in \(S.initial.map(\.rawValue).sorted().joined(separator: " or "))")
        }
        if state == previous || (state.isRequest && previous.canMove(to: state)) { return .accept(state) }
        let allowed = previous.allowedRequests.map(\.rawValue)
        return .refuse(restore: previous, reason: "illegal status change \(previous.rawValue) → \(state.rawValue)" +
                       (allowed.isEmpty ? " (no request is allowed now)" : " (allowed requests: \(allowed.joined(separator: ", ")))"))
    }
}
