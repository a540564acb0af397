// talus-bench: measurements of Talus parts next to references, in the same run.
import ArgumentParser

struct TalusBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "talus-bench",
        abstract: "Talus benchmarks (each subcommand measures one part next to its reference).",
        subcommands: [APIBenchCommand.self])

    /// Parses and runs the subcommand asynchronously (`main()` would pick the synchronous path).
    static func runMain() async {
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
}

await TalusBench.runMain()
