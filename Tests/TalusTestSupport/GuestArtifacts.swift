// The real test guest (images/build-test-guest.sh) and the statically linked guest agent
// (images/build-agent.sh), built once per test process and cached in images/out.

import Foundation

/// Paths of the test guest image and the static agent.
public struct GuestArtifacts: Sendable {
    /// `images/out/talus-test-guest.qcow2`.
    public let image: String
    /// `images/out/talus-agent` (statically linked).
    public let agent: String

    /// Builds both (or finds them cached) once per process.
    public static func shared() async throws -> GuestArtifacts {
        try await GuestArtifactsBuilder.shared.artifacts()
    }
}

actor GuestArtifactsBuilder {
    static let shared = GuestArtifactsBuilder()
    private var built: GuestArtifacts?

    func artifacts() async throws -> GuestArtifacts {
        if let built { return built }
        let root = try TestEnvironment.repositoryRoot()
        let image = try await Self.lastLine(of: root + "/images/build-test-guest.sh", [], timeout: 900)
        let agent = try await Self.lastLine(of: root + "/images/build-agent.sh", [], timeout: 1800)
        let result = GuestArtifacts(image: image, agent: agent)
        built = result
        return result
    }

    /// Runs a build script and returns the last line of its stdout (the path it built).
    static func lastLine(of script: String, _ arguments: [String], timeout: Double) async throws -> String {
        let dir = try TestEnvironment.scratchDirectory("guest-build")
        let p = try TestProcess(script, arguments, logPath: dir + "/build.log")
        do {
            try await waitUntil("\(script) to finish", timeout: .seconds(timeout), interval: .milliseconds(200)) { !p.isRunning }
        } catch {
            await p.stop()
            throw error
        }
        guard p.process.terminationStatus == 0 else {
            throw TestSupportError("\(script) failed (exit \(p.process.terminationStatus)): \(p.logTail(3000))")
        }
        let lines = p.logTail(100_000).split(separator: "\n").map(String.init)
        guard let path = lines.last(where: { $0.hasPrefix("/") && FileManager.default.fileExists(atPath: $0) }) else {
            throw TestSupportError("\(script) printed no path: \(p.logTail(2000))")
        }
        return path
    }
}
