// Tool and component manifests (`talus-tool.json`, DESIGN §8) and the checks on them and on the
// parameters a task or job gives a tool. No I/O: the code hook, the API and the CLI all call these.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import BSON

/// Parameter types a manifest may declare.
public enum ParamType: String, Codable, Sendable, CaseIterable {
    case string, int, float, bool, list, object, fileset, component
}

/// One declared parameter.
public struct ToolParam: Codable, Sendable, Equatable {
    public var name: String
    public var type: ParamType
    public var description: String?
    public var `default`: BSONValue?
    public var required: Bool

    public init(name: String, type: ParamType, description: String? = nil, default: BSONValue? = nil, required: Bool = false) {
        self.name = name; self.type = type; self.description = description; self.default = `default`; self.required = required
    }

    enum CodingKeys: String, CodingKey { case name, type, description, `default`, required }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        type = try c.decode(ParamType.self, forKey: .type)
        description = try c.decodeIfPresent(String.self, forKey: .description)
        `default` = try c.decodeIfPresent(BSONValue.self, forKey: .default)
        required = try c.decodeIfPresent(Bool.self, forKey: .required) ?? false
    }
}

/// Resources a tool asks for (defaults for tasks that do not say).
public struct ToolResources: Codable, Sendable, Equatable {
    public var cpus: Int?
    public var memoryMB: Int?
    public init(cpus: Int? = nil, memoryMB: Int? = nil) { self.cpus = cpus; self.memoryMB = memoryMB }
    enum CodingKeys: String, CodingKey { case cpus; case memoryMB = "memory_mb" }
}

/// The manifest of a tool (`tools/<name>/talus-tool.json`) or a component
/// (`components/<name>/talus-tool.json`).
public struct ToolManifest: Codable, Sendable, Equatable {
    public var name: String
    public var description: String
    /// Command run by `/bin/sh -c` in the tool's directory (components may omit it).
    public var entry: String?
    public var params: [ToolParam]
    /// Components (by name) bundled with the tool.
    public var components: [String]
    /// Default per-run timeout, seconds.
    public var timeout: Int?
    public var resources: ToolResources?

    public init(name: String, description: String, entry: String?, params: [ToolParam] = [], components: [String] = [],
                timeout: Int? = nil, resources: ToolResources? = nil) {
        self.name = name; self.description = description; self.entry = entry; self.params = params
        self.components = components; self.timeout = timeout; self.resources = resources
    }

    enum CodingKeys: String, CodingKey { case name, description, entry, params, components, timeout, resources }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        description = try c.decodeIfPresent(String.self, forKey: .description) ?? ""
        entry = try c.decodeIfPresent(String.self, forKey: .entry)
        params = try c.decodeIfPresent([ToolParam].self, forKey: .params) ?? []
        components = try c.decodeIfPresent([String].self, forKey: .components) ?? []
        timeout = try c.decodeIfPresent(Int.self, forKey: .timeout)
        resources = try c.decodeIfPresent(ToolResources.self, forKey: .resources)
    }

    /// The manifest file name.
    public static let fileName = "talus-tool.json"

    /// True for names usable as tool, component and parameter names: `[A-Za-z][A-Za-z0-9_-]{0,63}`.
    public static func isValidName(_ name: String) -> Bool {
        func isLetter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        guard let first = name.unicodeScalars.first, name.unicodeScalars.count <= 64, isLetter(first) else {
            return false
        }
        return name.unicodeScalars.allSatisfy { isLetter($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// Problems with the manifest itself (not needing the repository), each a sentence; empty when
    /// valid. `kind` decides whether `entry` is required.
    public func problems(kind: CodeDocument.Kind, directoryName: String) -> [String] {
        var out: [String] = []
        if !Self.isValidName(name) {
            out.append("name \"\(name)\" is not a valid name (letters, digits, _ and -, starting with a letter, at most 64)")
        } else if name != directoryName {
            out.append("name \"\(name)\" does not match its directory \"\(directoryName)\"")
        }
        if kind == .tool && (entry ?? "").trimmedSpaces.isEmpty {
            out.append("\"entry\" is required for a tool: the command to run, e.g. \"./run.sh\"")
        }
        var seen = Set<String>()
        for p in params {
            if !Self.isValidName(p.name) { out.append("parameter \"\(p.name)\" has an invalid name") }
            if !seen.insert(p.name).inserted { out.append("parameter \"\(p.name)\" is declared twice") }
            if let d = p.default, let problem = ParamCheck.problem(value: d, type: p.type) {
                out.append("parameter \"\(p.name)\": default \(problem)")
            }
        }
        for comp in components where !Self.isValidName(comp) {
            out.append("component reference \"\(comp)\" is not a valid name")
        }
        if let t = timeout, t < 1 || t > 604_800 { out.append("timeout must be 1…604800 seconds (got \(t))") }
        return out
    }

    /// The entry command's first word when it names a file in the tool directory
    /// (`./run.sh args` → `run.sh`), for the hook to check it exists in the tree.
    public var entryFile: String? {
        guard let e = entry?.trimmedSpaces, !e.isEmpty else { return nil }
        let first = String(e.split(separator: " ", maxSplits: 1).first ?? "")
        if first.hasPrefix("./") { return String(first.dropFirst(2)) }
        return nil
    }
}

/// Checks of parameter values against declared types.
public enum ParamCheck {
    /// Why `value` does not fit `type`, or nil when it fits.
    public static func problem(value: BSONValue, type: ParamType) -> String? {
        switch (type, value) {
        case (.string, .string), (.bool, .bool), (.object, .document), (.list, .array): return nil
        case (.int, .int32), (.int, .int64): return nil
        case (.int, .double(let d)) where d.rounded() == d && abs(d) < 9e15: return nil
        case (.float, .double), (.float, .int32), (.float, .int64): return nil
        case (.fileset, .string(let s)), (.component, .string(let s)): return s.isEmpty ? "must not be empty" : nil
        default: return "must be of type \(type.rawValue)"
        }
    }

    /// Merges `given` over the manifest's defaults and checks the result: unknown names, wrong
    /// types and missing required parameters are problems. Returns the merged params.
    public static func resolve(_ given: BSONDocument, against manifest: ToolManifest) -> (params: BSONDocument, problems: [String]) {
        var out: BSONDocument = [:]
        var problems: [String] = []
        let declared = Dictionary(manifest.params.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for key in given.keys where declared[key] == nil {
            problems.append("unknown parameter \"\(key)\" (\(manifest.name) declares: \(manifest.params.map(\.name).joined(separator: ", ")))")
        }
        for p in manifest.params {
            if let v = given[p.name] {
                if let problem = problem(value: v, type: p.type) { problems.append("parameter \"\(p.name)\" \(problem)") }
                out[p.name] = v
            } else if let d = p.default {
                out[p.name] = d
            } else if p.required {
                problems.append("parameter \"\(p.name)\" is required")
            }
        }
        return (out, problems)
    }
}

extension String {
    /// The string without leading and trailing spaces, tabs and newlines (FoundationEssentials
    /// has no `trimmingCharacters`).
    var trimmedSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
