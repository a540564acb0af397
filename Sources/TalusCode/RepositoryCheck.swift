// The checks the pre-receive hook runs on a snapshot (DESIGN §8): every manifest of a changed
// tool or component against the schema and the model's rules, the entry file present and
// executable, component references that resolve, names unique (ignoring case), and trees a
// bundle can be built from (no submodules, no symbolic links leaving their directory, no odd
// path components). The bundle builder applies the same tree rules before packing anything.

import TalusModel

/// The result of checking a snapshot.
public struct RepositoryCheck: Sendable {
    /// What is wrong, sorted by file.
    public let problems: [CodeProblem]
    /// The manifests of the units that have no problem of their own (what post-receive records).
    public let manifests: [UnitKey: ToolManifest]

    /// Checks `snapshot`. Problems are reported for the units in `changed` (nil: every unit), and
    /// for any unit whose component references point at a changed unit (deleting a component
    /// that an unchanged tool uses is caught).
    public static func check(_ snapshot: CodeSnapshot, changed: Set<UnitKey>? = nil) -> RepositoryCheck {
        var own: [UnitKey: [CodeProblem]] = [:]
        var manifests: [UnitKey: ToolManifest] = [:]
        for (key, files) in snapshot.units {
            var problems: [CodeProblem] = []
            let (manifest, manifestProblems) = checkManifest(key, files: files, snapshot: snapshot)
            problems += manifestProblems
            problems += treeProblems(key, files: files, snapshot: snapshot)
            if let manifest, key.kind == .tool { problems += entryProblems(key, manifest: manifest, files: files) }
            if let manifest {
                // Only listed components are bundled, so a component parameter can only name one of them.
                for p in manifest.params where p.type == .component {
                    if case .string(let c)? = p.default, !manifest.components.contains(c) {
                        problems.append(CodeProblem(file: key.manifestPath, message: "parameter \"\(p.name)\": default component \"\(c)\" is not listed in \"components\" (only listed components are bundled)"))
                    }
                }
            }
            own[key] = problems
            if let manifest { manifests[key] = manifest }
        }
        // Names unique ignoring case, across tools and components.
        let byFolded = Dictionary(grouping: snapshot.units.keys, by: { $0.name.lowercased() })
        for (_, keys) in byFolded where keys.count > 1 {
            for key in keys {
                let others = keys.filter { $0 != key }.sorted().map(\.path).joined(separator: ", ")
                own[key, default: []].append(CodeProblem(
                    file: key.path + "/", message: "the name \"\(key.name)\" is also used by \(others); tool and component names must be unique, ignoring case"))
            }
        }
        // Component references.
        var references: [UnitKey: [CodeProblem]] = [:]
        for (key, manifest) in manifests {
            for ref in manifest.components where ToolManifest.isValidName(ref) {
                let target = UnitKey(.component, ref)
                if snapshot.units[target] == nil {
                    references[key, default: []].append(CodeProblem(
                        file: key.manifestPath, message: "component \"\(ref)\" does not exist in this commit (expected \(target.manifestPath))"))
                } else if manifests[target] == nil || !(own[target] ?? []).isEmpty {
                    references[key, default: []].append(CodeProblem(
                        file: key.manifestPath, message: "component \"\(ref)\" is not valid in this commit (see \(target.manifestPath))"))
                }
            }
        }
        var reported: [CodeProblem] = []
        for (key, problems) in own where changed == nil || changed!.contains(key) { reported += problems }
        for (key, problems) in references {
            let refsChanged = manifests[key]?.components.contains { changed?.contains(UnitKey(.component, $0)) ?? true } ?? false
            if changed == nil || changed!.contains(key) || refsChanged { reported += problems }
        }
        let clean = manifests.filter { (own[$0.key] ?? []).isEmpty && (references[$0.key] ?? []).isEmpty }
        return RepositoryCheck(problems: reported.sorted { ($0.file, $0.message) < ($1.file, $1.message) }, manifests: clean)
    }

