// A 3 GiB (sparse) file through the CLI into `talus-api` running as its own process: the API's
// resident memory stays under 100 MB and the stored sha256 is what sha256sum says.

import BSON
import Foundation
import Mongo
import TalusAPI
import TalusAPITestSupport
import TalusCore
import TalusModel
import TalusTestSupport
import Testing

/// `talus-api` as a subprocess on a fresh database, with an admin token.
final class APIProcess: @unchecked Sendable {
    // Set once in `start`, read afterwards.
    let process: TestProcess
    let baseURL: String
    let token: String
    let directory: String
    let database: String
    let mongoURI: String

    private init(process: TestProcess, baseURL: String, token: String, directory: String, database: String, mongoURI: String) {
        self.process = process; self.baseURL = baseURL; self.token = token; self.directory = directory
        self.database = database; self.mongoURI = mongoURI
    }

    static func start(_ prefix: String) async throws -> APIProcess {
        let exe = try TestEnvironment.executable("talus-api")
        let dir = try TestEnvironment.scratchDirectory(prefix)
        let port = try freeLoopbackPort()
        let database = uniqueName(prefix)
        let mongoURI = try TestEnvironment.mongoURI()
        let config = dir + "/api.yaml"
        try Settings.yaml(APIConfig.localValues(port: port, mongoURI: mongoURI, database: database, directory: dir))
            .write(toFile: config, atomically: true, encoding: .utf8)
        let bootstrap = try await runCommand(exe, ["bootstrap-admin", "--config", config, "--name", "root", "--json"], timeout: .seconds(60))
        let out = try #require(try JSONSerialization.jsonObject(with: Data(bootstrap.stdout.utf8)) as? [String: Any])
        let token = try #require(out["token"] as? String)
        let process = try TestProcess(exe, ["serve", "--config", config], logPath: dir + "/api.log")
        try await waitUntil("talus-api to listen", timeout: .seconds(60)) {
            guard process.isRunning else { throw TestSupportError("talus-api exited: \(process.logTail())") }
            return isListening(port: port)
        }
        return APIProcess(process: process, baseURL: "http://127.0.0.1:\(port)", token: token, directory: dir, database: database,
                          mongoURI: mongoURI)
    }

    /// Resident set size in bytes, from /proc.
    var rss: Int64? {
        guard let status = try? String(contentsOfFile: "/proc/\(process.pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int64(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kb * 1024
    }

    func stop() async {
        await process.stop()
        if let client = try? MongoClient(uri: mongoURI) {
            try? await client.database(database).drop()
            await client.close()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite struct LargeUploadTests {
    @Test(.timeLimit(.minutes(10))) func aThreeGiBUploadKeepsTheAPIsMemoryFlat() async throws {
        let api = try await APIProcess.start("bigupload")
        do {
            let file = api.directory + "/disk.raw"
            let size: Int64 = 3 << 30
            FileManager.default.createFile(atPath: file, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
            // Sparse, with a few real bytes so the hash is not of zeros only.
            try handle.seek(toOffset: UInt64(size / 2))
            try handle.write(contentsOf: Data("talus in the middle".utf8))
            try handle.truncate(atOffset: UInt64(size))
            try handle.close()
            let baseline = try #require(api.rss)
            let env = ["HOME": api.directory, "TALUS_URL": api.baseURL, "TALUS_TOKEN": api.token]
            let upload = try RunningCLI(["upload", "put", file, "--json"], env: env)
            var peak: Int64 = baseline
            let clock = ContinuousClock()
            let start = clock.now
            while upload.process.isRunning {
                if let r = api.rss { peak = max(peak, r) }
                try await Task.sleep(for: .milliseconds(50))
            }
            let elapsed = clock.now - start
            let run = try await upload.finish()
            #expect(run.status == 0, "\(run)")
            let answer = try #require(run.object)
            #expect(answer["complete"] as? Bool == true && (answer["size"] as? NSNumber)?.int64Value == size)
            let id = try #require(answer["_id"] as? String)
            let stored = api.directory + "/uploads/" + id
            let expected = try sha256sum(path: file)
            #expect(answer["sha256"] as? String == expected)
            #expect(try sha256sum(path: stored) == expected)
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            print("3 GiB upload: \(String(format: "%.1f", seconds)) s (\(String(format: "%.0f", Double(size) / seconds / 1_048_576)) MiB/s); API RSS \(baseline >> 20) MiB before, peak \(peak >> 20) MiB")
            #expect(peak < 100 << 20, "peak RSS \(peak >> 20) MiB")
            #expect(run.stderr.contains("100%"))
            try? FileManager.default.removeItem(atPath: stored)
            try? FileManager.default.removeItem(atPath: file)
        } catch { await api.stop(); throw error }
        await api.stop()
    }
}
