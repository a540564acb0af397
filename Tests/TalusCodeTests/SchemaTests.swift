import Foundation
import Testing
import TalusCode
import TalusCore
import TalusModel
import TalusTestSupport

@Suite struct SchemaTests {
    /// Manifests with the verdict the schema must give; the Python reference implementation must
    /// agree with the Swift validator on every one.
    static let examples: [(String, Bool)] = [
        (#"{"name":"t","description":"d"}"#, true),
        (#"{"name":"t","description":"d","entry":"./run.sh","params":[],"components":[],"timeout":60}"#, true),
        (#"{"$schema":"../../schemas/talus-tool.schema.json","name":"t","description":"d"}"#, true),
        (#"{"name":"t","description":"d","resources":{"cpus":2,"memory_mb":512}}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"int","default":5}]}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"int","default":5.0}]}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"x","type":"float","default":1}]}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"x","type":"list","default":[1,"a"]}]}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"x","type":"object","default":{"a":1}}]}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"x","type":"component","default":"lib"}]}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"x","type":"string","required":true}]}"#, true),
        (#"{"name":"t","description":"d","params":[{"name":"x","type":"bool","default":false,"description":"flag"}]}"#, true),
        (#"{"name":"t"}"#, false),
        (#"{"description":"d"}"#, false),
        (#"{"name":"t","description":"d","extra":1}"#, false),
        (#"{"name":"bad name","description":"d"}"#, false),
        (#"{"name":"1abc","description":"d"}"#, false),
        (#"{"name":"t","description":"d","entry":""}"#, false),
        (#"{"name":"t","description":"d","timeout":0}"#, false),
        (#"{"name":"t","description":"d","timeout":1.5}"#, false),
        (#"{"name":"t","description":"d","params":{}}"#, false),
        (#"{"name":"t","description":"d","params":[{"name":"n"}]}"#, false),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"integer"}]}"#, false),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"int","default":"5"}]}"#, false),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"int","default":5.5}]}"#, false),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"bool","default":0}]}"#, false),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"fileset","default":""}]}"#, false),
        (#"{"name":"t","description":"d","params":[{"name":"n","type":"string","flag":true}]}"#, false),
        (#"{"name":"t","description":"d","components":["a","a"]}"#, false),
        (#"{"name":"t","description":"d","components":["no/slash"]}"#, false),
        (#"{"name":"t","description":"d","resources":{"cpus":0}}"#, false),
        (#"{"name":"t","description":"d","resources":{"gpus":1}}"#, false),
        (#"[]"#, false),
    ]

    @Test func theShippedSchemaIsTheBuiltInOne() throws {
        let file = try String(contentsOfFile: try TestEnvironment.repositoryRoot() + "/schemas/talus-tool.schema.json", encoding: .utf8)
        #expect(file == ManifestSchema.text + "\n")
        _ = try JSONSchema(text: file)
    }

    @Test func verdictsMatchTheExamples() throws {
        for (text, valid) in Self.examples {
            let violations = ManifestSchema.schema.validate(try JSONValue.parse(Array(text.utf8)))
            #expect(violations.isEmpty == valid, "\(text): \(violations)")
        }
    }

    @Test func pythonJsonschemaAgreesOnEveryExample() async throws {
        let dir = try TestEnvironment.scratchDirectory("schema")
        let docs = "[" + Self.examples.map(\.0).joined(separator: ",") + "]"
        try docs.write(toFile: dir + "/examples.json", atomically: true, encoding: .utf8)
        let script = """
            import json, sys, jsonschema
            schema = json.load(open(sys.argv[1]))
            jsonschema.Draft202012Validator.check_schema(schema)
            v = jsonschema.Draft202012Validator(schema)
            print(json.dumps([v.is_valid(d) for d in json.load(open(sys.argv[2]))]))
            """
        let r = try await runCommand("python3", ["-c", script, try TestEnvironment.repositoryRoot() + "/schemas/talus-tool.schema.json",
                                                 dir + "/examples.json"])
        let python = try JSONDecoder().decode([Bool].self, from: Data(r.stdout.utf8))
        let swift = try Self.examples.map { ManifestSchema.schema.validate(try JSONValue.parse(Array($0.0.utf8))).isEmpty }
        #expect(python == swift)
        #expect(python == Self.examples.map(\.1))
    }

    @Test func theTemplateManifestsAreValid() throws {
        let root = try TestEnvironment.repositoryRoot() + "/code-template"
        for path in ["tools/hello", "tools/toyfuzz", "components/toytarget"] {
            let bytes = try #require(FileManager.default.contents(atPath: "\(root)/\(path)/talus-tool.json"))
            let kind: CodeDocument.Kind = path.hasPrefix("tools") ? .tool : .component
            let result = ManifestCheck.check(Array(bytes), file: path, kind: kind, directoryName: String(path.split(separator: "/")[1]))
            #expect(result.problems == [], "\(path)")
            #expect(result.manifest != nil)
        }
    }

    @Test func integersStayExactAndCompareAsNumbers() throws {
        #expect(try JSONValue.parse(Array("9007199254740993".utf8)) == .integer(9_007_199_254_740_993))
        #expect(try JSONValue.parse(Array("-12".utf8)) == .integer(-12))
        // Beyond 64 bits, or with a fraction or exponent: a Double.
        #expect(try JSONValue.parse(Array("18446744073709551616".utf8)) == .number(18446744073709551616))
        #expect(try JSONValue.parse(Array("5.0".utf8)) == .number(5))
        #expect(try JSONValue.parse(Array("5e0".utf8)).schemaType == "integer")
        // 5 and 5.0 are the same number (JSON Schema `enum`, `uniqueItems`).
        #expect(JSONValue.integer(5) == .number(5))
        #expect(try JSONValue.parse(Array(#"{"b": 1, "a": 2}"#.utf8)).text == #"{"b":1,"a":2}"#)
    }

    @Test func messagesSayWhereAndWhat() throws {
        func problems(_ text: String) -> [String] {
            ManifestCheck.check(Array(text.utf8), file: "tools/t/talus-tool.json", kind: .tool, directoryName: "t").problems.map(\.description)
        }
        #expect(problems("{\n  \"name\": \"t\",\n  \"name\": \"u\"\n}") == ["tools/t/talus-tool.json: not valid JSON: line 3, column 3: duplicate key \"name\""])
        #expect(problems("{\"name\": \"t\",}") == ["tools/t/talus-tool.json: not valid JSON: line 1, column 14: unexpected '}', expected a key in double quotes"])
        #expect(problems(#"{"name":"t","description":"d","params":[{"name":"n","type":"integer"}]}"#)
            == [#"tools/t/talus-tool.json: params[0].type: "integer" is not one of "string", "int", "float", "bool", "list", "object", "fileset", "component""#])
        #expect(problems(#"{"name":"Bad Name","description":"d"}"#)
            == [#"tools/t/talus-tool.json: name: "Bad Name" does not match ^[A-Za-z][A-Za-z0-9_-]{0,63}$ (letters, digits, _ and -, starting with a letter, at most 64 characters)"#])
        #expect(problems(#"{"description":"d","timeout":0}"#)
            == ["tools/t/talus-tool.json: (top level): missing required key \"name\"", "tools/t/talus-tool.json: timeout: must be at least 1 (got 0)"])
        // Past the schema, the model's checks: a tool needs an entry, the name its directory.
        #expect(problems(#"{"name":"u","description":"d"}"#) == [
            "tools/t/talus-tool.json: name \"u\" does not match its directory \"t\"",
            "tools/t/talus-tool.json: \"entry\" is required for a tool: the command to run, e.g. \"./run.sh\"",
        ])
    }

    @Test func unsupportedKeywordsAreRefusedWhenLoading() {
        #expect(throws: SchemaLoadError.self) { try JSONSchema(text: #"{"type":"object","patternProperties":{}}"#) }
        #expect(throws: SchemaLoadError.self) { try JSONSchema(text: ##"{"$ref":"#/$defs/missing"}"##) }
    }
}
