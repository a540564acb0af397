// talus-bench image import|create: the master's image reconciler against the plain tools, in
// the same run, on the same files.
//
// import: a 1 GiB raw disk (the test guest, padded with random data) is imported through the
//   real reconciler, libvirtd and QEMU. Measured: time from the `import` request to `ready`,
//   minus the guest's own runtime (from libvirt's `started` to its `stopped` event), next to
//   `qemu-img convert -f raw -O qcow2` + `sha256sum` of the same file. Target: ≤ 1.3×.
// create: non-interactive `create` of a child image, from the request to `ready`, calling
//   `reconcile` directly (no change-stream latency). Target: < 100 ms.

import ArgumentParser
import BSON
import Foundation
import Libvirt
import Logging
import Mongo
import Synchronization
import TalusCore
import TalusMaster
import TalusModel

struct ImageBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Image import and create through the master's reconciler vs. the plain tools.",
        subcommands: [ImageImportBench.self, ImageCreateBench.self])
}

/// Options every image benchmark needs.
struct ImageBenchOptions: ParsableArguments {
    @Option(help: "MongoDB URI (default: $TALUS_TEST_MONGO_URI).")
    var mongo: String?

    @Option(help: "libvirt URI (default: $TALUS_TEST_LIBVIRT_URI, else qemu:///system).")
    var libvirt: String?

    @Option(help: "Scratch directory (default: $TALUS_TEST_RUN_DIR/bench, else /tmp/talus-bench). Must be reachable by the QEMU user.")
    var directory: String?

    @Option(help: "libvirt.domain_type for the VMs (auto, kvm, qemu).")
    var domainType = "auto"

    @Flag(help: "Print the results as JSON.")
    var json = false

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    func mongoURI() throws -> String {
        guard let uri = mongo ?? environment["TALUS_TEST_MONGO_URI"] else {
            throw ValidationError("no MongoDB: pass --mongo or source the dev env.sh (TALUS_TEST_MONGO_URI)")
        }
        return uri
    }

    var libvirtURI: String { libvirt ?? environment["TALUS_TEST_LIBVIRT_URI"] ?? "qemu:///system" }

    /// A fresh scratch directory (mode 0755 so that QEMU reaches it).
    func scratch(_ name: String) throws -> String {
        let base = directory ?? environment["TALUS_TEST_RUN_DIR"].map { $0 + "/bench" } ?? "/tmp/talus-bench"
        let path = base + "/\(name)-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(
            atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        return path
    }

    /// The repository root, for images/build-test-guest.sh.
    static func repositoryRoot() throws -> String {
        var dir = URL(fileURLWithPath: #filePath)
        while dir.path != "/" {
            dir = dir.deletingLastPathComponent()
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("images/build-test-guest.sh").path) {
                return dir.path
            }
        }
        let cwd = FileManager.default.currentDirectoryPath
        if FileManager.default.fileExists(atPath: cwd + "/images/build-test-guest.sh") { return cwd }
        throw ValidationError("cannot find images/build-test-guest.sh: run from the repository")
    }

    /// The test guest in `format`, built or cached by the script.
    static func testGuest(format: String) async throws -> String {
        let root = try repositoryRoot()
        let out = try await runCommand(root + "/images/build-test-guest.sh", ["--format", format], timeout: .seconds(600))
        guard let path = out.stdout.split(separator: "\n").last.map(String.init) else {
            throw ValidationError("build-test-guest.sh printed no path")
        }
        return path
    }
}

/// A database, store and reconciler for one benchmark; `close()` removes them.
struct ImageBenchWorld {
    let client: MongoClient
    let database: MongoDatabase
    let directory: String
    let config: ImageConfig
    let reconciler: ImageReconciler
    let images: MongoCollection<ImageDocument>
    let uploads: MongoCollection<UploadDocument>
    let hints: HintBox

