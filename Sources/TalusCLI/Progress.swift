// Progress of a transfer on stderr: a bar redrawn in place on a terminal (bytes, rate, ETA), or a
// plain line every few seconds when stderr is a file or a pipe.

import Foundation
import Synchronization
import TalusCore

/// Byte progress of one transfer. Safe to update from any task.
final class Progress: Sendable {
    struct State {
        var total: Int64 = 0
        var done: Int64 = 0
        var started = ContinuousClock.now
        /// `done` when the rate window began (resumes do not count as speed).
        var baseDone: Int64 = 0
        var lastDraw = ContinuousClock.now - .seconds(3600)
        var finished = false
    }

    let label: String
    let terminal: Bool
    let interval: Duration
    private let state = Mutex(State())

    /// - Parameter interval: how often a line is printed when stderr is not a terminal.
    init(label: String, terminal: Bool = isatty(2) == 1, interval: Duration = .seconds(5)) {
        self.label = label; self.terminal = terminal; self.interval = interval
    }

    func start(total: Int64) {
        state.withLock { $0 = State(total: total, started: .now) }
        draw(force: true)
    }

    func add(_ bytes: Int) {
        state.withLock { $0.done += Int64(bytes) }
        draw(force: false)
    }

    /// After a resume: the server has `done` bytes.
    func reset(to done: Int64) {
        state.withLock { $0.done = done; $0.baseDone = done; $0.started = .now }
    }

    func note(_ message: String) {
        let prefix = terminal ? "\r\u{1B}[K" : ""
        FileHandle.standardError.write(Data((prefix + message + "\n").utf8))
    }

    func finish() {
        state.withLock { $0.finished = true }
        draw(force: true)
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    private func draw(force: Bool) {
        let now = ContinuousClock.now
        let line: String? = state.withLock { s in
            let every: Duration = terminal ? .milliseconds(100) : interval
            guard force || now - s.lastDraw >= every else { return nil }
            s.lastDraw = now
            return Self.render(label: label, s, now: now, width: terminal ? 24 : 0)
        }
        guard let line else { return }
        FileHandle.standardError.write(Data((terminal ? "\r\u{1B}[K" + line : line + "\n").utf8))
    }

    static func render(label: String, _ s: State, now: ContinuousClock.Instant, width: Int) -> String {
        let elapsed = now - s.started
        let seconds = elapsed.secondsDouble
        let rate = seconds > 0.2 ? Double(s.done - s.baseDone) / seconds : 0
        let fraction = s.total > 0 ? Double(s.done) / Double(s.total) : 1
        var parts = [label]
        if width > 0 {
            let filled = Int((fraction * Double(width)).rounded(.down))
            parts.append("[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "]")
        }
        parts.append("\(Format.bytes(s.done)) / \(Format.bytes(s.total))")
        parts.append(String(format: "%3.0f%%", fraction * 100))
        if rate > 0 { parts.append("\(Format.bytes(Int64(rate)))/s") }
        if s.finished {
            parts.append("in \(Format.duration(seconds))")
        } else if rate > 0 {
            parts.append("ETA \(Format.duration(Double(s.total - s.done) / rate))")
        }
        return parts.joined(separator: "  ")
    }
}
