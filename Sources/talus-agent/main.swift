// talus-agent: the guest side of Talus (DESIGN §7). Started by the image's boot hook:
//   talus-agent --config /talus/cfg/config.json --port /dev/virtio-ports/org.talus.agent.0
#if canImport(Glibc)
import Glibc
#endif
import TalusAgent

var config = "/talus/cfg/config.json"
var port = "/dev/virtio-ports/org.talus.agent.0"
var work = "/run/talus"
var args = CommandLine.arguments.dropFirst()
while let arg = args.popFirst() {
    switch arg {
    case "--config": config = args.popFirst() ?? config
    case "--port": port = args.popFirst() ?? port
    case "--work": work = args.popFirst() ?? work
    case "--version": print(agentVersion); exit(0)
    default:
        let usage = "usage: talus-agent [--config FILE] [--port DEVICE|unix:PATH] [--work DIR]\n"
        _ = usage.withCString { write(2, $0, strlen($0)) }
        exit(64)
    }
}
exit(GuestAgent(options: AgentOptions(configPath: config, portPath: port, workRoot: work)).run())
