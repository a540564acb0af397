// HTTP Range requests (RFC 9110 §14) for file downloads: one range per request.

import Foundation

/// What a `Range` header asks of a file of `size` bytes.
enum RangeRequest: Equatable {
    /// No usable range: send the whole file (absent header, other units, several ranges).
    case whole
    /// Send bytes `lower...upper` (inclusive) with 206.
    case part(ClosedRange<Int64>)
    /// Answer 416 with `Content-Range: bytes */size`.
    case unsatisfiable

    init(header: String?, size: Int64) {
        guard let header = header?.trimmingCharacters(in: .whitespaces), header.hasPrefix("bytes=") else {
            self = .whole
            return
        }
        let spec = header.dropFirst(6)
        // Several ranges are allowed to be ignored (RFC 9110 §14.2): the whole file is simplest.
        guard !spec.contains(",") else { self = .whole; return }
        let ends = spec.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard ends.count == 2 else { self = .unsatisfiable; return }
        let first = ends[0].trimmingCharacters(in: .whitespaces), last = ends[1].trimmingCharacters(in: .whitespaces)
        if first.isEmpty {
            // Suffix: the last N bytes.
            guard let n = Int64(last), n > 0, size > 0 else { self = .unsatisfiable; return }
            self = .part(max(0, size - n)...(size - 1))
            return
        }
        guard let start = Int64(first), start >= 0, start < size else { self = .unsatisfiable; return }
        if last.isEmpty {
            self = .part(start...(size - 1))
            return
        }
        guard let end = Int64(last), end >= start else { self = .unsatisfiable; return }
        self = .part(start...min(end, size - 1))
    }
}
