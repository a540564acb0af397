// `talus task …`, `talus job …`, `talus result …`, `talus crash …`.

import ArgumentParser
import BSON
import Foundation
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
                                          "image": .string(try await client.resolve("images", image, what: "image"))]
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

        func run() async throws {
            try await withAPI { client in
                let tasks = try await client.list("/api/v1/tasks", query: list.query([("tool", tool), ("owner", mine ? "me" : nil)]),
                                                  limit: list.max, as: TaskDocument.self)
                if global.json { try Output.json(tasks); return }
                Output.table(["ID", "NAME", "TOOL", "COMMIT", "LIMIT", "IMAGE", "CREATED"], tasks.map {
                    [$0.id.hex, $0.name, $0.tool, String($0.toolCommit.prefix(12)), String($0.limit), $0.image.hex, Format.date($0.created)]
                })
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a task.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Task (name or id).") var task: String

        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve("tasks", task, what: "task")
                let t = try await client.get("/api/v1/tasks/\(id)", as: TaskDocument.self)
                if global.json { try Output.json(t); return }
                Output.fields([("id", t.id.hex), ("name", t.name), ("tool", t.tool), ("commit", t.toolCommit), ("image", t.image.hex),
                               ("params", Format.json(t.params)), ("limit", String(t.limit)),
                               ("vm", "\(t.vm.cpus) CPU, \(t.vm.memoryMB) MiB, \(t.vm.timeoutS)s per run"),
                               ("network", t.network.rawValue), ("owner", t.owner?.hex ?? "-"), ("created", Format.date(t.created)),
                               ("tags", t.tags.joined(separator: ", "))])
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a task (its jobs keep running).")
        @Argument(help: "Task (name or id).") var task: String
        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve("tasks", task, what: "task")
                _ = try await client.raw(.DELETE, "/api/v1/tasks/\(id)")
                Output.line("task \(task) deleted")
            }
        }
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
                var body: BSONDocument = ["task": .string(try await client.resolve("tasks", task, what: "task"))]
                if let name { body["name"] = .string(name) }
                if let image { body["image"] = .string(try await client.resolve("images", image, what: "image")) }
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
            try await withAPI { client in
                let taskId = try await task.asyncMapCLI { try await client.resolve("tasks", $0, what: "task") }
                let jobs = try await client.list("/api/v1/jobs", query: list.query([("status", status), ("task", taskId), ("owner", mine ? "me" : nil)]),
                                                 limit: list.max, as: JobDocument.self)
                if global.json { try Output.json(jobs); return }
                Output.table(["ID", "NAME", "STATUS", "PROGRESS", "PARTS q/r/d/f", "PRIO", "ERRORS", "CREATED"], jobs.map { j in
                    [j.id.hex, j.name, j.status.name.rawValue, JobWatch.progressText(j),
                     "\(j.parts.queued)/\(j.parts.running)/\(j.parts.done)/\(j.parts.failed)", String(j.priority),
                     String(j.errors.count), Format.ago(j.created)]
                })
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a job.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Job (name or id).") var job: String

        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve("jobs", job, what: "job")
                let j = try await client.get("/api/v1/jobs/\(id)", as: JobDocument.self)
                if global.json { try Output.json(j); return }
                var rows: [(String, String)] = [
                    ("id", j.id.hex), ("name", j.name),
                    ("status", j.status.name.rawValue + (j.status.reason.map { " — \($0)" } ?? "") + " (since \(Format.date(j.status.since)))"),
                    ("progress", JobWatch.progressText(j)),
                    ("parts", "queued \(j.parts.queued), running \(j.parts.running), done \(j.parts.done), failed \(j.parts.failed)"),
                    ("task", j.task.hex), ("tool", "\(j.tool) at \(j.toolCommit)"), ("image", j.image.hex),
                    ("params", Format.json(j.params)), ("priority", String(j.priority)), ("queue", j.queue),
                    ("vm", "\(j.vm.cpus) CPU, \(j.vm.memoryMB) MiB, \(j.vm.timeoutS)s per run"), ("network", j.network.rawValue),
                    ("owner", j.owner?.hex ?? "-"), ("created", Format.date(j.created)), ("tags", j.tags.joined(separator: ", ")),
                ]
                rows.append(("errors", j.errors.isEmpty ? "none" : "\(j.errors.count)"))
                Output.fields(rows)
                for e in j.errors.suffix(10) {
                    Output.line("  \(Format.date(e.at)) part \(e.idx.map(String.init) ?? "-")\(e.slave.map { " on \($0)" } ?? ""): \(e.reason)")
                }
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a job (running VMs are stopped).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Job (name or id).") var job: String

        func run() async throws {
            try await withAPI { client in
                let id = try await client.resolve("jobs", job, what: "job")
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
                let id = try await client.resolve("jobs", job, what: "job")
                try await JobWatch.watch(client, id: id, json: json, interval: .milliseconds(Int64(interval * 1000)))
            }
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

    /// Polls the job until it reaches a terminal state; throws ``CLIError/ended`` unless it finished.
    static func watch(_ client: APIClient, id: String, json: Bool, interval: Duration) async throws {
        let terminal = isatty(1) == 1 && !json
        try await interruptible({ "stopped watching; the job keeps running (talus job show \(id))" }) {
            var last: JobWatchEvent?
            let start = ContinuousClock.now
            var startProgress: Int?
            var lastErrors = 0
            while true {
                let j = try await client.get("/api/v1/jobs/\(id)", as: JobDocument.self)
                let event = JobWatchEvent(job: id, name: j.name, status: j.status.name.rawValue, progress: j.progress, limit: j.limit,
                                          parts: j.parts, errors: j.errors.count, reason: j.status.reason)
                if startProgress == nil { startProgress = j.progress }
                let elapsed = ContinuousClock.now - start
                let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
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
            try await withAPI { client in
                let jobId = try await job.asyncMapCLI { try await client.resolve("jobs", $0, what: "job") }
                let results = try await client.list("/api/v1/results", query: list.query([("job", jobId), ("type", type)]),
                                                    limit: list.max, as: ResultDocument.self)
                if global.json { try Output.json(results); return }
                Output.table(["ID", "JOB", "PART", "TYPE", "TOOL", "FILES", "DATA"], results.map {
                    [$0.id.hex, $0.job.hex, String($0.idx), $0.type, $0.tool, String($0.files.count), String(Format.json($0.data).prefix(60))]
                })
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a result (download its files with talus file get).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Result id.") var id: String

        func run() async throws {
            try await withAPI { client in
                let r = try await client.get("/api/v1/results/\(id)", as: ResultDocument.self)
                if global.json { try Output.json(r); return }
                Output.fields([("id", r.id.hex), ("job", r.job.hex), ("part", String(r.idx)), ("run", r.run), ("tool", r.tool),
                               ("type", r.type), ("data", Format.json(r.data)), ("created", Format.date(r.created))])
                for f in r.files { Output.line("  file \(f.id.hex)  \(f.name)  \(Format.bytes(f.size))  sha256 \(f.sha256)") }
            }
        }
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

        func run() async throws {
            try await withAPI { client in
                let jobId = try await job.asyncMapCLI { try await client.resolve("jobs", $0, what: "job") }
                let crashes = try await client.list("/api/v1/crashes", query: list.query([("job", jobId)]), limit: list.max, as: CrashDocument.self)
                if global.json { try Output.json(crashes); return }
                Output.table(["ID", "JOB", "COUNT", "SAMPLES", "LAST SEEN", "BUCKET"], crashes.map {
                    [$0.id.hex, $0.job.hex, String($0.count), String($0.samples.count), Format.ago($0.lastSeen), String($0.bucket.prefix(70))]
                })
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a crash bucket and its samples.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Crash id.") var id: String

        func run() async throws {
            try await withAPI { client in
                let c = try await client.get("/api/v1/crashes/\(id)", as: CrashDocument.self)
                if global.json { try Output.json(c); return }
                Output.fields([("id", c.id.hex), ("job", c.job.hex), ("tool", c.tool), ("bucket", c.bucket), ("count", String(c.count)),
                               ("first seen", Format.date(c.firstSeen)), ("last seen", Format.date(c.lastSeen))])
                for (n, s) in c.samples.enumerated() {
                    Output.line("  sample \(n): part \(s.idx), \(Format.date(s.at))" + (s.file.map { ", input \($0.name) (\(Format.bytes($0.size)))" } ?? ""))
                    if !s.data.isEmpty { Output.line("    \(Format.json(s.data))") }
                }
            }
        }
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
