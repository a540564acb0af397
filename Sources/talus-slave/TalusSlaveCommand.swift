// talus-slave: runs job parts in throw-away VMs on this hypervisor host (DESIGN §7).
//   talus-slave [--config /etc/talus/slave.yaml]
//   talus-slave config-reference

import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import TalusCore
import TalusSlave

@main
struct TalusSlaveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "talus-slave",
        abstract: "Runs Talus job parts in throw-away VMs on this hypervisor host.",
        subcommands: [Serve.self, ConfigReference.self],
        defaultSubcommand: Serve.self)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Take parts from the broker and run them (the default).")

    @Option(name: .long, help: "The configuration file (YAML). Default: /etc/talus/slave.yaml if it exists.")
    var config: String?

    func run() async throws {
        let configuration: SlaveConfiguration
        do {
            let settings = try await Settings(filePath: config ?? "/etc/talus/slave.yaml", required: config != nil)
            configuration = try SlaveConfiguration(settings: settings)
        } catch let error as SettingsError {
            FileHandle.standardError.write(Data("talus-slave: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
        Observability.bootstrap(level: configuration.logLevel)
        let logger = Logger(label: "talus.slave")
        let slave = Slave(configuration: configuration, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let listen = configuration.metricsListen {
            let ops = OpsServer.application(host: listen.host, port: listen.port, logger: logger) { slave.health() }
            services.append(.init(service: ops))
        }
        // The slave is shut down first (reverse order) and ends the group when it returns.
        services.append(.init(service: slave, successTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch let error as SettingsError {
            logger.critical("\(error)")
            throw ExitCode(78)
        } catch {
            logger.critical("talus-slave stopped: \(error)")
            throw ExitCode(1)
        }
    }
}

struct ConfigReference: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config-reference", abstract: "Print every configuration key with its default and meaning (Markdown).")

    func run() async throws {
        print(SlaveKeys.reference())
    }
}
