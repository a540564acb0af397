// talus-api configuration: every key declared and documented, bad values and unknown keys name
// the key, and the executable says so and exits.

import Foundation
import TalusAPI
import TalusCore
import TalusTestSupport
import Testing

@Suite struct ConfigTests {
    @Test func defaultsAreTheDocumentedOnes() throws {
        let config = try APIConfig(settings: Settings(values: [:]))
        #expect(config.host == "127.0.0.1" && config.port == 8420)
        #expect(config.database == "talus")
        #expect(config.uploadsDirectory == "/var/lib/talus/uploads" && config.imagesDirectory == "/var/lib/talus/images")
        #expect(config.uploadMaxBytes == 64 << 30 && config.uploadExpireAfter == .seconds(86_400))
        #expect(config.maxBody == 1 << 20 && !config.metricsPublic)
        #expect(APIConfig.keys.allSatisfy { !$0.doc.isEmpty })
    }

    @Test func badValuesAndUnknownKeysNameTheKey() throws {
        for (values, key) in [
            (["http.listen": "localhost"], "http.listen"), (["uploads.max_bytes": "lots"], "uploads.max_bytes"),
            (["uploads.expire_after": "soon"], "uploads.expire_after"), (["storage.uploads": "relative/dir"], "storage.uploads"),
            (["mongo.uri": "postgres://x"], "mongo.uri"), (["log.level": "loud"], "log.level"),
            (["http.max_body": "1"], "http.max_body"), (["http.lisen": "127.0.0.1:1"], "http.lisen"),
        ] {
            #expect {
                _ = try APIConfig(settings: Settings(values: values))
            } throws: { error in
                (error as? SettingsError)?.key == key
            }
        }
        let parsed = try APIConfig(settings: Settings(values: ["http.listen": "[::1]:9000", "uploads.max_bytes": "2GiB", "http.max_body": "64KiB"]))
        #expect(parsed.host == "::1" && parsed.port == 9000 && parsed.uploadMaxBytes == 2 << 30 && parsed.maxBody == 64 << 10)
        #expect(APIConfig.parseBytes("512") == 512 && APIConfig.parseBytes("1 MiB") == 1 << 20 && APIConfig.parseBytes("-1") == nil)
    }

    @Test func theExecutableRefusesABadFileAndPrintsTheReference() async throws {
        let exe = try TestEnvironment.executable("talus-api")
        let dir = try TestEnvironment.scratchDirectory("apiconfig")
        let file = dir + "/api.yaml"
        try "http:\n  listen: 127.0.0.1:1\nuploads:\n  max_bytes: huge\n".write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try await runCommand(exe, ["serve", "--config", file], timeout: .seconds(60), check: false)
        #expect(bad.status == 78)  // EX_CONFIG: the unit does not restart on it
        #expect(bad.stderr.contains("uploads.max_bytes"), "\(bad.stderr)")
        let missing = try await runCommand(exe, ["serve", "--config", dir + "/nope.yaml"], timeout: .seconds(60), check: false)
        #expect(missing.status == 78 && missing.stderr.contains("does not exist"))
        let reference = try await runCommand(exe, ["config-reference"], timeout: .seconds(60))
        for key in APIConfig.keys { #expect(reference.stdout.contains("`\(key.name)`")) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
