#!/usr/bin/env python3
"""Boots a Talus test guest image once under libvirt, the way a Talus slave does, and reports
what happened: serial markers with their times, the agent channel exchange, the shutdown.

    images/boot-test-guest.py IMAGE [--cfg DIR | --iso FILE] [--frames] [--acpi-shutdown]
                                    [--expect REGEX]... [--expect-shutoff] [--timeout S]

IMAGE stays untouched: the domain runs on a qcow2 overlay in a fresh run directory, with
  - the config ISO (label TALUSCFG, built from --cfg DIR) as an IDE CD-ROM (hdc),
  - a virtio-serial channel org.talus.agent.0 bound to RUN/agent.sock,
  - the serial console in RUN/serial.log, virtio-rng, VNC on 127.0.0.1 with a random password.
The domain is transient (virsh create): it disappears when the guest powers off, and it is
destroyed on timeout or error. Needs root (qemu:///system) and a running libvirtd.

--frames      act as the host side of the proof agent's protocol: read a length-prefixed JSON
              "hello" frame (4-byte big-endian length, then JSON), answer {"type": "ping"}, and
              expect a "finished" frame.
--acpi-shutdown  once the guest prints "TALUS-GUEST ready", ask libvirt for a shutdown (the ACPI
              power button, virDomainShutdown) and expect the guest to power off.
--expect REGEX   a regular expression that must match a line of the serial log (repeatable).
--expect-shutoff the guest must power off by itself (or via --acpi-shutdown) before the timeout.
Exit status 0 when every expectation held. Prints a timeline (seconds since `virsh create`).
"""
import argparse
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

URI = "qemu:///system"
HERE = os.path.dirname(os.path.abspath(__file__))


def virsh(*args, check=True):
    r = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"virsh {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def domain_xml(name, run, with_iso, vnc_password, machine, disk_bus):
    disk_dev = {"virtio": "vda", "sata": "sda", "ide": "hda"}[disk_bus]
    cd_target = "<target dev='hdc' bus='ide'/>" if machine == "pc" else "<target dev='sdb' bus='sata'/>"
    iso = f"""
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{run}/config.iso'/>
      {cd_target}
      <readonly/>
    </disk>""" if with_iso else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{run}/overlay.qcow2'/>
      <target dev='{disk_dev}' bus='{disk_bus}'/>
    </disk>{iso}
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>
      <source mode='bind' path='{run}/agent.sock'/>
      <target type='virtio' name='org.talus.agent.0'/>
    </channel>
    <serial type='file'><source path='{run}/serial.log'/><target port='0'/></serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='{vnc_password}'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Timeline:
    def __init__(self):
        self.t0 = time.monotonic()
        self.events = []
        self.lock = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def add(self, what):
        with self.lock:
            t = self.now()
            self.events.append((t, what))
            print(f"{t:7.2f}  {what}", flush=True)


