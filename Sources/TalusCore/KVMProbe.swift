// Whether KVM guests actually run on this host. `/dev/kvm` existing (and libvirt reporting KVM)
// is not enough: on some nested or restricted hosts a KVM guest starts and then hangs in the
// firmware. The probe boots the emulator's firmware with no disk under KVM and asks it to
// give up at once; a usable KVM gets there in well under a second.

/// The outcome of ``probeKVM(emulator:timeout:)``.
public struct KVMProbeResult: Sendable, Equatable, CustomStringConvertible {
    /// True when a KVM guest reached the firmware's "no bootable device" point in time.
    public let usable: Bool
    /// What was seen, for the log line that explains the choice.
    public let reason: String
    /// How long the probe took.
    public let elapsed: Duration

    public var description: String { (usable ? "KVM usable: " : "KVM not usable: ") + reason }
}

/// Boots `emulator` (a `qemu-system-*` binary) under `-accel kvm` with no disk, 16 MiB and the
/// SeaBIOS debug console on stdout, with `reboot-timeout=0` and `-no-reboot` so that the firmware
/// gives up on booting and QEMU exits by itself. KVM is usable when that happens within
/// `timeout` and the firmware printed `No bootable device`. Takes about 0.3 s where KVM works
/// and `timeout` where a KVM guest hangs.
public func probeKVM(emulator: String = "qemu-system-x86_64", timeout: Duration = .seconds(5)) async -> KVMProbeResult {
    let clock = ContinuousClock()
    let start = clock.now
    let arguments = [
        "-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-boot", "reboot-timeout=0", "-chardev", "stdio,id=talusprobe",
        "-device", "isa-debugcon,iobase=0x402,chardev=talusprobe",
    ]
    do {
        let result = try await runCommand(emulator, arguments, timeout: timeout, check: false, outputLimit: 1 << 20)
        let elapsed = clock.now - start
        let output = result.stdout + result.stderr
        if result.status == 0 && output.contains("No bootable device") {
            return KVMProbeResult(usable: true, reason: "a KVM test boot reached the firmware's boot menu in \(elapsed)", elapsed: elapsed)
        }
        let tail = output.split(separator: "\n").suffix(2).joined(separator: " / ")
        return KVMProbeResult(
            usable: false, reason: "\(emulator) -accel kvm exited with status \(result.status): \(tail)", elapsed: elapsed)
    } catch let error as CommandError where error.timedOut {
        return KVMProbeResult(
            usable: false, reason: "a KVM test boot did not reach the firmware's boot menu within \(timeout) (the guest hangs)",
            elapsed: clock.now - start)
    } catch {
        return KVMProbeResult(usable: false, reason: "\(emulator) could not run: \(error)", elapsed: clock.now - start)
    }
}
