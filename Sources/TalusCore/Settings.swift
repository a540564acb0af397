// Configuration of the Talus daemons (DESIGN §10): one YAML file per daemon plus environment
// overrides, read through swift-configuration; every key declared once with its type, default and
// documentation, so the reference page is generated from the code and a bad value stops the
// daemon with a message naming the key.

import Configuration
import Foundation
import SystemPackage

/// A configuration key a daemon reads: its dotted name, default and documentation.
public struct SettingKey: Sendable, Hashable {
    /// Dotted name as in the YAML file (`amqp.url`); the environment variable is
    /// `TALUS_` + the name upper-cased with `.` → `_` (`TALUS_AMQP_URL`).
    public let name: String
    /// The default, as text (empty: none).
    public let defaultText: String
    /// Type for the documentation (`string`, `int`, `bool`, `duration`, `path`, `url`, ...).
    public let type: String
    public let doc: String
    /// Secret keys are never logged; `<name>_file` (env `…_FILE`) may name a file holding the value.
    public let secret: Bool

    public init(_ name: String, type: String, default defaultText: String, secret: Bool = false, doc: String) {
        self.name = name; self.type = type; self.defaultText = defaultText; self.secret = secret; self.doc = doc
    }

    /// The environment variable that overrides this key.
    public var environmentName: String {
        "TALUS_" + name.uppercased().replacingOccurrences(of: ".", with: "_").replacingOccurrences(of: "-", with: "_")
    }
}

/// A bad configuration value: the daemon prints this and exits.
public struct SettingsError: Error, CustomStringConvertible, Sendable {
    public let key: String
    public let problem: String
    public init(key: String, problem: String) { self.key = key; self.problem = problem }
    public var description: String { "configuration key \(key): \(problem)" }
}

/// Reads typed values for declared keys from a YAML file and the environment (environment wins).
///
/// Values are read as text and parsed here, strictly: a value that does not parse is an error
/// naming the key, never a silent fallback to the default.
public struct Settings: Sendable {
    private let reader: ConfigReader
    private let environment: [String: String]
    /// The file read, if any.
    public let filePath: String?
    /// Top-level and nested keys present in the file, for typo detection.
    public let fileKeys: Set<String>

    /// - Parameters:
    ///   - filePath: the YAML file; a missing file is an error only when `required`.
    ///   - environment: overrides (`TALUS_…`); the process environment by default.
    public init(filePath: String?, required: Bool = false,
                environment: [String: String] = ProcessInfo.processInfo.environment) async throws {
        // The environment is consulted directly (see `text(_:)`): one rule, `TALUS_` + key.
        var providers: [any ConfigProvider] = []
        var keys = Set<String>()
        if let filePath {
            if FileManager.default.fileExists(atPath: filePath) {
                do {
                    providers.append(try await FileProvider<YAMLSnapshot>(filePath: FilePath(filePath)))
                } catch {
                    throw SettingsError(key: "(file \(filePath))", problem: "not valid YAML: \(error)")
                }
                keys = Settings.keysOf(yamlFile: filePath)
            } else if required {
                throw SettingsError(key: "(file)", problem: "configuration file \(filePath) does not exist")
            }
        }
        reader = providers.isEmpty ? ConfigReader(provider: InMemoryProvider(values: [:])) : ConfigReader(providers: providers)
        self.environment = environment
        self.filePath = filePath
        fileKeys = keys
    }

    /// Settings from an in-memory map (tests, tools); keys are dotted names.
    public init(values: [String: String]) {
        reader = ConfigReader(provider: InMemoryProvider(values: Dictionary(uniqueKeysWithValues: values.map {
            (AbsoluteConfigKey($0.key.split(separator: ".").map(String.init)), ConfigValue(.string($0.value), isSecret: false))
        })))
        environment = [:]
        filePath = nil
        fileKeys = Set(values.keys)
    }

    /// A configuration file with these values (dotted keys, `section.key`; sections and keys
    /// sorted; every value a double-quoted string), for tools and tests that start a daemon.
    public static func yaml(_ values: [String: String], header: String? = nil) -> String {
        var sections: [String: [(String, String)]] = [:]
        for (key, value) in values {
            let parts = key.split(separator: ".", maxSplits: 1).map(String.init)
            precondition(parts.count == 2, "configuration key \(key) is not section.key")
            sections[parts[0], default: []].append((parts[1], value))
        }
        var yaml = header.map { "# \($0)\n" } ?? ""
        for (section, entries) in sections.sorted(by: { $0.key < $1.key }) {
            yaml += "\(section):\n"
            for (key, value) in entries.sorted(by: { $0.0 < $1.0 }) {
                let quoted = value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                yaml += "  \(key): \"\(quoted)\"\n"
            }
        }
        return yaml
    }

    /// The raw text of `key`, or nil when unset. Secret keys also come from `<key>_file`.
    public func text(_ key: SettingKey) throws -> String? {
        if let v = environment[key.environmentName] { return v }
        if let v = reader.string(forKey: ConfigKey(key.name.split(separator: ".").map(String.init))) { return v }
        if key.secret {
            let fileKey = SettingKey(key.name + "_file", type: "path", default: "", doc: "")
            let path = environment[fileKey.environmentName]
                ?? reader.string(forKey: ConfigKey(fileKey.name.split(separator: ".").map(String.init)))
            if let path {
                do {
                    let value = try String(contentsOfFile: path, encoding: .utf8)
                    return value.trimmingCharacters(in: .whitespacesAndNewlines)
                } catch {
                    throw SettingsError(key: fileKey.name, problem: "cannot read \(path): \(error.localizedDescription)")
                }
            }
        }
        return nil
    }

