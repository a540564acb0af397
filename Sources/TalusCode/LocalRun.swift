// `talus tool run-local`: runs a tool from a directory on the author's machine with exactly the
// guest's contract (DESIGN §8). The tool and its components are checked like a push, packed into
// a bundle like the API's, unpacked with `tar -xzf` like the agent does, and run through the
// agent's own `ToolWorkspace` / `ToolProcess` / `EventsFileTail`, with the same environment.

import BSON
import Foundation
import Synchronization
import TalusAgent
import TalusCore
import TalusModel

/// What to run.
public struct LocalRunOptions: Sendable {
    /// The tool directory (holding `talus-tool.json`).
    public var toolDirectory: String
    /// A directory holding `<component>/` directories; default `<repo>/components` when the tool
    /// directory is `<repo>/tools/<name>`.
    public var componentsDirectory: String?
    /// Parameters given (merged over the manifest's defaults, then checked).
    public var params: BSONDocument
    /// Where the bundle is unpacked and the tool runs (default: a new temporary directory).
    public var workDirectory: String?
    /// Stop the tool after this long (default: the manifest's `timeout`, else none).
    public var timeout: Duration?
    /// Largest file the guest would send back (files above are reported as warnings).
    public var maxFileBytes: Int64

    public init(toolDirectory: String, componentsDirectory: String? = nil, params: BSONDocument = [:],
                workDirectory: String? = nil, timeout: Duration? = nil, maxFileBytes: Int64 = 64 << 20) {
        self.toolDirectory = toolDirectory; self.componentsDirectory = componentsDirectory; self.params = params
        self.workDirectory = workDirectory; self.timeout = timeout; self.maxFileBytes = maxFileBytes
    }
}

/// The tool cannot be run: the problems a push would be rejected for, bad parameters, or an
/// unusable directory.
public struct LocalRunError: Error, CustomStringConvertible, Sendable {
    public let problems: [String]
    public init(_ problems: [String]) { self.problems = problems }
    public var description: String { problems.joined(separator: "\n") }
}

/// Something that happened during a run, in order.
public enum LocalRunEvent: Sendable, Equatable {
    /// An event line of the tool, as the guest would relay it.
    case report(ToolReport)
    /// A line the tool wrote to stdout or stderr.
    case output(stream: String, line: String)
    /// Something the guest would have dropped or complained about.
    case warning(String)
}

/// The outcome of a run.
public struct LocalRunSummary: Codable, Sendable, Equatable {
    public struct Result: Codable, Sendable, Equatable {
        public var kind: String
        public var data: BSONDocument
        public var files: [String]
        public init(kind: String, data: BSONDocument, files: [String]) { self.kind = kind; self.data = data; self.files = files }
    }
    public struct Crash: Codable, Sendable, Equatable {
        public var signature: String
        public var data: BSONDocument
        /// The sample's path on disk (inside `output`), when the tool named one that exists.
        public var file: String?
        public init(signature: String, data: BSONDocument, file: String?) { self.signature = signature; self.data = data; self.file = file }
    }
    public var tool: String
    /// The tool's exit status (128 + signal when killed; 124 after the timeout).
    public var exitCode: Int
    public var reason: String?
    public var progress: Int
    public var results: [Result]
    public var crashes: [Crash]
    public var warnings: [String]
    public var seconds: Double
    /// `TALUS_OUTPUT`.
    public var output: String
    public var workDirectory: String

    enum CodingKeys: String, CodingKey {
        case tool, exitCode = "exit_code", reason, progress, results, crashes, warnings, seconds, output
        case workDirectory = "work_directory"
    }
}

/// A prepared local run: checked, bundled and unpacked; ``run(onEvent:)`` starts the tool.
public final class LocalToolRun: Sendable {
    public let manifest: ToolManifest
    /// The parameters the tool gets (defaults filled in).
    public let params: BSONDocument
    public let workDirectory: String
    public let workspace: ToolWorkspace
    /// Components packed with the tool.
    public let components: [String]
    /// Things a push would complain about that do not stop a local run.
    public let warnings: [String]
    let timeout: Duration?
    let maxFileBytes: Int64
    let componentsPath: String
    private let cancelled = Atomic<Bool>(false)

    private init(manifest: ToolManifest, params: BSONDocument, workDirectory: String, workspace: ToolWorkspace,
                 components: [String], warnings: [String], timeout: Duration?, maxFileBytes: Int64, componentsPath: String) {
        self.manifest = manifest; self.params = params; self.workDirectory = workDirectory; self.workspace = workspace
        self.components = components; self.warnings = warnings; self.timeout = timeout; self.maxFileBytes = maxFileBytes
        self.componentsPath = componentsPath
    }

