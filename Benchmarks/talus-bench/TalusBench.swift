// talus-bench: printed figures of the Talus components (not tests). Each area registers its
// subcommand group here. (`@main` in a file not called main.swift: top-level code would pick
// ArgumentParser's synchronous entry point.)

import ArgumentParser

@main
struct TalusBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "talus-bench", abstract: "Benchmarks of the Talus components against the real services.",
        subcommands: [MasterBench.self])
}
