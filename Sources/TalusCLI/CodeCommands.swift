// `talus code list|show`: the tools and components recorded from the code repository (DESIGN §8),
// as they are at the head of main, with their parameters and the commits a task can pin.

import ArgumentParser
import BSON
import Foundation
import TalusCode
import TalusModel

struct CodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "code", abstract: "Tools and components recorded from the code repository.", subcommands: [List.self, Show.self])

    /// The recorded head of main, or nil when nothing was recorded through the hooks yet.
    static func head(_ client: APIClient) async throws -> CodeHead? {
        do {
            return try await client.get("/api/v1/code/head", as: CodeHead.self)
        } catch CLIError.refused(status: 404, _, _) {
            return nil
        }
    }

    /// The newest record of each (kind, name) among `records`: tools, then components, by name.
    static func newestByName(_ records: [CodeDocument]) -> [CodeDocument] {
        var newest: [String: CodeDocument] = [:]
        for r in records {
            let key = r.kind.rawValue + "/" + r.name
            if let seen = newest[key], seen.committed >= r.committed { continue }
            newest[key] = r
        }
        return newest.values.sorted { ($0.kind == .tool ? 0 : 1, $0.name) < ($1.kind == .tool ? 0 : 1, $1.name) }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the tools and components on main (with --all: every recorded commit of each).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "tool or component.") var kind: CodeDocument.Kind?
        @Flag(help: "Every recording (name and commit), newest first, including tools no longer on main.") var all = false
        @Option(help: "With --all: show at most this many.") var limit: Int = 200

        func run() async throws {
            try await withAPI { client in
                let kindQuery = kind.map { [("kind", $0.rawValue)] } ?? []
                let items: [CodeDocument]
                if all {
                    items = try await client.list("/api/v1/code", query: kindQuery, limit: limit, as: CodeDocument.self)
                } else if let head = try await CodeCommand.head(client) {
                    items = CodeCommand.newestByName(try await client.list("/api/v1/code", query: kindQuery + [("commit", head.commit)],
                                                                           limit: nil, as: CodeDocument.self))
                    if !global.json { Output.note("main at \(head.commit.prefix(12)), recorded \(Format.ago(head.updated))") }
                } else {
                    items = CodeCommand.newestByName(try await client.list("/api/v1/code", query: kindQuery, limit: nil, as: CodeDocument.self))
                }
                if global.json { try Output.json(items); return }
                Output.table(["NAME", "KIND", "COMMIT", "COMMITTED", "PARAMS", "DESCRIPTION"], items.map {
                    [$0.name, $0.kind.rawValue, String($0.commit.prefix(12)), Format.date($0.committed),
                     $0.manifest.params.map(\.name).joined(separator: ","), String($0.manifest.description.prefix(60))]
                })
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a tool's manifest, parameters and recorded commits (the newest, or --commit).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Name (or record id).") var code: String
        @Option(help: "The commit (full id, or a prefix of a recorded one). Default: the newest.") var commit: String?
        @Option(help: "tool or component (when both have the name).") var kind: CodeDocument.Kind?
        @Option(help: "How many recorded commits to list.") var history: Int = 10

        func run() async throws {
            try await withAPI { client in
                let doc: CodeDocument
                let recorded: [CodeDocument]
                if ObjectId(code) != nil {
                    doc = try await client.get("/api/v1/code/\(code)", as: CodeDocument.self)
                    recorded = try await client.list("/api/v1/code", query: [("name", doc.name), ("kind", doc.kind.rawValue)],
                                                     limit: 500, as: CodeDocument.self)
                } else {
                    recorded = try await client.list("/api/v1/code", query: [("name", code)] + (kind.map { [("kind", $0.rawValue)] } ?? []),
                                                     limit: 500, as: CodeDocument.self).sorted { $0.committed > $1.committed }
                    guard !recorded.isEmpty else {
                        throw CLIError.refused(status: 404, detail: "no tool or component named \(code) (talus code list)", problems: [])
                    }
                    if let commit {
                        let matches = recorded.filter { $0.commit.hasPrefix(commit.lowercased()) }
                        guard let first = matches.first else {
                            throw CLIError.refused(status: 404, detail: "\(code) is not recorded at a commit \(commit)… (talus code show \(code) lists them)", problems: [])
                        }
                        guard Set(matches.map(\.commit)).count == 1 else {
                            throw CLIError.usage("\(commit) matches several recorded commits; give more digits")
                        }
                        doc = first
                    } else if let head = try await CodeCommand.head(client), let atHead = recorded.first(where: { $0.commit == head.commit }) {
                        doc = atHead
                    } else {
                        doc = recorded[0]
                    }
                }
                let commits = Array(recorded.filter { $0.kind == doc.kind }.prefix(history))
                if global.json {
                    struct Shown: Encodable {
                        var record: CodeDocument
                        var commits: [CodeDocument]
                        func encode(to encoder: any Encoder) throws {
                            try record.encode(to: encoder)
                            struct Entry: Encodable { var commit: String; var committed: Date }
                            enum K: String, CodingKey { case commits }
                            var c = encoder.container(keyedBy: K.self)
                            try c.encode(commits.map { Entry(commit: $0.commit, committed: $0.committed) }, forKey: .commits)
                        }
                    }
                    try Output.json(Shown(record: doc, commits: commits))
                    return
                }
                let m = doc.manifest
                Output.fields([("name", doc.name), ("kind", doc.kind.rawValue), ("commit", doc.commit),
                               ("committed", Format.date(doc.committed)), ("path", doc.path), ("description", m.description),
                               ("entry", m.entry ?? "-"), ("components", m.components.isEmpty ? "-" : m.components.joined(separator: ", ")),
                               ("timeout", m.timeout.map { "\($0)s" } ?? "-"),
                               ("resources", m.resources.map { r in
                                   [r.cpus.map { "\($0) cpus" }, r.memoryMB.map { "\($0) MiB" }].compactMap { $0 }.joined(separator: ", ")
                               } ?? "-")])
                Output.line()
                Output.table(["PARAM", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"], m.params.map {
                    [$0.name, $0.type.rawValue, $0.required ? "yes" : "no", $0.default.map { Self.show($0) } ?? "-", $0.description ?? ""]
                })
                Output.line()
                Output.table(["COMMIT", "COMMITTED", ""], commits.map {
                    [$0.commit, Format.date($0.committed), $0.commit == doc.commit ? "<- shown" : ""]
                })
            }
        }

        /// A default as JSON text.
        static func show(_ value: BSONValue) -> String {
            let doc: BSONDocument = ["v": value]
            let text = doc.extendedJSON(.relaxed)
            // {"v": …} → …
            guard let colon = text.firstIndex(of: ":") else { return text }
            return String(text[text.index(after: colon)...].dropLast()).trimmingCharacters(in: .whitespaces)
        }
    }
}

extension CodeDocument.Kind: ExpressibleByArgument {}