    /// Checks the tool and its components as the pre-receive hook would, resolves the parameters,
    /// builds the bundle and unpacks it into the work directory. Throws ``LocalRunError``.
    public static func prepare(_ options: LocalRunOptions) async throws -> LocalToolRun {
        let fm = FileManager.default
        let toolDir = URL(fileURLWithPath: options.toolDirectory).standardizedFileURL.resolvingSymlinksInPath().path
        guard let manifestBytes = fm.contents(atPath: toolDir + "/" + ToolManifest.fileName) else {
            throw LocalRunError(["\(toolDir) has no \(ToolManifest.fileName): give the directory of a tool (tools/<name>)"])
        }
        var warnings: [String] = []
        let dirName = URL(fileURLWithPath: toolDir).lastPathComponent
        var name = dirName
        if case .string(let declared)? = (try? JSONValue.parse(Array(manifestBytes)))?["name"], declared != dirName,
           ToolManifest.isValidName(declared) {
            warnings.append("the directory is named \(dirName) but the manifest names \(declared): the code repository needs it in tools/\(declared)/")
            name = declared
        }
        // Components: the given directory, or the repository's next to tools/.
        var componentsDir = options.componentsDirectory
        if componentsDir == nil {
            let parent = URL(fileURLWithPath: toolDir).deletingLastPathComponent()
            let sibling = parent.deletingLastPathComponent().appendingPathComponent("components").path
            if parent.lastPathComponent == "tools", fm.fileExists(atPath: sibling) { componentsDir = sibling }
        }
        var units: [(UnitKey, String)] = [(UnitKey(.tool, name), toolDir)]
        if let componentsDir {
            let names = (try? fm.contentsOfDirectory(atPath: componentsDir)) ?? []
            for c in names.sorted() {
                var isDir: ObjCBool = false
                if fm.fileExists(atPath: componentsDir + "/" + c, isDirectory: &isDir), isDir.boolValue {
                    units.append((UnitKey(.component, c), componentsDir + "/" + c))
                }
            }
        }
        let snapshot: CodeSnapshot
        do {
            snapshot = try await CodeSnapshot.load(directories: units)
        } catch {
            throw LocalRunError(["\(error)"])
        }
        let toolKey = UnitKey(.tool, name)
        let closure = snapshot.componentClosure(of: toolKey)
        let check = RepositoryCheck.check(snapshot, changed: Set([toolKey] + closure.map { UnitKey(.component, $0) }))
        // Show paths as the author knows them: on disk.
        func onDisk(_ p: CodeProblem) -> String {
            for (key, dir) in units where p.file == key.path + "/" || p.file.hasPrefix(key.path + "/") {
                return dir + String(p.file.dropFirst(key.path.count)) + ": " + p.message
            }
            return p.description
        }
        let problems = check.problems.map(onDisk)
        if !problems.isEmpty {
            let missing = closure.filter { snapshot.units[UnitKey(.component, $0)] == nil }
            let hint = missing.isEmpty || options.componentsDirectory != nil ? [] :
                ["(components are looked up in \(componentsDir ?? "no directory"); give --components DIR)"]
            throw LocalRunError(problems + hint)
        }
        guard let manifest = check.manifests[toolKey] else { throw LocalRunError(["\(toolDir): the manifest is not valid"]) }
        let (resolved, paramProblems) = ParamCheck.resolve(options.params, against: manifest)
        if !paramProblems.isEmpty { throw LocalRunError(paramProblems) }

        let work = options.workDirectory ?? (NSTemporaryDirectory() + "talus-run-\(name)-" + randomSuffix())
        let bundleDir = work + "/bundle"
        if fm.fileExists(atPath: bundleDir) { try? fm.removeItem(atPath: bundleDir) }
        if fm.fileExists(atPath: work + "/output") { try? fm.removeItem(atPath: work + "/output") }
        do {
            try fm.createDirectory(atPath: bundleDir, withIntermediateDirectories: true)
            let bundle = try await BundleBuilder.build(tool: name, from: snapshot)
            try Data(bundle.bytes).write(to: URL(fileURLWithPath: work + "/tool.tar.gz"))
            try unpackBundle(work + "/tool.tar.gz", into: bundleDir)
            let workspace = try ToolWorkspace.prepare(root: work, toolDirectory: bundleDir + "/tool", params: resolved)
            let timeout = options.timeout ?? manifest.timeout.map { .seconds($0) }
            return LocalToolRun(manifest: manifest, params: resolved, workDirectory: work, workspace: workspace,
                                components: bundle.components, warnings: warnings, timeout: timeout,
                                maxFileBytes: options.maxFileBytes, componentsPath: bundleDir + "/components")
        } catch let e as LocalRunError {
            throw e
        } catch {
            throw LocalRunError(["cannot prepare the run in \(work): \(error)"])
        }
    }

