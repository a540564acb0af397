// `talus task …`, `talus job …`, `talus result …`, `talus crash …`.

import ArgumentParser
import BSON
import Foundation
import TalusCore
import TalusModel

/// Tool parameters from `--params JSON`, `--params-file FILE` and repeated `--param k=v` (a value
/// that parses as JSON is taken as JSON, otherwise as a string).
struct ParamOptions: ParsableArguments {
    @Option(help: "Parameters as a JSON object.") var params: String?
    @Option(help: "Parameters from a JSON file.") var paramsFile: String?
    @Option(help: "One parameter, name=value (repeatable; JSON values allowed: n=3, flags=[\"-v\"]).") var param: [String] = []

    func document() throws -> BSONDocument? {
        var doc: BSONDocument?
        func parse(_ data: Data, from: String) throws -> BSONDocument {
            do { return try JSONDecoder().decode(BSONDocument.self, from: data) } catch {
                throw CLIError.usage("\(from) is not a JSON object: \(error)")
            }
        }
        if let params { doc = try parse(Data(params.utf8), from: "--params") }
        if let paramsFile {
            guard let data = FileManager.default.contents(atPath: paramsFile) else { throw CLIError.usage("cannot read \(paramsFile)") }
            doc = (doc ?? [:]).merging(try parse(data, from: paramsFile))
        }
        for p in param {
            guard let eq = p.firstIndex(of: "="), eq != p.startIndex else { throw CLIError.usage("--param \(p): write name=value") }
            let name = String(p[..<eq]), text = String(p[p.index(after: eq)...])
            let value = (try? JSONDecoder().decode(BSONValue.self, from: Data(text.utf8))) ?? .string(text)
            doc = doc ?? [:]
            doc![name] = value
        }
        return doc
    }
}

/// `--cpus`, `--memory-mb`, `--timeout`.
struct VMOptions: ParsableArguments {
    @Option(help: "CPUs per VM.") var cpus: Int?
    @Option(help: "Memory per VM, MiB.") var memoryMb: Int?
    @Option(help: "Seconds a run may take.") var timeout: Int?

    var document: BSONDocument? {
        var vm = BSONDocument()
        if let cpus { vm["cpus"] = .int64(Int64(cpus)) }
        if let memoryMb { vm["memory_mb"] = .int64(Int64(memoryMb)) }
        if let timeout { vm["timeout_s"] = .int64(Int64(timeout)) }
        return vm.isEmpty ? nil : vm
    }
}

