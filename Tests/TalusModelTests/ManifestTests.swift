import BSON
import Foundation
import Testing
@testable import TalusModel

@Suite struct ManifestTests {
    @Test func validManifestHasNoProblems() throws {
        let json = #"""
        {"name":"toyfuzz","description":"a toy fuzzer","entry":"./run.sh --fast",
         "params":[{"name":"iterations","type":"int","default":100,"description":"how many"},
                   {"name":"seed","type":"string","required":true}],
         "components":["common"],"timeout":60}
        """#
        let m = try JSONDecoder().decode(ToolManifest.self, from: Data(json.utf8))
        #expect(m.problems(kind: .tool, directoryName: "toyfuzz") == [])
        #expect(m.entryFile == "run.sh")
    }

    @Test func problemsAreSpecific() {
        let m = ToolManifest(name: "Bad Name", description: "", entry: nil,
                             params: [ToolParam(name: "n", type: .int, default: .string("x")), ToolParam(name: "n", type: .bool)],
                             timeout: 0)
        let problems = m.problems(kind: .tool, directoryName: "bad")
        #expect(problems.contains { $0.contains("not a valid name") })
        #expect(problems.contains { $0.contains("entry") })
        #expect(problems.contains { $0.contains("declared twice") })
        #expect(problems.contains { $0.contains("default must be of type int") })
        #expect(problems.contains { $0.contains("timeout") })
        let component = ToolManifest(name: "lib", description: "", entry: nil)
        #expect(component.problems(kind: .component, directoryName: "lib") == [])
        #expect(ToolManifest(name: "x", description: "", entry: "./r").problems(kind: .tool, directoryName: "y").count == 1)
    }

    @Test func paramsResolveOverDefaults() {
        let m = ToolManifest(name: "t", description: "", entry: "./r",
                             params: [ToolParam(name: "n", type: .int, default: .int64(5)),
                                      ToolParam(name: "seed", type: .string, required: true),
                                      ToolParam(name: "ratio", type: .float)])
        let ok = ParamCheck.resolve(["seed": "abc", "ratio": 2], against: m)
        #expect(ok.problems == [])
        #expect(ok.params["n"] == .int64(5))
        #expect(ok.params["seed"] == .string("abc"))
        let bad = ParamCheck.resolve(["n": "five", "extra": true], against: m)
        #expect(bad.problems.contains { $0.contains("unknown parameter \"extra\"") })
        #expect(bad.problems.contains { $0.contains("\"n\" must be of type int") })
        #expect(bad.problems.contains { $0.contains("\"seed\" is required") })
    }

    @Test func vmShapeBounds() {
        #expect(VMShape().problems() == [])
        #expect(VMShape(cpus: 0, memoryMB: 1, timeoutS: 1).problems().count == 3)
    }
}