    init(_ options: ImageBenchOptions, name: String, settings: [String: String] = [:]) throws {
        client = try MongoClient(uri: try options.mongoURI(), logger: Logger(label: "bench.mongo"))
        database = client.database("bench_images_\(UInt32.random(in: 0...UInt32.max))")
        directory = try options.scratch(name)
        try FileManager.default.createDirectory(atPath: directory + "/uploads", withIntermediateDirectories: true)
        var values = [
            "images.store": directory + "/store", "storage.uploads": directory + "/uploads", "libvirt.uri": options.libvirtURI,
            "libvirt.domain_type": options.domainType, "images.vm_memory_mb": "256", "images.vm_cpus": "1",
        ]
        values.merge(settings) { $1 }
        config = try ImageConfig(values: values)
        var logger = Logger(label: "bench.images")
        logger.logLevel = .warning
        reconciler = ImageReconciler(database: database, config: config, logger: logger)
        images = database.collection("images", as: ImageDocument.self)
        uploads = database.collection("uploads", as: UploadDocument.self)
        hints = HintBox(reconciler.hints)
    }

    func close() async {
        await reconciler.shutdown()
        try? await database.drop()
        await client.close()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Reconciles one image until `reconcile` says `.done`, waking on hints for it or after the
/// requested delay (what the master's work queue does for one document).
func driveToDone(_ reconciler: ImageReconciler, _ id: ObjectId, hints: HintBox) async throws {
    while true {
        switch try await reconciler.reconcile(id) {
        case .done: return
        case .requeue(let after): await hints.wait(for: id, upTo: after)
        }
    }
}

/// Collects hints so that a waiting driver wakes as soon as its image is named.
final class HintBox: Sendable {
    private let pending = Mutex<Set<ObjectId>>([])

    init(_ stream: AsyncStream<ObjectId>) {
        Task {
            for await id in stream { self.add(id) }
        }
    }

    private func add(_ id: ObjectId) { _ = pending.withLock { $0.insert(id) } }

    /// Returns once `id` was hinted or `limit` passed.
    func wait(for id: ObjectId, upTo limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if pending.withLock({ $0.remove(id) != nil }) { return }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }
}

struct ImageImportBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import of a 1 GiB disk: request → ready minus the guest's runtime, vs. qemu-img convert + sha256sum.")

    @OptionGroup var options: ImageBenchOptions

    @Option(help: "Disk size in MiB (the test guest padded with random data).")
    var sizeMiB = 1024

    @Option(help: "Runs of each side; the median is reported.")
    var runs = 3

    mutating func run() async throws {
        let world = try ImageBenchWorld(options, name: "import")
        _ = try await world.reconciler.resolveDomainType()  // the KVM probe is not part of an import
        let disk = world.directory + "/disk.raw"
        try await makeDisk(disk)
        var reference: [Duration] = []
        var openssl: [Duration] = []
        var ours: [Duration] = []
        var totals: [Duration] = []
        var guests: [Duration] = []
        let events = try await LibvirtConnection(uri: options.libvirtURI).lifecycleEvents()
        let timeline = DomainTimeline(events)
        for run in 1...runs {
            reference.append(try await referenceRun(disk, scratch: world.directory, hasher: ["sha256sum"]))
            openssl.append(try await referenceRun(disk, scratch: world.directory, hasher: ["openssl", "dgst", "-sha256"]))
            let (total, guest) = try await importRun(world, disk: disk, timeline: timeline, run: run)
            totals.append(total)
            guests.append(guest)
            ours.append(total - guest)
        }
        let ratio = median(ours).secondsDouble / median(reference).secondsDouble
        let opensslRatio = median(ours).secondsDouble / median(openssl).secondsDouble
        let result: [String: Any] = [
            "size_mib": sizeMiB, "runs": runs,
            "reference_s": reference.map(\.secondsDouble), "reference_openssl_s": openssl.map(\.secondsDouble),
            "ours_s": ours.map(\.secondsDouble), "ratio_openssl": opensslRatio,
            "total_s": totals.map(\.secondsDouble), "guest_s": guests.map(\.secondsDouble),
            "reference_median_s": median(reference).secondsDouble, "ours_median_s": median(ours).secondsDouble,
            "ratio": ratio, "target_ratio": 1.3,
        ]
        if options.json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print("image import, \(sizeMiB) MiB raw disk, \(runs) runs (median)")
            print(String(format: "  qemu-img convert + sha256sum:            %7.2f s   %@", median(reference).secondsDouble, Self.list(reference)))
            print(String(format: "  qemu-img convert + openssl dgst -sha256: %7.2f s   %@", median(openssl).secondsDouble, Self.list(openssl)))
            print(String(format: "  import → ready minus guest runtime:      %7.2f s   %@", median(ours).secondsDouble, Self.list(ours)))
            print(String(format: "    (import → ready %@, guest runtime %@)", Self.list(totals), Self.list(guests)))
            print(String(format: "  ratio ours / reference:                  %7.2f     (target ≤ 1.30; %.2f against the openssl row)", ratio, opensslRatio))
        }
        await world.close()
    }

