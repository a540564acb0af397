// Checks one manifest file on its own: JSON syntax, the schema, then the model's checks
// (`ToolManifest.problems`). The repository-wide checks (entry file, component references,
// unique names, safe trees) are in RepositoryCheck.swift.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import TalusModel

/// A problem with a file in the code repository (or a tool directory on disk): the file, and
/// what is wrong with it, as shown to the person pushing.
public struct CodeProblem: Sendable, Equatable, CustomStringConvertible {
    /// Path relative to the repository root (`tools/toyfuzz/talus-tool.json`).
    public let file: String
    public let message: String
    public init(file: String, message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}

/// The outcome of checking one manifest.
public struct ManifestCheck: Sendable {
    /// The decoded manifest, when the file decodes (it may still have problems).
    public let manifest: ToolManifest?
    public let problems: [CodeProblem]

    /// Largest manifest accepted.
    public static let maxBytes = 256 << 10

    /// Checks the bytes of `file` (a `talus-tool.json`) for a `kind` in directory `directoryName`.
    public static func check(_ bytes: [UInt8], file: String, kind: CodeDocument.Kind, directoryName: String) -> ManifestCheck {
        func fail(_ messages: [String]) -> ManifestCheck {
            ManifestCheck(manifest: nil, problems: messages.map { CodeProblem(file: file, message: $0) })
        }
        guard bytes.count <= maxBytes else { return fail(["is \(bytes.count) bytes; a manifest may have at most \(maxBytes)"]) }
        let json: JSONValue
        do {
            json = try JSONValue.parse(bytes)
        } catch let e as JSONSyntaxError {
            return fail(["not valid JSON: \(e)"])
        } catch {
            return fail(["not valid JSON: \(error)"])
        }
        let violations = ManifestSchema.schema.validate(json)
        if !violations.isEmpty {
            // Decoding would fail or mislead; the schema's messages say what to fix.
            return fail(violations.map { "\($0.path): \($0.message)" })
        }
        let manifest: ToolManifest
        do {
            manifest = try TalusJSON.decoder().decode(ToolManifest.self, from: Data(bytes))
        } catch {
            return fail(["cannot be read as a manifest: \(error)"])
        }
        let problems = manifest.problems(kind: kind, directoryName: directoryName)
        return ManifestCheck(manifest: manifest, problems: problems.map { CodeProblem(file: file, message: $0) })
    }
}