    /// The manifest of `key`, decoded and checked on its own.
    static func checkManifest(_ key: UnitKey, files: [TreeEntry], snapshot: CodeSnapshot) -> (ToolManifest?, [CodeProblem]) {
        guard ToolManifest.isValidName(key.name) else {
            return (nil, [CodeProblem(file: key.path + "/", message: "\"\(key.name)\" is not a valid \(key.kind.rawValue) directory name (letters, digits, _ and -, starting with a letter, at most 64 characters)")])
        }
        guard let entry = files.first(where: { $0.path == key.manifestPath }) else {
            return (nil, [CodeProblem(file: key.manifestPath, message: "missing: every \(key.kind.rawValue) directory needs a \(ToolManifest.fileName) manifest")])
        }
        guard entry.kind == .file || entry.kind == .executable, let bytes = snapshot.small[entry.path] else {
            return (nil, [CodeProblem(file: key.manifestPath, message: "must be a regular file")])
        }
        let result = ManifestCheck.check(bytes, file: key.manifestPath, kind: key.kind, directoryName: key.name)
        return (result.manifest, result.problems)
    }

    /// The entry file of a tool exists and is executable.
    static func entryProblems(_ key: UnitKey, manifest: ToolManifest, files: [TreeEntry]) -> [CodeProblem] {
        guard let rel = manifest.entryFile else { return [] }
        let shown = "\"\(manifest.entry ?? "")\""
        guard TreeRules.isSafeRelativePath(rel) else {
            return [CodeProblem(file: key.manifestPath, message: "entry \(shown) must name a file inside the tool directory")]
        }
        let path = key.path + "/" + rel
        guard let file = files.first(where: { $0.path == path }) else {
            return [CodeProblem(file: key.manifestPath, message: "entry \(shown): \(path) is not in this commit")]
        }
        switch file.kind {
        case .executable, .symlink: return []
        case .file:
            return [CodeProblem(file: path, message: "the entry file is not executable; run `chmod +x \(path)` (or `git update-index --chmod=+x \(path)`) and commit again")]
        default:
            return [CodeProblem(file: key.manifestPath, message: "entry \(shown): \(path) is not a file")]
        }
    }

    /// Tree rules for every file of a unit.
    static func treeProblems(_ key: UnitKey, files: [TreeEntry], snapshot: CodeSnapshot) -> [CodeProblem] {
        files.compactMap { e in
            TreeRules.problem(e, unitPath: key.path, symlinkTarget: snapshot.small[e.path]).map { CodeProblem(file: e.path, message: $0) }
        }
    }
}

/// What may be in a tool or component directory, for the hook and for bundles.
public enum TreeRules {
    /// True for a relative path without empty, `.` or `..` components.
    public static func isSafeRelativePath(_ path: String) -> Bool {
        !path.isEmpty && !path.hasPrefix("/") && !path.contains("\0")
            && !path.split(separator: "/", omittingEmptySubsequences: false).contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }

    /// Why `entry` (a file of the unit at `unitPath`) cannot go into a bundle, or nil.
    /// `symlinkTarget` is the link's contents when it is a symbolic link.
    public static func problem(_ entry: TreeEntry, unitPath: String, symlinkTarget: [UInt8]?) -> String? {
        guard entry.path.hasPrefix(unitPath + "/") else { return "is outside \(unitPath)/" }
        let rel = String(entry.path.dropFirst(unitPath.count + 1))
        guard isSafeRelativePath(rel) else { return "the path has an empty, \".\" or \"..\" component" }
        switch entry.kind {
        case .file, .executable: return nil
        case .submodule:
            return "is a git submodule; bundles cannot contain submodules (copy the files you need into the directory instead)"
        case .other(let what):
            return "is not a regular file, directory or symbolic link (\(what))"
        case .symlink:
            guard let bytes = symlinkTarget, let target = String(validating: bytes, as: UTF8.self), !target.isEmpty else {
                return "is a symbolic link whose target cannot be read"
            }
            if target.hasPrefix("/") {
                return "is a symbolic link to the absolute path \(target); links must stay inside \(unitPath)/ (use a relative target)"
            }
            // Resolve the target from the link's directory; it must never climb out of the unit.
            var stack = rel.split(separator: "/").dropLast().map(String.init)
            for part in target.split(separator: "/", omittingEmptySubsequences: true) {
                if part == "." { continue }
                if part == ".." {
                    if stack.isEmpty { return "is a symbolic link to \(target), which points outside \(unitPath)/" }
                    stack.removeLast()
                } else {
                    stack.append(String(part))
                }
            }
            return nil
        }
    }
}