    /// The test guest (raw, powering off 1 s after it is up), padded to the size with random data
    /// (incompressible, no zero clusters: convert and hash do all the work).
    func makeDisk(_ path: String) async throws {
        let guest = try await ImageBenchOptions.testGuest(format: "raw")
        try FileManager.default.copyItem(atPath: guest, toPath: path)
        let root = try ImageBenchOptions.repositoryRoot()
        try await runCommand(root + "/images/set-poweroff-after.sh", [path, "1"])
        let guestBytes = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
        let startMiB = (guestBytes + (1 << 20) - 1) >> 20
        guard sizeMiB > startMiB else { throw ValidationError("--size-mib must be larger than the guest (\(startMiB) MiB)") }
        try await runCommand(
            "dd", ["if=/dev/urandom", "of=\(path)", "bs=1M", "seek=\(startMiB)", "count=\(sizeMiB - startMiB)", "conv=notrunc", "status=none"],
            timeout: .seconds(1800))
    }

    /// `qemu-img convert` of the disk to qcow2, then `hasher` on the result.
    func referenceRun(_ disk: String, scratch: String, hasher: [String]) async throws -> Duration {
        let target = scratch + "/reference.qcow2"
        try? FileManager.default.removeItem(atPath: target)
        let clock = ContinuousClock()
        let start = clock.now
        try await runCommand("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", disk, target], timeout: .seconds(1800))
        try await runCommand(hasher[0], Array(hasher.dropFirst()) + [target], timeout: .seconds(1800))
        let elapsed = clock.now - start
        try FileManager.default.removeItem(atPath: target)
        return elapsed
    }

    func importRun(_ world: ImageBenchWorld, disk: String, timeline: DomainTimeline, run: Int) async throws -> (Duration, Duration) {
        let relative = "run\(run)/disk.raw"
        try FileManager.default.createDirectory(atPath: world.directory + "/uploads/run\(run)", withIntermediateDirectories: true)
        // A hard link: the upload is "already on disk", as the API leaves it.
        try FileManager.default.linkItem(atPath: disk, toPath: world.directory + "/uploads/" + relative)
        let upload = UploadDocument(filename: "disk.raw", path: relative, size: Int64(sizeMiB) << 20, complete: true,
                                    expires: Date().addingTimeInterval(3600))
        _ = try await world.uploads.insertOne(upload)
        let image = ImageDocument(name: "bench-\(run)-\(UInt32.random(in: 0...UInt32.max))", os: ObjectId(),
                                  request: ImageRequest(upload: upload.id), status: ImageStatus(.import))
        let clock = ContinuousClock()
        let start = clock.now
        _ = try await world.images.insertOne(image)
        try await driveToDone(world.reconciler, image.id, hints: world.hints)
        let total = clock.now - start
        guard let doc = try await world.images.findOne(["_id": .objectId(image.id)]), doc.status.name == .ready else {
            throw ValidationError("the import did not become ready")
        }
        guard let guest = timeline.runtime(of: "talus-image-\(image.id.hex)") else {
            throw ValidationError("no started/stopped events seen for the import VM")
        }
        return (total, guest)
    }

    func median(_ values: [Duration]) -> Duration { values.sorted()[values.count / 2] }
    static func list(_ values: [Duration]) -> String { values.map { String(format: "%.2f", $0.secondsDouble) }.joined(separator: " ") }
}

/// When each domain was started and stopped, from libvirt's lifecycle events.
final class DomainTimeline: Sendable {
    private let times = Mutex<[String: (started: ContinuousClock.Instant?, stopped: ContinuousClock.Instant?)]>([:])

    init(_ events: DomainLifecycleEvents) {
        Task {
            for await event in events { self.record(event) }
        }
    }

