// talus-master: the thin executable over TalusMaster (DESIGN §2, §4).

import ArgumentParser
import Foundation
import TalusCore
import TalusMaster

@main
struct TalusMasterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "talus-master",
        abstract: "The Talus master: reconciles images and jobs from a MongoDB change stream, dispatches parts and ingests slave events.",
        subcommands: [Serve.self, ConfigReference.self],
        defaultSubcommand: Serve.self)
}

/// Runs the daemon (the default).
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the master daemon (the default).")

    @Option(name: .long, help: "Configuration file (YAML). Default: \(MasterConfig.defaultPath) if it exists.")
    var config: String?

    func run() async throws {
        let settings: MasterConfig
        do {
            settings = try await MasterConfig.load(path: config ?? MasterConfig.defaultPath, required: config != nil)
        } catch let error as SettingsError {
            FileHandle.standardError.write(Data("talus-master: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
        Observability.bootstrap(level: settings.logLevel)
        try await MasterDaemon.run(config: settings)
    }
}

/// Prints the Markdown reference of every configuration key.
struct ConfigReference: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config-reference", abstract: "Print the reference of every configuration key (Markdown).")

    func run() {
        print(MasterConfig.reference())
    }
}