def host_side_frames(sock_path, token, tl, result, deadline):
    """The host end of the proof agent's channel protocol."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            s.connect(sock_path)
            break
        except OSError:
            if time.monotonic() > deadline:
                result["error"] = "could not connect to the channel socket"
                return
            time.sleep(0.1)
    tl.add("host: connected to agent.sock")
    s.settimeout(max(1.0, deadline - time.monotonic()))

    def read_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("channel closed")
            buf += chunk
        return buf

    def read_frame():
        (length,) = struct.unpack(">I", read_exact(4))
        if length > 1 << 20:
            raise ValueError(f"oversized frame {length}")
        return json.loads(read_exact(length))

    try:
        hello = read_frame()
        tl.add(f"host: got frame {json.dumps(hello, sort_keys=True)}")
        if hello.get("type") != "hello" or hello.get("token") != token:
            result["error"] = "first frame is not a hello with the right token"
            return
        body = json.dumps({"type": "ping", "text": "hello from the host"}).encode()
        s.sendall(struct.pack(">I", len(body)) + body)
        tl.add("host: sent ping frame")
        fin = read_frame()
        tl.add(f"host: got frame {json.dumps(fin, sort_keys=True)}")
        result["ok"] = fin.get("type") == "finished"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--cfg", help="directory to turn into the TALUSCFG config ISO")
    g.add_argument("--iso", help="a ready config ISO")
    ap.add_argument("--frames", action="store_true")
    ap.add_argument("--acpi-shutdown", action="store_true")
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--expect-shutoff", action="store_true")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--machine", choices=["pc", "q35"], default="pc")
    ap.add_argument("--disk-bus", choices=["virtio", "sata", "ide"], default="virtio")
    ap.add_argument("--name", default=f"talus-guest-smoke-{os.getpid()}")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    a = ap.parse_args()

    image = os.path.abspath(a.image)
    run = tempfile.mkdtemp(prefix="talus-guest-run.")
    os.chmod(run, 0o755)
    tl = Timeline()
    ok = True
    events_proc = None
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F",
                        "qcow2" if image.endswith(".qcow2") else "raw", f"{run}/overlay.qcow2"],
                       check=True)
        token = None
        with_iso = bool(a.cfg or a.iso)
        if a.cfg:
            subprocess.run([os.path.join(HERE, "make-config-iso.sh"), a.cfg, f"{run}/config.iso"],
                           check=True)
            try:
                with open(os.path.join(a.cfg, "config.json")) as f:
                    token = json.load(f).get("token")
            except (OSError, ValueError):
                token = None
        elif a.iso:
            shutil.copy(a.iso, f"{run}/config.iso")
        vnc_password = secrets.token_hex(4)  # VNC passwords are at most 8 characters
        with open(f"{run}/domain.xml", "w") as f:
            f.write(domain_xml(a.name, run, with_iso, vnc_password, a.machine, a.disk_bus))

        tl = Timeline()  # t = 0 at `virsh create`
        virsh("create", f"{run}/domain.xml")
        tl.add(f"virsh create {a.name} returned")
        events_proc = subprocess.Popen(
            ["virsh", "-c", URI, "event", "--domain", a.name, "--event", "lifecycle", "--loop"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lifecycle = []

        def read_events():
            for line in events_proc.stdout:
                line = line.strip()
                if line:
                    lifecycle.append(line)
                    tl.add(f"libvirt: {line}")
        threading.Thread(target=read_events, daemon=True).start()

        port = virsh("vncdisplay", a.name, check=False).stdout.strip()
        if port:
            try:
                host, disp = port.rsplit(":", 1)
                with socket.create_connection((host or "127.0.0.1", 5900 + int(disp)), timeout=5) as vs:
                    tl.add(f"vnc {port}: {vs.recv(12)!r}")
            except OSError as e:
                tl.add(f"vnc {port}: {e}")

        deadline = time.monotonic() + a.timeout
        frames = {}
        if a.frames:
            threading.Thread(target=host_side_frames,
                             args=(f"{run}/agent.sock", token, tl, frames, deadline),
                             daemon=True).start()

        seen_lines = []
        pending = b""
        offset = 0
        shutdown_sent = False
        gone_at = None
        while time.monotonic() < deadline:
            try:
                with open(f"{run}/serial.log", "rb") as f:
                    f.seek(offset)
                    data = f.read()
                    offset += len(data)
            except OSError:
                data = b""
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                seen_lines.append(line)
                if "TALUS-GUEST" in line or "AGENTPROOF" in line or "RUNSH" in line or "reboot:" in line:
                    tl.add(f"serial: {line.strip()}")
                if a.acpi_shutdown and not shutdown_sent and "TALUS-GUEST ready" in line:
                    time.sleep(1)
                    virsh("shutdown", a.name)
                    shutdown_sent = True
                    tl.add("virsh shutdown (ACPI power button) sent")
            state = virsh("domstate", a.name, check=False)
            if state.returncode != 0 or state.stdout.strip() == "shut off":
                gone_at = tl.now()
                tl.add("domain shut off (transient domain gone)")
                break
            time.sleep(0.1)
        time.sleep(0.3)  # let the event reader and frame thread report

        if gone_at is None:
            tl.add(f"timeout after {a.timeout:.0f} s")
            if a.expect_shutoff:
                ok = False
        if a.expect_shutoff and gone_at is not None and not any("Shutdown" in ev for ev in lifecycle):
            tl.add("warning: no 'Stopped Shutdown' lifecycle event seen")
        for rx in a.expect:
            if not any(re.search(rx, line) for line in seen_lines):
                tl.add(f"EXPECTATION FAILED: no serial line matches {rx!r}")
                ok = False
        if a.frames and not frames.get("ok"):
            tl.add(f"EXPECTATION FAILED: frame exchange: {frames.get('error', 'incomplete')}")
            ok = False
    finally:
        if virsh("domstate", a.name, check=False).returncode == 0:
            virsh("destroy", a.name, check=False)
            virsh("undefine", a.name, check=False)  # only matters if it was made persistent
        if events_proc:
            events_proc.terminate()
            events_proc.wait()
        if a.keep:
            print(f"run directory kept: {run}")
        else:
            shutil.rmtree(run, ignore_errors=True)
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
