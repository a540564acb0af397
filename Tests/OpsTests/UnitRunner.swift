// Starting a service the way its installed systemd unit says (ExecStart, User, Group,
// Environment, WorkingDirectory) on a machine where systemd is not running: the provisioning
// test starts every daemon exactly from what the scripts installed and wrote.

import Foundation
import TalusTestSupport

/// A service started from its unit file, stopped by pid.
final class UnitProcess: Sendable {
    let unit: String
    let process: TestProcess
    let notify: NotifyListener?

    /// Starts `unitPath` (e.g. `/etc/systemd/system/talus-api.service`). With `notify`, a
    /// `NOTIFY_SOCKET` the service's user may write to is passed, as systemd does for Type=notify.
    /// `runAsRoot` ignores the unit's User=/Group= (only for a dependency this machine cannot
    /// give the service's user; the caller says why).
    init(unitPath: String, notify: Bool, extraEnvironment: [String: String] = [:], runAsRoot: Bool = false) throws {
        unit = (unitPath as NSString).lastPathComponent
        let text = try String(contentsOfFile: unitPath, encoding: .utf8)
        var exec: [String] = [], user = "root", group: String?, env: [String: String] = [:], workdir: String?
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.hasPrefix("#"), let eq = line.firstIndex(of: "=") else { continue }
            let key = String(line[..<eq]), value = String(line[line.index(after: eq)...])
            switch key {
            case "ExecStart": exec = value.split(separator: " ").map(String.init)
            case "User": user = value
            case "Group": group = value
            case "WorkingDirectory": workdir = value
            case "Environment":
                for pair in value.split(separator: " ") {
                    let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
                    if kv.count == 2 { env[kv[0]] = kv[1] }
                }
            default: break
            }
        }
        guard !exec.isEmpty else { throw TestSupportError("\(unitPath) has no ExecStart") }
        let dir = try TestEnvironment.scratchDirectory(unit)
        var listener: NotifyListener?
        if notify {
            let l = try NotifyListener(directory: dir)
            chmod(l.path, 0o777)  // like /run/systemd/notify: any service user may send
            env["NOTIFY_SOCKET"] = l.path
            listener = l
        }
        self.notify = listener
        env.merge(extraEnvironment) { $1 }
        // setpriv: the unit's user, its group and the user's supplementary groups (what systemd
        // does with User=/Group=), a clean environment, then the unit's Environment=.
        if runAsRoot { user = "root"; group = "root" }
        let primary = group ?? user
        var args = ["--reuid", user, "--regid", primary, "--init-groups", "--reset-env", "/usr/bin/env"]
        args += env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        if let workdir { args += ["/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", workdir] }
        args += exec
        process = try TestProcess("/usr/bin/setpriv", args, logPath: dir + "/output.log")
    }

    var pid: Int32 { process.pid }

    /// Waits for READY=1 (Type=notify), failing early if the process exits.
    func waitReady(timeout: Duration = .seconds(120)) async throws {
        guard let notify else { return }
        let p = process, unit = self.unit
        try await waitUntil("\(unit) to send READY=1", timeout: timeout, interval: .milliseconds(20)) {
            guard p.isRunning || notify.has("READY=1") else {
                throw TestSupportError("\(unit) exited (\(p.process.terminationStatus)):\n\(p.logTail(3000))")
            }
            return notify.has("READY=1")
        }
    }

    func stop() async {
        await process.stop(timeout: .seconds(60))
        notify?.close()
    }
}

/// Runs `command` as `user` (primary group `group`, plus the user's groups) and returns its
/// exit status and output.
func runAs(_ user: String, group: String, _ command: [String], environment: [String: String] = [:],
           timeout: Duration = .seconds(120)) async throws -> (status: Int32, output: String) {
    var args = ["--reuid", user, "--regid", group, "--init-groups", "--reset-env", "/usr/bin/env"]
    args += environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    return try await runScript("/usr/bin/setpriv", args + command, timeout: timeout)
}
