// talus-bench: measurements of the project's building blocks. One subcommand per benchmark.

import ArgumentParser

struct TalusBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "talus-bench",
        abstract: "Benchmarks of Talus components.",
        subcommands: [
            ChangeStreamBench.self,
            AMQPBenchCommand.self,
            MasterBench.self,
            ImageBenchCommand.self,
            APIBenchCommand.self,
            SlaveBenchCommand.self,
        ]
    )

    /// Top-level code resolves `main()` to the synchronous overload; inside an async function it
    /// is the async one, which runs the subcommands' `run() async`.
    static func start() async { await main() }
}

await TalusBench.start()