struct TaskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "task", abstract: "Tasks: a tool at a pinned commit, an image and default params.",
        subcommands: [Create.self, List.self, Show.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a task (the tool's newest recorded commit unless --commit).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Task name.") var name: String
        @Option(help: "Tool name.") var tool: String
        @Option(help: "Image (name or id).") var image: String
        @Option(help: "Tool commit to pin (40 hex).") var commit: String?
        @OptionGroup var params: ParamOptions
        @Option(help: "Default job limit (progress units; -1: until cancelled).") var limit: Int?
        @Option(help: "Network: none, user or isolated.") var network: String?
        @OptionGroup var vm: VMOptions
        @Option(help: "A tag (repeatable).") var tag: [String] = []

        func run() async throws {
            try await withAPI { client in
                var body: BSONDocument = ["name": .string(name), "tool": .string(tool),
                                          "image": .string(try await client.resolve(ImageDocument.self, image))]
                if let commit { body["tool_commit"] = .string(commit) }
                if let p = try params.document() { body["params"] = .document(p) }
                if let limit { body["limit"] = .int64(Int64(limit)) }
                if let network { body["network"] = .string(network) }
                if let v = vm.document { body["vm"] = .document(v) }
                if !tag.isEmpty { body["tags"] = .array(tag.map { .string($0) }) }
                let task = try await client.json(.POST, "/api/v1/tasks", body: body, as: TaskDocument.self)
                if global.json { try Output.json(task) } else {
                    Output.line("task \(task.name) (\(task.id.hex)): \(task.tool) at \(task.toolCommit.prefix(12))")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tasks.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        @Option(help: "Only this tool.") var tool: String?
        @Flag(help: "Only mine.") var mine = false
        func run() async throws { try await Listing.list(TaskDocument.self, global, list, filters: [.field("tool", tool), .mine(mine)]) }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a task.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Task (name or id).") var task: String
        func run() async throws { try await Listing.show(TaskDocument.self, task, global) }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a task (its jobs keep running).")
        @Argument(help: "Task (name or id).") var task: String
        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve(TaskDocument.self, task)
                _ = try await client.raw(.DELETE, "/api/v1/tasks/\(id)")
                Output.line("task \(task) deleted")
            }
        }
    }
}

extension TaskDocument: ShownResource {
    static let apiPath = "tasks", what = "task", filterKeys: Set<String> = ["tool", "owner", "tag"]
    static let columns = ["ID", "NAME", "TOOL", "COMMIT", "LIMIT", "IMAGE", "CREATED"]
    var row: [String] { [id.hex, name, tool, String(toolCommit.prefix(12)), String(limit), image.hex, Format.date(created)] }
    func printDetails(client: APIClient) {
        Output.fields([("id", id.hex), ("name", name), ("tool", tool), ("commit", toolCommit), ("image", image.hex),
                       ("params", Format.json(params)), ("limit", String(limit)),
                       ("vm", "\(vm.cpus) CPU, \(vm.memoryMB) MiB, \(vm.timeoutS)s per run"),
                       ("network", network.rawValue), ("owner", owner?.hex ?? "-"), ("created", Format.date(created)),
                       ("tags", tags.joined(separator: ", "))])
    }
}

struct JobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job", abstract: "Jobs: a task run until its limit.",
        subcommands: [Create.self, List.self, Show.self, Cancel.self, Watch.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a job from a task (params merged over the task's).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Task (name or id).") var task: String
        @Option(help: "Job name (default: task name + a suffix).") var name: String?
        @Option(help: "Image (name or id; default: the task's).") var image: String?
        @OptionGroup var params: ParamOptions
        @Option(help: "Priority 1 (lowest) … 100.") var priority: Int?
        @Option(help: "Progress units to reach (-1: until cancelled).") var limit: Int?
        @Option(help: "Queue the parts go to.") var queue: String?
        @Option(help: "Network: none, user or isolated.") var network: String?
        @OptionGroup var vm: VMOptions
        @Flag(help: "Keep serial logs and more detail.") var debug = false
        @Option(help: "A tag (repeatable).") var tag: [String] = []
        @Flag(help: "Watch it until it ends.") var watch = false

        func run() async throws {
            let json = global.json, watch = self.watch
            try await withAPI { client in
                var body: BSONDocument = ["task": .string(try await client.resolve(TaskDocument.self, task))]
                if let name { body["name"] = .string(name) }
                if let image { body["image"] = .string(try await client.resolve(ImageDocument.self, image)) }
                if let p = try params.document() { body["params"] = .document(p) }
                if let priority { body["priority"] = .int64(Int64(priority)) }
                if let limit { body["limit"] = .int64(Int64(limit)) }
                if let queue { body["queue"] = .string(queue) }
                if let network { body["network"] = .string(network) }
                if let v = vm.document { body["vm"] = .document(v) }
                if debug { body["debug"] = true }
                if !tag.isEmpty { body["tags"] = .array(tag.map { .string($0) }) }
                let job = try await client.json(.POST, "/api/v1/jobs", body: body, as: JobDocument.self)
                if watch {
                    if !json { Output.note("job \(job.name) (\(job.id.hex)) started") }
                    try await JobWatch.watch(client, id: job.id.hex, json: json, interval: .seconds(1))
                } else if json {
                    try Output.json(job)
                } else {
                    Output.line("job \(job.name) (\(job.id.hex)) started; watch it with: talus job watch \(job.id.hex)")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List jobs.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        @Option(help: "Only this status (run, running, finished, cancel, cancelling, cancelled, failed).") var status: String?
        @Option(help: "Only jobs of this task (name or id).") var task: String?
        @Flag(help: "Only mine.") var mine = false

        func run() async throws {
            try await Listing.list(JobDocument.self, global, list,
                                   filters: [.field("status", status), .reference("task", task, TaskDocument.self), .mine(mine)])
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a job.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Job (name or id).") var job: String
        func run() async throws { try await Listing.show(JobDocument.self, job, global) }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a job (running VMs are stopped).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Job (name or id).") var job: String

        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve(JobDocument.self, job)
                let j = try await client.json(.PATCH, "/api/v1/jobs/\(id)", body: ["status": "cancel"] as BSONDocument, as: JobDocument.self)
                if global.json { try Output.json(j) } else { Output.line("job \(j.name) (\(id)): cancel requested") }
            }
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a job's progress live until it ends.",
            discussion: "Exit status 0 when it finishes, 4 when it fails or is cancelled. With --json: one JSON line per change.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Job (name or id).") var job: String
        @Option(help: "Seconds between checks.") var interval: Double = 1

        func run() async throws {
            let json = global.json, interval = self.interval
            try await withAPI { client in
                let id = try await client.resolve(JobDocument.self, job)
                try await JobWatch.watch(client, id: id, json: json, interval: .milliseconds(Int64(interval * 1000)))
            }
        }
    }
}

extension JobDocument: ShownResource {
    static let apiPath = "jobs", what = "job", filterKeys: Set<String> = ["status", "task", "owner", "tag"]
    static let columns = ["ID", "NAME", "STATUS", "PROGRESS", "PARTS q/r/d/f", "PRIO", "ERRORS", "CREATED"]
    var row: [String] {
        [id.hex, name, status.name.rawValue, JobWatch.progressText(self), "\(parts.queued)/\(parts.running)/\(parts.done)/\(parts.failed)",
         String(priority), String(errors.count), Format.ago(created)]
    }
    func printDetails(client: APIClient) {
        Output.fields([
            ("id", id.hex), ("name", name),
            ("status", status.name.rawValue + (status.reason.map { " — \($0)" } ?? "") + " (since \(Format.date(status.since)))"),
            ("progress", JobWatch.progressText(self)),
            ("parts", "queued \(parts.queued), running \(parts.running), done \(parts.done), failed \(parts.failed)"),
            ("task", task.hex), ("tool", "\(tool) at \(toolCommit)"), ("image", image.hex),
            ("params", Format.json(params)), ("priority", String(priority)), ("queue", queue),
            ("vm", "\(vm.cpus) CPU, \(vm.memoryMB) MiB, \(vm.timeoutS)s per run"), ("network", network.rawValue),
            ("owner", owner?.hex ?? "-"), ("created", Format.date(created)), ("tags", tags.joined(separator: ", ")),
            ("errors", errors.isEmpty ? "none" : "\(errors.count)"),
        ])
        for e in errors.suffix(10) {
            Output.line("  \(Format.date(e.at)) part \(e.idx.map(String.init) ?? "-")\(e.slave.map { " on \($0)" } ?? ""): \(e.reason)")
        }
    }
}

/// One line of `job watch --json`.
struct JobWatchEvent: Encodable {
    var job: String
    var name: String
    var status: String
    var progress: Int
    var limit: Int
    var parts: PartCounts
    var errors: Int
    var reason: String?
}

enum JobWatch {
    static func progressText(_ j: JobDocument) -> String {
        j.limit < 0 ? "\(j.progress) (until cancelled)" : "\(j.progress)/\(j.limit) (\(j.limit > 0 ? j.progress * 100 / j.limit : 100)%)"
    }

    static func line(_ j: JobDocument, rate: Double?, terminal: Bool) -> String {
        var parts: [String] = []
        if terminal, j.limit > 0 {
            let width = 24, filled = min(width, j.progress * width / j.limit)
            parts.append("[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "]")
        }
        parts.append(progressText(j))
        parts.append("\(j.status.name.rawValue)")
        parts.append("parts q\(j.parts.queued) r\(j.parts.running) d\(j.parts.done) f\(j.parts.failed)")
        if !j.errors.isEmpty { parts.append("\(j.errors.count) errors") }
        if let rate, rate > 0 {
            parts.append(String(format: "%.1f/min", rate * 60))
            if j.limit > 0, j.progress < j.limit { parts.append("ETA \(Format.duration(Double(j.limit - j.progress) / rate))") }
        }
        return parts.joined(separator: "  ")
    }

    /// How long `watch` waits, once the job is decided, for its remaining parts to stop.
    static let settleTime: Duration = .seconds(15)

    /// Polls the job until it reaches a terminal state and its parts have stopped (at most
    /// ``settleTime`` after that); throws ``CLIError/ended`` unless it finished.
    static func watch(_ client: APIClient, id: String, json: Bool, interval: Duration) async throws {
        let terminal = isatty(1) == 1 && !json
        try await interruptible({ "stopped watching; the job keeps running (talus job show \(id))" }) {
            var last: JobWatchEvent?
            let start = ContinuousClock.now
            var startProgress: Int?
            var lastErrors = 0
            var settleDeadline: ContinuousClock.Instant?
            while true {
                let j = try await client.get("/api/v1/jobs/\(id)", as: JobDocument.self)
                let event = JobWatchEvent(job: id, name: j.name, status: j.status.name.rawValue, progress: j.progress, limit: j.limit,
                                          parts: j.parts, errors: j.errors.count, reason: j.status.reason)
                if startProgress == nil { startProgress = j.progress }
                let elapsed = ContinuousClock.now - start
                let seconds = elapsed.secondsDouble
                let rate = seconds > 1 ? Double(j.progress - startProgress!) / seconds : nil
                if json {
                    if event.status != last?.status || event.progress != last?.progress || event.parts != last?.parts || event.errors != last?.errors {
                        try Output.jsonLine(event)
                    }
                } else if terminal {
                    FileHandle.standardOutput.write(Data(("\r\u{1B}[K" + line(j, rate: rate, terminal: true)).utf8))
                } else if event.status != last?.status || event.progress != last?.progress || event.parts != last?.parts {
                    Output.line(line(j, rate: rate, terminal: false))
                }
                if !json, j.errors.count > lastErrors {
                    for e in j.errors.suffix(min(j.errors.count - lastErrors, 5)) {
                        let text = "error: part \(e.idx.map(String.init) ?? "-")\(e.slave.map { " on \($0)" } ?? ""): \(e.reason)"
                        if terminal { FileHandle.standardOutput.write(Data(("\r\u{1B}[K" + text + "\n").utf8)) } else { Output.line(text) }
                    }
                }
                lastErrors = j.errors.count
                last = event
                if j.status.name.isTerminal {
                    // Decided, but parts may still be stopping (the limit was reached while others
                    // ran, or a cancel): give their VMs a few seconds, so that the last line shows
                    // the final counts rather than "r1".
                    let settling = j.parts.running + j.parts.queued > 0
                    if settling, settleDeadline == nil { settleDeadline = .now + Self.settleTime }
                    if settling, let settleDeadline, ContinuousClock.now < settleDeadline {
                        try await Task.sleep(for: interval)
                        continue
                    }
                    if terminal { Output.line() }
                    switch j.status.name {
                    case .finished:
                        if !json { Output.line("job \(j.name) finished: \(progressText(j))") }
                        return
                    case .failed: throw CLIError.ended("job \(j.name) failed: \(j.status.reason ?? "no reason given")")
                    default: throw CLIError.ended("job \(j.name) was \(j.status.name.rawValue)")
                    }
                }
                try await Task.sleep(for: interval)
            }
        }
    }
}

struct ResultCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "result", abstract: "Results tools reported.", subcommands: [List.self, Show.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List results, newest first.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        @Option(help: "Only results of this job (name or id).") var job: String?
        @Option(help: "Only this type.") var type: String?

        func run() async throws {
            try await Listing.list(ResultDocument.self, global, list, filters: [.reference("job", job, JobDocument.self), .field("type", type)])
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a result (download its files with talus file get).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Result id.") var id: String
        func run() async throws { try await Listing.show(ResultDocument.self, id, global) }
    }
}

extension ResultDocument: ShownResource {
    static let apiPath = "results", what = "result", filterKeys: Set<String> = ["job", "type", "tag"]
    static var nameField: String? { nil }
    static let columns = ["ID", "JOB", "PART", "TYPE", "TOOL", "FILES", "DATA"]
    var row: [String] { [id.hex, job.hex, String(idx), type, tool, String(files.count), String(Format.json(data).prefix(60))] }
    func printDetails(client: APIClient) {
        Output.fields([("id", id.hex), ("job", job.hex), ("part", String(idx)), ("run", run), ("tool", tool),
                       ("type", type), ("data", Format.json(data)), ("created", Format.date(created))])
        for f in files { Output.line("  file \(f.id.hex)  \(f.name)  \(Format.bytes(f.size))  sha256 \(f.sha256)") }
    }
}

struct CrashCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crash", abstract: "Crashes, de-duplicated by bucket.", subcommands: [List.self, Show.self, Export.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List crash buckets.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var list: ListOptions
        @Option(help: "Only crashes of this job (name or id).") var job: String?
        func run() async throws { try await Listing.list(CrashDocument.self, global, list, filters: [.reference("job", job, JobDocument.self)]) }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a crash bucket and its samples.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Crash id.") var id: String
        func run() async throws { try await Listing.show(CrashDocument.self, id, global) }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a crash bucket to a directory: crash.json and each sample's input, byte-exact.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Crash id.") var id: String
        @Option(help: "Directory to create the export in.") var dest: String = "."

        func run() async throws {
            try await withAPI { client in
                let c = try await client.get("/api/v1/crashes/\(id)", as: CrashDocument.self)
                let dir = dest + "/crash-\(c.id.hex)"
                try FileManager.default.createDirectory(atPath: dir + "/samples", withIntermediateDirectories: true)
                FileManager.default.createFile(atPath: dir + "/crash.json", contents: try TalusJSON.encoder(pretty: true).encode(c))
                var written: [String] = []
                for (n, s) in c.samples.enumerated() {
                    guard let f = s.file else { continue }
                    let safe = String(f.name.map { $0 == "/" || $0 == "\0" ? "_" : $0 }.prefix(120))
                    let path = dir + "/samples/\(n)-\(safe)"
                    let (_, sha) = try await client.download("/api/v1/crashes/\(id)/samples/\(n)/file", to: path)
                    if sha != f.sha256 { throw CLIError.failure("sample \(n) of crash \(id) does not match its recorded sha256") }
                    written.append(path)
                }
                struct Exported: Encodable { var directory: String; var files: [String] }
                if global.json { try Output.json(Exported(directory: dir, files: written)) } else {
                    Output.line("exported crash \(c.id.hex) to \(dir) (\(written.count) sample inputs)")
                }
            }
        }
    }
}

extension CrashDocument: ShownResource {
    static let apiPath = "crashes", what = "crash", filterKeys: Set<String> = ["job", "tag"]
    static var nameField: String? { nil }
    static let columns = ["ID", "JOB", "COUNT", "SAMPLES", "LAST SEEN", "BUCKET"]
    var row: [String] { [id.hex, job.hex, String(count), String(samples.count), Format.ago(lastSeen), String(bucket.prefix(70))] }
    func printDetails(client: APIClient) {
        Output.fields([("id", id.hex), ("job", job.hex), ("tool", tool), ("bucket", bucket), ("count", String(count)),
                       ("first seen", Format.date(firstSeen)), ("last seen", Format.date(lastSeen))])
        for (n, s) in samples.enumerated() {
            Output.line("  sample \(n): part \(s.idx), \(Format.date(s.at))" + (s.file.map { ", input \($0.name) (\(Format.bytes($0.size)))" } ?? ""))
            if !s.data.isEmpty { Output.line("    \(Format.json(s.data))") }
        }
    }
}