    public func string(_ key: SettingKey) throws -> String {
        try text(key) ?? key.defaultText
    }

    public func optionalString(_ key: SettingKey) throws -> String? {
        let v = try text(key) ?? key.defaultText
        return v.isEmpty ? nil : v
    }

    public func int(_ key: SettingKey, range: ClosedRange<Int>? = nil) throws -> Int {
        let raw = try string(key)
        guard let v = Int(raw.trimmingCharacters(in: .whitespaces)) else {
            throw SettingsError(key: key.name, problem: "\"\(raw)\" is not an integer")
        }
        if let range, !range.contains(v) {
            throw SettingsError(key: key.name, problem: "\(v) is outside \(range.lowerBound)…\(range.upperBound)")
        }
        return v
    }

    public func double(_ key: SettingKey) throws -> Double {
        let raw = try string(key)
        guard let v = Double(raw.trimmingCharacters(in: .whitespaces)) else {
            throw SettingsError(key: key.name, problem: "\"\(raw)\" is not a number")
        }
        return v
    }

    public func bool(_ key: SettingKey) throws -> Bool {
        let raw = try string(key).lowercased()
        switch raw {
        case "true", "yes", "1", "on": return true
        case "false", "no", "0", "off": return false
        default: throw SettingsError(key: key.name, problem: "\"\(raw)\" is not a boolean (true/false)")
        }
    }

    /// A duration written as `30s`, `5m`, `2h`, `250ms` or plain seconds.
    public func duration(_ key: SettingKey) throws -> Duration {
        let raw = try string(key)
        guard let d = Settings.parseDuration(raw) else {
            throw SettingsError(key: key.name, problem: "\"\(raw)\" is not a duration (e.g. 30s, 5m, 2h, 250ms)")
        }
        return d
    }

    public func `enum`<E: RawRepresentable & CaseIterable>(_ key: SettingKey, _ type: E.Type) throws -> E where E.RawValue == String {
        let raw = try string(key)
        guard let v = E(rawValue: raw) else {
            throw SettingsError(key: key.name, problem: "\"\(raw)\" is not one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return v
    }

    /// Throws for file keys no daemon declares (a typo must not be silently ignored).
    public func checkUnknownKeys(_ declared: [SettingKey]) throws {
        let known = Set(declared.flatMap { k -> [String] in
            let parts = k.name.split(separator: ".").map(String.init)
            var prefixes: [String] = []
            for i in 1...parts.count { prefixes.append(parts[0..<i].joined(separator: ".")) }
            return prefixes + (k.secret ? [k.name + "_file"] : [])
        })
        let unknown = fileKeys.subtracting(known).sorted()
        if let first = unknown.first {
            let close = declared.map(\.name).min { Settings.distance($0, first) < Settings.distance($1, first) }
            throw SettingsError(key: first, problem: "unknown key in \(filePath ?? "configuration")" + (close.map { " (did you mean \($0)?)" } ?? ""))
        }
    }

    /// Parses `30s`, `5m`, `2h`, `1d`, `250ms` or plain seconds.
    public static func parseDuration(_ raw: String) -> Duration? {
        let s = raw.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, scale) in units where s.hasSuffix(suffix) {
            guard let v = Double(s.dropLast(suffix.count)), v >= 0 else { return nil }
            return .milliseconds(Int64((v * scale * 1000).rounded()))
        }
        guard let v = Double(s), v >= 0 else { return nil }
        return .milliseconds(Int64((v * 1000).rounded()))
    }

    /// Dotted key paths of a YAML file's mappings (`a`, `a.b`, ...), from its indentation. Only
    /// for typo detection; the values are parsed by swift-configuration.
    static func keysOf(yamlFile path: String) -> Set<String> {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var stack: [(indent: Int, key: String)] = []
        var out = Set<String>()
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") || trimmed.hasPrefix("-") { continue }
            guard let colon = trimmed.firstIndex(of: ":") else { continue }
            let key = String(trimmed[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "\"' "))
            let indent = line.prefix { $0 == " " }.count
            while let last = stack.last, last.indent >= indent { stack.removeLast() }
            let path = (stack.map(\.key) + [key]).joined(separator: ".")
            out.insert(path)
            stack.append((indent, key))
        }
        return out
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count)
        for i in 1...a.count {
            var cur = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
}

/// Renders the reference documentation of a daemon's keys (Markdown table).
public func settingsReference(title: String, file: String, keys: [SettingKey]) -> String {
    var out = "## \(title)\n\nFile: `\(file)` (YAML, nested keys: `amqp.url` is `amqp:` → `url:`). "
    out += "Every key can be overridden by an environment variable (`TALUS_` + key in capitals, `.` → `_`). "
    out += "Secret keys also accept `<key>_file` naming a file that holds the value.\n\n"
    out += "| key | environment | type | default | description |\n|---|---|---|---|---|\n"
    // A `|` inside a cell would end it: escape it (types such as `auto|kvm|qemu`).
    func cell(_ text: String) -> String { text.replacingOccurrences(of: "|", with: "\\|") }
    for k in keys {
        let def = k.defaultText.isEmpty ? "—" : "`\(cell(k.defaultText))`"
        let secret = k.secret ? " **Secret.**" : ""
        out += "| `\(k.name)` | `\(k.environmentName)` | \(cell(k.type)) | \(def) | \(cell(k.doc))\(secret) |\n"
    }
    return out
}
