// talus-bench: measurements of Talus's parts against their references, in the same run.
// Each area adds its subcommand to the list below.

import ArgumentParser

@main
struct TalusBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "talus-bench",
        abstract: "Benchmarks of Talus's parts next to their references.",
        subcommands: [ImageBenchCommand.self])
}