    /// Asks a running ``run(onEvent:)`` to stop the tool (SIGTERM to its process group, then
    /// SIGKILL). Safe from any thread, e.g. a SIGINT handler.
    public func cancel() { cancelled.store(true, ordering: .relaxed) }

    /// Runs the tool to its end on the calling thread (it blocks: call it from a thread that may
    /// block), calling `onEvent` for every event as it happens. Returns the summary.
    public func run(onEvent: (LocalRunEvent) -> Void) throws -> LocalRunSummary {
        let clock = ContinuousClock()
        let start = clock.now
        guard let entry = manifest.entry else { throw LocalRunError(["the tool has no entry command"]) }
        let env = workspace.runEnvironment(job: String(repeating: "0", count: 24), idx: 0, attempt: 1, run: "local",
                                           tool: manifest.name, components: componentsPath, home: workDirectory,
                                           path: ProcessInfo.processInfo.environment["PATH"] ?? ToolWorkspace.defaultPath)
        var summary = LocalRunSummary(tool: manifest.name, exitCode: 0, reason: nil, progress: 0, results: [], crashes: [],
                                      warnings: warnings, seconds: 0, output: workspace.outputDirectory, workDirectory: workDirectory)
        var warned: [String] = []
        func emit(_ event: LocalRunEvent) {
            if case .warning(let w) = event { warned.append(w) }
            onEvent(event)
        }
        for w in warnings { onEvent(.warning(w)) }
        let tool = try ToolProcess(entry: entry, directory: workspace.toolDirectory, environment: env)
        var tail = EventsFileTail(path: workspace.eventsFile)
        var lines = ["stdout": [UInt8](), "stderr": [UInt8]()]
        func relay(_ bytes: [UInt8], _ stream: String) {
            for b in bytes {
                if b == UInt8(ascii: "\n") {
                    emit(.output(stream: stream, line: String(decoding: lines[stream]!, as: UTF8.self)))
                    lines[stream]!.removeAll(keepingCapacity: true)
                } else if lines[stream]!.count < 4096 {
                    lines[stream]!.append(b)
                }
            }
        }
        func drain(_ fd: Int32, _ stream: String) -> Bool {
            guard fd >= 0 else { return false }
            guard let bytes = ToolProcess.readAvailable(fd) else { return false }
            relay(bytes, stream)
            return true
        }
        var timedOut = false
        while tool.poll() == nil {
            var fds = [tool.stdoutFD, tool.stderrFD].filter { $0 >= 0 }.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            _ = poll(&fds, nfds_t(fds.count), 100)
            for p in fds where p.revents != 0 {
                if p.fd == tool.stdoutFD, !drain(p.fd, "stdout") { tool.closeStdout() }
                if p.fd == tool.stderrFD, !drain(p.fd, "stderr") { tool.closeStderr() }
            }
            handle(tail.readLines(maxBytes: 256 << 10), &summary, emit)
            if cancelled.load(ordering: .relaxed) {
                tool.terminate()
                summary.reason = "interrupted"
                break
            }
            if let timeout, clock.now - start >= timeout {
                tool.terminate()
                timedOut = true
                summary.reason = "stopped after the timeout of \(timeout)"
                break
            }
        }
        while drain(tool.stdoutFD, "stdout") {}
        while drain(tool.stderrFD, "stderr") {}
        for stream in ["stdout", "stderr"] where !(lines[stream]!.isEmpty) {
            emit(.output(stream: stream, line: String(decoding: lines[stream]!, as: UTF8.self)))
        }
        handle(tail.flush(), &summary, emit)
        summary.warnings += warned
        let status = Int(tool.poll() ?? -1)
        summary.exitCode = timedOut ? 124 : (status < 0 ? 128 - status : status)
        if summary.reason == nil, status != 0 {
            summary.reason = status < 0 ? "the tool was killed by signal \(-status)" : "the tool exited with status \(status)"
        }
        let elapsed = clock.now - start
        summary.seconds = elapsed.secondsDouble
        return summary
    }