    private func record(_ event: DomainLifecycleEvent) {
        let now = ContinuousClock.now
        times.withLock { t in
            var entry = t[event.domainName] ?? (nil, nil)
            if case .started = event.kind { entry.started = now }
            if case .stopped = event.kind { entry.stopped = now }
            t[event.domainName] = entry
        }
    }

    /// From `started` to `stopped` of the domain.
    func runtime(of name: String) -> Duration? {
        times.withLock { t in
            guard let started = t[name]?.started, let stopped = t[name]?.stopped else { return nil }
            return stopped - started
        }
    }
}

struct ImageCreateBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Non-interactive create of a child image: request → ready, calling reconcile directly (target < 100 ms).")

    @OptionGroup var options: ImageBenchOptions

    @Option(help: "Children to create.")
    var count = 30

    mutating func run() async throws {
        let world = try ImageBenchWorld(options, name: "create")
        let guest = try await ImageBenchOptions.testGuest(format: "qcow2")
        let base = ObjectId()
        try FileManager.default.createDirectory(atPath: world.config.store, withIntermediateDirectories: true)
        let basePath = world.config.store + "/\(base.hex).qcow2"
        try FileManager.default.copyItem(atPath: guest, toPath: basePath)
        let (hex, size) = try sha256OfFile(basePath)
        _ = try await world.images.insertOne(ImageDocument(
            id: base, name: "bench-base-\(base.hex)", os: ObjectId(), file: ImageFile(path: "\(base.hex).qcow2", sha256: hex, size: size),
            status: ImageStatus(.ready)))
        _ = try await world.reconciler.pending()  // the start-up sweep, once
        var times: [Duration] = []
        let clock = ContinuousClock()
        for i in 0..<count {
            let child = ImageDocument(name: "bench-child-\(i)-\(base.hex)", os: ObjectId(), base: base,
                                      request: ImageRequest(interactive: false), status: ImageStatus(.create))
            _ = try await world.images.insertOne(child)
            let start = clock.now  // the request is in the database: the master's part starts
            try await driveToDone(world.reconciler, child.id, hints: world.hints)
            times.append(clock.now - start)
            guard try await world.images.findOne(["_id": .objectId(child.id)])?.status.name == .ready else {
                throw ValidationError("child \(i) is not ready")
            }
        }
        // In the same run, for scale: the one process the create needs, alone.
        var tool: [Duration] = []
        for i in 0..<count {
            let start = clock.now
            try await runCommand(
                "qemu-img", ["create", "-q", "-f", "qcow2", "-b", "\(base.hex).qcow2", "-F", "qcow2", "ref-\(i).qcow2"],
                workingDirectory: world.config.store)
            tool.append(clock.now - start)
        }
        // And one status write to the database, as the create does once.
        var writes: [Duration] = []
        for _ in 0..<count {
            let start = clock.now
            _ = try await world.images.updateOne(["_id": .objectId(base)], ["$set": ["updated": .datetime(Date())]])
            writes.append(clock.now - start)
        }
        let ms = { (d: Duration) in d.secondsDouble * 1000 }
        func percentiles(_ values: [Duration]) -> (Double, Double, Double) {
            let sorted = values.sorted()
            return (ms(sorted[sorted.count / 2]), ms(sorted[min(sorted.count - 1, sorted.count * 9 / 10)]), ms(sorted.last!))
        }
        let (p50, p90, worst) = percentiles(times)
        let (t50, t90, tmax) = percentiles(tool)
        let (w50, w90, wmax) = percentiles(writes)
        if options.json {
            let result: [String: Any] = [
                "count": count, "p50_ms": p50, "p90_ms": p90, "max_ms": worst, "target_ms": 100,
                "qemu_img_create_p50_ms": t50, "qemu_img_create_p90_ms": t90,
                "db_update_p50_ms": w50, "db_update_p90_ms": w90,
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print("image create (non-interactive child), \(count) children")
            print(String(format: "  request → ready:            p50 %6.1f ms, p90 %6.1f ms, max %6.1f ms   (target < 100 ms)", p50, p90, worst))
            print(String(format: "  qemu-img create alone:      p50 %6.1f ms, p90 %6.1f ms, max %6.1f ms", t50, t90, tmax))
            print(String(format: "  one MongoDB update alone:   p50 %6.1f ms, p90 %6.1f ms, max %6.1f ms", w50, w90, wmax))
        }
        await world.close()
    }
}
