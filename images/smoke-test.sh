#!/usr/bin/env bash
# smoke-test.sh [--out DIR] [--no-swift]: boots the Talus test guest under libvirt in the four
# ways Talus uses it and checks the boot hook contract (images/README.md):
#   1. config ISO with run.sh            -> run.sh runs, exit code marker, guest powers off
#   2. config ISO with a static Swift agent (built here from the source below: only
#      FoundationEssentials + Glibc) -> length-prefixed JSON frames over org.talus.agent.0
#   3. no ISO, /talus/poweroff_after=3 written into a copy of the image -> powers off by itself
#   4. no ISO, poweroff-after 0 -> stays up until libvirt's ACPI shutdown
# Needs root, a running libvirtd (qemu:///system), genisoimage, python3; Swift for step 2.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/out"
swift=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --no-swift) swift=0; shift ;;
        *) echo "usage: $0 [--out DIR] [--no-swift]" >&2; exit 2 ;;
    esac
done
image=$("$here/build-test-guest.sh" --out "$out" | tail -n1)
work=$(mktemp -d /tmp/talus-guest-smoke.XXXXXX)
chmod 755 "$work"   # libvirt-qemu must reach the image copy in step 3
trap 'rm -rf "$work"' EXIT
boot() { "$here/boot-test-guest.py" "$@"; }
failed=0
step() { echo; echo "=== $*"; }

step "1. config ISO with run.sh"
mkdir -p "$work/cfg-run"
cat > "$work/cfg-run/run.sh" <<'EOF'
echo "RUNSH cfg=$TALUS_CFG port=$TALUS_PORT $(ls -l "$TALUS_PORT")"
exit 7
EOF
echo '{"job":"smoke","idx":0,"token":"t"}' > "$work/cfg-run/config.json"
boot "$image" --cfg "$work/cfg-run" --expect-shutoff \
    --expect 'RUNSH cfg=/talus/cfg port=/dev/virtio-ports/org.talus.agent.0 .*vport' \
    --expect 'TALUS-GUEST exit what=run.sh rc=7' || failed=1

if [ "$swift" = 1 ]; then
    step "2. config ISO with a static Swift agent"
    swiftbin=$(command -v swift || echo /opt/swift/usr/bin/swift)
    mkdir -p "$work/agent/Sources/agentproof" "$work/cfg-agent"
    cat > "$work/agent/Package.swift" <<'EOF'
// swift-tools-version: 5.9
import PackageDescription
let package = Package(name: "agentproof", targets: [.executableTarget(name: "agentproof")])
EOF
    cat > "$work/agent/Sources/agentproof/main.swift" <<'EOF'
// A statically linked agent using only FoundationEssentials (+ Glibc for the port's syscalls):
// decodes config.json, sends a length-prefixed JSON "hello", reads one frame, sends "finished".
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

struct Config: Codable { var job: String; var idx: Int; var token: String }
struct Frame: Codable { var type: String; var token: String?; var job: String?; var idx: Int?; var text: String? }

func now() -> Double { var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts); return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 }
func ms(_ s: Double) -> String { "\(Int((s * 1000).rounded()))ms" }
func fail(_ s: String) -> Never { print("AGENTPROOF-FAIL \(s)"); exit(3) }

var configPath = "", portPath = ""
var it = CommandLine.arguments.dropFirst().makeIterator()
while let a = it.next() {
    switch a {
    case "--config": configPath = it.next() ?? ""
    case "--port": portPath = it.next() ?? ""
    default: fail("unknown argument \(a)")
    }
}
let t0 = now()
guard let cfgData = try? Data(contentsOf: URL(fileURLWithPath: configPath)) else { fail("cannot read \(configPath)") }
let cfg: Config
do { cfg = try JSONDecoder().decode(Config.self, from: cfgData) } catch { fail("config: \(error)") }
print("AGENTPROOF config job=\(cfg.job) idx=\(cfg.idx) decode=\(ms(now() - t0))")
let fd = open(portPath, O_RDWR)
if fd < 0 { fail("open \(portPath) errno=\(errno)") }

func writeFrame(_ f: Frame) {
    let body = try! JSONEncoder().encode(f)
    var len = UInt32(body.count).bigEndian
    var out = Data(bytes: &len, count: 4); out.append(body)
    out.withUnsafeBytes { buf in
        var off = 0
        while off < buf.count {
            let n = write(fd, buf.baseAddress! + off, buf.count - off)
            if n < 0 { if errno == EINTR || errno == EAGAIN { usleep(10_000); continue }; fail("write errno=\(errno)") }
            off += n
        }
    }
}
// While no host is connected the port reads EOF at once: retry until the deadline.
func readExact(_ n: Int, deadline: Double) -> Data {
    var buf = [UInt8](repeating: 0, count: n); var got = 0
    while got < n {
        let r = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, n - got) }
        if r > 0 { got += r; continue }
        if now() > deadline { fail("read timeout (got \(got)/\(n))") }
        usleep(50_000)
    }
    return Data(buf)
}
func readFrame(deadline: Double) -> Frame {
    let h = readExact(4, deadline: deadline)
    let len = Int(h[0]) << 24 | Int(h[1]) << 16 | Int(h[2]) << 8 | Int(h[3])
    if len > 1 << 20 { fail("oversized frame \(len)") }
    do { return try JSONDecoder().decode(Frame.self, from: readExact(len, deadline: deadline)) } catch { fail("bad frame: \(error)") }
}

writeFrame(Frame(type: "hello", token: cfg.token, job: cfg.job, idx: cfg.idx, text: "static swift agent"))
print("AGENTPROOF sent hello t=\(ms(now() - t0))")
let reply = readFrame(deadline: now() + 30)
print("AGENTPROOF received type=\(reply.type) text=\(reply.text ?? "-") t=\(ms(now() - t0))")
writeFrame(Frame(type: "finished", token: cfg.token, job: cfg.job, idx: cfg.idx, text: "echo: \(reply.text ?? "")"))
close(fd)
print("AGENTPROOF done")
exit(reply.type == "ping" ? 0 : 4)
EOF
    (cd "$work/agent" && "$swiftbin" build -c release --static-swift-stdlib -Xswiftc -static-executable 2>&1 |
        grep -v 'requires at runtime the shared libraries\|better use .mkstemp' | tail -n 3)
    strip -o "$work/cfg-agent/talus-agent" "$work/agent/.build/release/agentproof"
    file "$work/cfg-agent/talus-agent" | sed 's/, BuildID[^,]*//'
    echo "stripped size: $(stat -c %s "$work/cfg-agent/talus-agent") bytes"
    echo '{"job":"smoke-job","idx":3,"token":"smoke-token"}' > "$work/cfg-agent/config.json"
    boot "$image" --cfg "$work/cfg-agent" --frames --expect-shutoff \
        --expect 'AGENTPROOF received type=ping' --expect 'TALUS-GUEST exit what=agent rc=0' || failed=1
fi

step "3. no ISO, /talus/poweroff_after=3 on the boot disk"
cp "$image" "$work/marker.qcow2"
"$here/set-poweroff-after.sh" "$work/marker.qcow2" 3
boot "$work/marker.qcow2" --expect-shutoff \
    --expect 'TALUS-GUEST poweroff-after=3 source=disk' --expect 'TALUS-GUEST poweroff reason=timer' || failed=1

step "4. no ISO, ACPI shutdown"
boot "$image" --acpi-shutdown --expect-shutoff --expect 'TALUS-GUEST poweroff reason=acpi' || failed=1

echo
[ "$failed" = 0 ] && echo "smoke-test: all passed" || echo "smoke-test: FAILED"
exit "$failed"