    /// Event lines → events, with the agent's rules for files.
    private func handle(_ lines: [String], _ summary: inout LocalRunSummary, _ emit: (LocalRunEvent) -> Void) {
        for line in lines {
            let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
            if trimmed.isEmpty { continue }
            let event: ToolEvent
            do {
                event = try ToolEvent.parse(trimmed)
            } catch {
                emit(.warning("malformed event line ignored: \(trimmed.prefix(200))"))
                continue
            }
            switch event {
            case .report(.progress(let amount)):
                summary.progress += amount
                emit(.report(.progress(amount: amount)))
            case .report(.crash(let signature, let data, let file)):
                let path = file.flatMap { outputFile($0, emit) }
                summary.crashes.append(.init(signature: signature, data: data, file: path))
                emit(.report(.crash(signature: signature, data: data, file: path == nil ? nil : file)))
            case .report(.result(let kind, let data, let files)):
                let sent = files.filter { outputFile($0, emit) != nil }
                summary.results.append(.init(kind: kind, data: data, files: sent))
                emit(.report(.result(kind: kind, data: data, files: sent)))
            case .sendFile(let path):
                if outputFile(path, emit) != nil {
                    summary.results.append(.init(kind: "file", data: ["path": .string(path)], files: [path]))
                    emit(.report(.result(kind: "file", data: ["path": .string(path)], files: [path])))
                }
            case .report(let other):
                emit(.report(other))
            }
        }
    }

    /// The path of `name` in `TALUS_OUTPUT` when the guest would send it; a warning otherwise.
    private func outputFile(_ name: String, _ emit: (LocalRunEvent) -> Void) -> String? {
        guard FileChunk.isSafeName(name) else {
            emit(.warning("file \(name) ignored: not a relative path inside TALUS_OUTPUT")); return nil
        }
        let path = workspace.outputDirectory + "/" + name
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            emit(.warning("file \(name) not found in TALUS_OUTPUT")); return nil
        }
        guard Int64(st.st_size) <= maxFileBytes else {
            emit(.warning("file \(name) is \(st.st_size) bytes, over the limit of \(maxFileBytes): the guest would not send it")); return nil
        }
        return path
    }

    private static func randomSuffix() -> String {
        String(UInt64.random(in: 0...UInt64.max), radix: 36)
    }
}

extension CodeSnapshot {
    /// The components `key` references, transitively, in the order found (read without checking;
    /// missing or unreadable ones are included so the caller can report them).
    public func componentClosure(of key: UnitKey) -> [String] {
        var order: [String] = []
        var queue = [key]
        var seen = Set<UnitKey>([key])
        while !queue.isEmpty {
            let k = queue.removeFirst()
            guard let bytes = small[k.manifestPath],
                  let m = try? TalusJSON.decoder().decode(ToolManifest.self, from: Data(bytes)) else { continue }
            for c in m.components where seen.insert(UnitKey(.component, c)).inserted {
                order.append(c)
                queue.append(UnitKey(.component, c))
            }
        }
        return order
    }
}

/// Parameters given on a command line: `NAME=VALUE` pairs typed by the manifest's declarations,
/// over an optional JSON file.
public enum LocalParams {
    /// `file` (a JSON object) with `pairs` over it. Values of declared `int`, `float` and `bool`
    /// parameters are parsed as such, `list` and `object` as JSON; anything else stays a string
    /// (an undeclared name is reported later by ``ParamCheck``).
    public static func parse(_ pairs: [String], file: String? = nil, manifest: ToolManifest?) throws -> BSONDocument {
        var out: BSONDocument = [:]
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else { throw LocalRunError(["cannot read the params file \(file)"]) }
            do {
                out = try TalusJSON.decoder().decode(BSONDocument.self, from: data)
            } catch {
                throw LocalRunError(["\(file) is not a JSON object of parameters: \(error)"])
            }
        }
        let declared = Dictionary((manifest?.params ?? []).map { ($0.name, $0.type) }, uniquingKeysWith: { a, _ in a })
        var problems: [String] = []
        for pair in pairs {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                problems.append("--param \(pair): write NAME=VALUE"); continue
            }
            let name = String(pair[..<eq]), text = String(pair[pair.index(after: eq)...])
            switch declared[name] {
            case .int?:
                guard let v = Int64(text) else { problems.append("parameter \"\(name)\" must be an integer (got \(text))"); continue }
                out[name] = .int64(v)
            case .float?:
                guard let v = Double(text) else { problems.append("parameter \"\(name)\" must be a number (got \(text))"); continue }
                out[name] = .double(v)
            case .bool?:
                switch text.lowercased() {
                case "true", "yes", "1", "on": out[name] = .bool(true)
                case "false", "no", "0", "off": out[name] = .bool(false)
                default: problems.append("parameter \"\(name)\" must be true or false (got \(text))")
                }
            case .list?, .object?:
                do {
                    out[name] = try TalusJSON.decoder().decode(BSONValue.self, from: Data(text.utf8))
                } catch {
                    problems.append("parameter \"\(name)\" must be JSON (a \(declared[name]! == .list ? "list" : "object")): \(text)")
                }
            default:
                out[name] = .string(text)
            }
        }
        if !problems.isEmpty { throw LocalRunError(problems) }
        return out
    }
}
