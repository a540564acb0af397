// `talus tool run-local DIR`: runs a tool on this machine with the guest's contract (DESIGN §8),
// after the checks the code repository's hook would make, printing events as they happen and a
// summary. The exit status is the tool's. Needs no server and no login.

import ArgumentParser
import BSON
import Foundation
import TalusCode
import TalusCore
import TalusModel

/// `talus tool …`.
struct ToolCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tool", abstract: "Work on tools before pushing them.", subcommands: [RunLocal.self])

    struct RunLocal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "run-local",
            abstract: "Run a tool from a directory with the same contract as in a Talus VM.",
            discussion: """
                Checks DIR (tools/<name>) and the components it uses as a push would, packs and unpacks \
                them like a bundle, and runs the entry command in tool/ with TALUS_PARAMS, TALUS_OUTPUT, \
                TALUS_EVENTS and TALUS_COMPONENTS, printing the tool's output and events as they happen \
                and a summary (progress, results, crashes with their sample files). Components come from \
                --components, else from the components/ directory next to tools/. As in the guest, the tool \
                sees only the Talus variables, HOME (the work directory), PATH and TERM=dumb. The exit status \
                is the tool's (124 after --timeout, 130 when interrupted).
                """)

        @Argument(help: "The tool directory (holding talus-tool.json).") var directory: String
        @Option(name: .customLong("param"), help: "A parameter NAME=VALUE (repeatable), typed by the manifest.")
        var params: [String] = []
        @Option(help: "A JSON file of parameters (--param values override it).") var paramsFile: String?
        @Option(help: "Directory holding the components (<name>/talus-tool.json).") var components: String?
        @Option(help: "Work directory (kept afterwards; default: a new temporary directory).") var work: String?
        @Option(help: "Stop the tool after this many seconds (default: the manifest's timeout).") var timeout: Double?
        @Flag(help: "Print events and the summary as JSON lines.") var json = false

        func run() async throws {
            let manifest = (FileManager.default.contents(atPath: directory + "/" + ToolManifest.fileName))
                .flatMap { try? TalusJSON.decoder().decode(ToolManifest.self, from: $0) }
            let run: LocalToolRun
            do {
                let given = try LocalParams.parse(params, file: paramsFile, manifest: manifest)
                run = try await LocalToolRun.prepare(LocalRunOptions(
                    toolDirectory: directory, componentsDirectory: components, params: given, workDirectory: work,
                    timeout: timeout.map { .milliseconds(Int64($0 * 1000)) }))
            } catch let e as LocalRunError {
                for p in e.problems { FileHandle.standardError.write(Data("talus: \(p)\n".utf8)) }
                throw ExitCode(1)
            }
            let printer = LocalRunPrinter(json: json)
            printer.start(run)
            signal(SIGINT, SIG_IGN)
            let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
            interrupt.setEventHandler { run.cancel() }
            interrupt.resume()
            let summary = try await blockingIO { try run.run(onEvent: { printer.event($0) }) }
            interrupt.cancel()
            printer.finish(summary)
            if summary.reason == "interrupted" { throw ExitCode(130) }
            if summary.exitCode != 0 { throw ExitCode(Int32(clamping: summary.exitCode)) }
        }
    }
}

/// A tool report as its JSON event line.
struct ReportLine: Encodable {
    let report: ToolReport
    func encode(to encoder: any Encoder) throws { try report.encode(to: encoder) }
}

/// Prints a local run: human lines, or JSON lines with `--json`.
struct LocalRunPrinter: Sendable {
    let json: Bool

    private func out(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

    private func jsonLine(_ fields: BSONDocument) {
        out(fields.extendedJSON(.relaxed))
    }

    func start(_ run: LocalToolRun) {
        let params = run.params.extendedJSON(.relaxed)
        if json {
            jsonLine(["type": "start", "tool": .string(run.manifest.name), "params": .document(run.params),
                      "components": .array(run.components.map { .string($0) }), "work_directory": .string(run.workDirectory)])
        } else {
            out("talus: running \(run.manifest.name) with \(params)"
                + (run.components.isEmpty ? "" : " and components \(run.components.joined(separator: ", "))"))
            out("talus: work directory \(run.workDirectory)")
        }
    }

    func event(_ e: LocalRunEvent) {
        switch e {
        case .report(let report):
            if json {
                if let data = try? TalusJSON.encoder().encode(ReportLine(report: report)) { out(String(decoding: data, as: UTF8.self)) }
                return
            }
            switch report {
            case .progress(let amount): out("progress +\(amount)")
            case .result(let kind, let data, let files):
                out("result \(kind) \(data.extendedJSON(.relaxed))" + (files.isEmpty ? "" : " files: \(files.joined(separator: ", "))"))
            case .crash(let signature, _, let file):
                out("crash \(signature)" + (file.map { " sample: \($0)" } ?? ""))
            case .log(let level, let message): out("log \(level): \(message)")
            case .file(let chunk): out("file \(chunk.name)")
            }
        case .output(let stream, let line):
            if json { jsonLine(["type": "output", "stream": .string(stream), "line": .string(line)]) } else { out("[\(stream)] \(line)") }
        case .warning(let message):
            if json { jsonLine(["type": "warning", "message": .string(message)]) } else {
                FileHandle.standardError.write(Data("talus: warning: \(message)\n".utf8))
            }
        }
    }

    func finish(_ s: LocalRunSummary) {
        if json {
            var doc = (try? BSONEncoder().encode(s)) ?? [:]
            doc["type"] = "summary"
            jsonLine(doc)
            return
        }
        out("---")
        out("\(s.tool): " + (s.reason ?? "exited with status 0") + String(format: " after %.1f s (exit status %d)", s.seconds, s.exitCode))
        out("progress: \(s.progress)")
        out("results:  \(s.results.count)")
        for r in s.results {
            out("  \(r.kind) \(r.data.extendedJSON(.relaxed))" + (r.files.isEmpty ? "" : " files: \(r.files.joined(separator: ", "))"))
        }
        out("crashes:  \(s.crashes.count)")
        for c in s.crashes { out("  \(c.signature)" + (c.file.map { "\n    \($0)" } ?? " (no sample)")) }
        if !s.warnings.isEmpty { out("warnings: \(s.warnings.count)") }
        out("output:   \(s.output)")
    }
}
