// `talus-api` subcommands: `serve`, `bootstrap-admin`, `config-reference`.

import ArgumentParser
import Foundation
import Logging
import Mongo
import TalusCore
import TalusModel

/// The `talus-api` command line.
public struct TalusAPICommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "talus-api",
        abstract: "The Talus REST API.",
        subcommands: [Serve.self, BootstrapAdmin.self, ConfigReference.self],
        defaultSubcommand: Serve.self)

    public init() {}

    /// Parses the process arguments and runs the subcommand (the executable's entry point).
    public static func runMain() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    /// Options every subcommand that reads the configuration takes.
    struct ConfigOptions: ParsableArguments {
        @Option(name: .long, help: "Configuration file (YAML). Default: /etc/talus/api.yaml when it exists.")
        var config: String?

        func load() async throws -> APIConfig {
            let settings = try await Settings(filePath: config ?? "/etc/talus/api.yaml", required: config != nil)
            return try APIConfig(settings: settings)
        }
    }

    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Serve the REST API (the default).")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let config: APIConfig
            do { config = try await options.load() } catch { fail("talus-api: \(error)", status: 78) }
            Observability.bootstrap(level: config.logLevel)
            var log = Logger(label: "talus.api")
            log.logLevel = config.logLevel
            let logger = log
            let client: MongoClient
            do {
                client = try MongoClient(uri: config.mongoURI, logger: Logger(label: "talus.mongo"))
            } catch {
                fail("talus-api: configuration key mongo.uri: \(error)", status: 78)
            }
            let app: TalusAPIServer.App
            do {
                (app, _) = try await TalusAPIServer.build(config: config, client: client, logger: logger) { port in
                    logger.info("talus-api serving", metadata: ["address": .string("\(config.host):\(port)")])
                    SystemdNotifier.ready(status: "serving on \(config.host):\(port)")
                }
            } catch {
                fail("talus-api: cannot start: \(error)")
            }
            try await app.runService()
            SystemdNotifier.stopping()
            await client.close()
            logger.info("talus-api stopped")
        }
    }

    struct BootstrapAdmin: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bootstrap-admin",
            abstract: "Create the first admin user and print its token once.",
            discussion: "Refuses when an enabled admin exists, unless --force (which also gives an existing user NAME a new admin token).")
        @OptionGroup var options: ConfigOptions
        @Option(help: "The admin's user name.") var name: String
        @Flag(help: "Create another admin, or a new token for an existing user NAME.") var force = false
        @Flag(help: "Print {\"user\": …, \"token\": …} as JSON.") var json = false

        func run() async throws {
            let config: APIConfig
            do { config = try await options.load() } catch { fail("talus-api: \(error)", status: 78) }
            var logger = Logger(label: "talus.api")
            logger.logLevel = .warning
            let client = try MongoClient(uri: config.mongoURI, logger: logger)
            defer { Task { await client.close() } }
            let store = APIStore(database: client.database(config.database))
            let user: UserDocument, token: String
            do {
                (user, token) = try await bootstrapAdmin(store: store, name: name, force: force)
            } catch let e as BootstrapError {
                fail("talus-api bootstrap-admin: \(e.message)")
            }
            if json {
                struct Out: Encodable { var user: UserDocument; var token: String }
                print(String(decoding: try TalusJSON.encoder().encode(Out(user: user, token: token)), as: UTF8.self))
            } else {
                print("Admin user \(user.name) (\(user.id.hex)). Its token, shown only this once:\n\n  \(token)\n")
                print("Log in with `talus login http://\(config.host):\(config.port)` and paste the token.")
            }
        }
    }

    struct ConfigReference: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "config-reference", abstract: "Print every configuration key with its default (Markdown).")
        func run() {
            print(settingsReference(title: "talus-api", file: "/etc/talus/api.yaml", keys: APIConfig.keys))
        }
    }
}

/// Prints `message` to stderr and exits 1.
/// Writes `message` to stderr and exits with `status` (78, EX_CONFIG, for configuration errors:
/// the systemd unit does not restart on it).
func fail(_ message: any CustomStringConvertible, status: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data((message.description + "\n").utf8))
    exit(status)
}
