// Helpers for the image tests: a world of its own per test (database, image store, upload
// directory, reconciler driven by a miniature work queue), the real test guest from
// images/build-test-guest.sh, and cleanup that runs whether the test passes or not.

import BSON
import Foundation
import Libvirt
import Logging
import Mongo
import Synchronization
import TalusCore
import TalusMaster
import TalusModel
import TalusTestSupport
import Testing

// MARK: The test guest

/// The test guest (built once, cached by the script) and copies of it with a power-off delay.
enum TestGuest {
    /// Builds (or finds cached) the guest in `format` and returns its path.
    static func built(format: String = "qcow2") async throws -> String {
        let root = try TestEnvironment.repositoryRoot()
        let result = try await runCommand(root + "/images/build-test-guest.sh", ["--format", format], timeout: .seconds(600))
        guard let path = result.stdout.split(separator: "\n").last.map(String.init), FileManager.default.fileExists(atPath: path) else {
            throw TestSupportError("build-test-guest.sh printed no image path: \(result.stderr.suffix(500))")
        }
        return path
    }

    /// A copy of the guest at `path` that powers itself off `seconds` after it is up when booted
    /// without a config ISO (0 = never).
    static func copy(format: String = "qcow2", poweroffAfter seconds: Int, to path: String) async throws {
        let source = try await built(format: format)
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: source, toPath: path)
        let root = try TestEnvironment.repositoryRoot()
        try await runCommand(root + "/images/set-poweroff-after.sh", [path, String(seconds)], timeout: .seconds(120))
    }
}

// MARK: A world per test

/// One test's database, directories, reconciler and driver. `close()` removes everything,
/// including the VMs of the images the test created.
final class ImageWorld: Sendable {
    let client: MongoClient
    let database: MongoDatabase
    let directory: String
    let storeDirectory: String
    let uploadsDirectory: String
    let config: ImageConfig
    let images: MongoCollection<ImageDocument>
    let uploads: MongoCollection<UploadDocument>
    let jobs: MongoCollection<JobDocument>
    let libvirt: LibvirtConnection
    private let state = Mutex<(reconciler: ImageReconciler, driver: ReconcileDriver)?>(nil)
    private let ids = Mutex<Set<ObjectId>>([])

    /// - Parameter settings: config keys over the test defaults (qemu domains, 256 MiB, 1 vCPU).
    init(_ name: String, settings: [String: String] = [:]) async throws {
        client = try MongoClient(uri: try TestEnvironment.mongoURI(), logger: Logger(label: "test.mongo"))
        database = client.database(uniqueName("img-" + name))
        directory = try TestEnvironment.scratchDirectory("images-" + name)
        storeDirectory = directory + "/store"
        uploadsDirectory = directory + "/uploads"
        try FileManager.default.createDirectory(atPath: uploadsDirectory, withIntermediateDirectories: true)
        var values: [String: String] = [
            "images.store": storeDirectory, "storage.uploads": uploadsDirectory,
            "libvirt.uri": try TestEnvironment.libvirtURI(), "libvirt.domain_type": "qemu",
            "images.vm_memory_mb": "256", "images.vm_cpus": "1",
        ]
        values.merge(settings) { $1 }
        config = try ImageConfig(values: values)
        images = database.collection("images", as: ImageDocument.self)
        uploads = database.collection("uploads", as: UploadDocument.self)
        jobs = database.collection("jobs", as: JobDocument.self)
        libvirt = try await LibvirtConnection(uri: try TestEnvironment.libvirtURI())
        startMaster()
    }

    /// A fresh reconciler and driver ("the master starts"): every pending image is enqueued.
    @discardableResult
    func startMaster() -> ImageReconciler {
        var logger = Logger(label: "test.images")
        logger.logLevel = ProcessInfo.processInfo.environment["TALUS_TEST_LOG"] == "debug" ? .debug : .info
        let reconciler = ImageReconciler(database: database, config: config, pollInterval: .seconds(5), logger: logger)
        let driver = ReconcileDriver(reconciler)
        state.withLock { $0 = (reconciler, driver) }
        Task {
            for id in (try? await reconciler.pending()) ?? [] { driver.enqueue(id) }
        }
        return reconciler
    }

    /// "The master dies": the driver stops, background steps are cancelled and the libvirt
    /// connection closes. VMs keep running, as they would.
    func killMaster() async {
        guard let (reconciler, driver) = state.withLock({ s -> (ImageReconciler, ReconcileDriver)? in
            defer { s = nil }
            return s.map { ($0.reconciler, $0.driver) }
        }) else { return }
        await driver.stop()
        await reconciler.shutdown()
    }

    var reconciler: ImageReconciler? { state.withLock { $0?.reconciler } }
    var driver: ReconcileDriver? { state.withLock { $0?.driver } }

    /// Inserts an image document and hands it to the driver (as a change event would).
    func insert(_ image: ImageDocument) async throws {
        _ = ids.withLock { $0.insert(image.id) }
        _ = try await images.insertOne(image)
        driver?.enqueue(image.id)
    }

    /// Writes a request status (what the API does) and hands the id to the driver.
    func request(_ id: ObjectId, _ state: ImageState, _ request: ImageRequest? = nil) async throws {
        var set: BSONDocument = ["status": try BSONEncoder().encodeValue(ImageStatus(state))]
        if let request { set.setValue(try BSONEncoder().encodeValue(request), forKey: "request") }
        _ = try await images.updateOne(["_id": .objectId(id)], ["$set": .document(set)])
        driver?.enqueue(id)
    }

    /// Copies `file` into the upload directory and records a complete upload for it.
    func upload(_ file: String, filename: String, path relative: String? = nil) async throws -> UploadDocument {
        let relative = relative ?? uniqueName("up") + "/" + filename
        let target = uploadsDirectory + "/" + relative
        if relative.hasPrefix("/") || relative.contains("..") {
            // An invalid path the API would never write: record it without copying anything.
        } else {
            try FileManager.default.createDirectory(
                atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: file, toPath: target)
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int64) ?? 0
        let upload = UploadDocument(
            filename: filename, path: relative, size: size, complete: true, expires: Date().addingTimeInterval(86_400))
        _ = try await uploads.insertOne(upload)
        return upload
    }

    /// An import request for `upload`.
    func importImage(_ upload: UploadDocument, name: String? = nil, interactive: Bool = true) async throws -> ImageDocument {
        let image = ImageDocument(
            name: name ?? uniqueName("image"), os: ObjectId(), request: ImageRequest(upload: upload.id, interactive: interactive),
            status: ImageStatus(.import))
        try await insert(image)
        return image
    }

    /// A `ready` image whose file is a copy of `source` (as if imported earlier).
    func readyImage(from source: String) async throws -> ImageDocument {
        let id = ObjectId()
        try FileManager.default.createDirectory(atPath: storeDirectory, withIntermediateDirectories: true)
        let path = storeDirectory + "/\(id.hex).qcow2"
        try FileManager.default.copyItem(atPath: source, toPath: path)
        let (hex, size) = try sha256OfFile(path)
        let image = ImageDocument(
            id: id, name: uniqueName("ready"), os: ObjectId(),
            file: ImageFile(path: "\(id.hex).qcow2", sha256: hex, size: size), status: ImageStatus(.ready))
        try await insert(image)
        return image
    }

    func image(_ id: ObjectId) async throws -> ImageDocument? {
        try await images.findOne(["_id": .objectId(id)])
    }

    /// Waits until image `id` satisfies `condition`; fails early when it ends in an unexpected
    /// terminal state.
    @discardableResult
    func waitForImage(
        _ id: ObjectId, _ what: String, timeout: Duration = .seconds(180), _ condition: @escaping @Sendable (ImageDocument) -> Bool
    ) async throws -> ImageDocument {
        try await explained {
            try await waitFor("image \(id) \(what)", timeout: timeout, interval: .milliseconds(50)) { () async throws -> ImageDocument? in
                let image = try await self.image(id)
                if let image, condition(image) { return image }
                return nil
            }
        }
    }

    /// Runs `body`; a failure also tells the reconcile errors and the image states.
    func explained<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw TestSupportError("\(error); \(await diagnostics())")
        }
    }

    /// Reconcile errors, image states and the last console lines of running VMs, for failure
    /// messages.
    func diagnostics() async -> String {
        let docs = (try? await images.find()) ?? []
        let states = docs.map { "\($0.id) \($0.status.name) \($0.status.reason ?? "")" }
        var consoles: [String] = []
        for doc in docs {
            let log = storeDirectory + "/.work/\(doc.id.hex)/serial.log"
            guard let data = FileManager.default.contents(atPath: log) else { continue }
            let lines = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).suffix(6)
            consoles.append("\(doc.id): " + lines.joined(separator: " | "))
        }
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        return "reconcile errors: \(await driver?.errors ?? []); images: \(states); consoles: \(consoles); load: \(load)"
    }

    /// Waits until image `id` is in `state`; fails at once if it reaches another terminal one.
    @discardableResult
    func waitForState(_ id: ObjectId, _ state: ImageState, timeout: Duration = .seconds(180)) async throws -> ImageDocument {
        try await explained {
            try await waitFor("image \(id) in \(state)", timeout: timeout, interval: .milliseconds(50)) { () async throws -> ImageDocument? in
                guard let image = try await self.image(id) else { throw TestSupportError("image \(id) was removed") }
                if image.status.name == state { return image }
                if image.status.name == .error {
                    throw TestSupportError("image \(id) is \(image.status.name) (\(image.status.reason ?? "")), not \(state)")
                }
                return nil
            }
        }
    }

    /// The domain of image `id`, if any.
    func domain(_ id: ObjectId) async throws -> LibvirtDomain? {
        try await libvirt.domainIfExists(named: "talus-image-\(id.hex)")
    }

    /// Removes the VMs of this test's images, the database and the directories; stops the master.
    func close() async {
        await killMaster()
        for id in ids.withLock({ $0 }) {
            do {
                try await libvirt.removeDomain(named: "talus-image-\(id.hex)")
            } catch {
                Issue.record("cleanup of the VM of image \(id) failed: \(error)")
            }
        }
        try? await database.drop()
        await client.close()
        await libvirt.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs `body` with a world and closes it afterwards, also when `body` throws.
    static func with(
        _ name: String, settings: [String: String] = [:], _ body: (ImageWorld) async throws -> Void
    ) async throws {
        let world = try await ImageWorld(name, settings: settings)
        do {
            try await body(world)
        } catch {
            await world.close()
            throw error
        }
        await world.close()
    }
}

/// `sha256sum FILE`, the reference the tests compare with.
func sha256sum(_ path: String) async throws -> String {
    let out = try await runCommand("sha256sum", [path]).stdout
    return String(out.prefix(64))
}

/// `qemu-img info --output=json`, parsed.
func qemuImgInfo(_ path: String) async throws -> [String: Any] {
    let out = try await runCommand("qemu-img", ["info", "--output=json", "-U", path]).stdout
    return try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] ?? [:]
}

// MARK: A miniature work queue

/// Drives a reconciler the way the master's work queue does: at most one reconcile per id at a
/// time, hints and change notifications schedule an id now, `.requeue(after:)` schedules it
/// later, errors are retried after a second (and recorded), and after 5 failures in a row
/// `giveUp` is called.
final class ReconcileDriver: Sendable {
    private let reconciler: ImageReconciler
    private let queue = DriverQueue()
    private let tasks = Mutex<[Task<Void, Never>]>([])

    init(_ reconciler: ImageReconciler) {
        self.reconciler = reconciler
        let queue = self.queue
        let hintTask = Task {
            for await id in reconciler.hints { await queue.schedule(id, at: .now) }
        }
        let loop = Task {
            while !Task.isCancelled {
                for id in await queue.takeDue() {
                    Task {
                        let outcome: Result<ReconcileOutcome, any Error>
                        do {
                            outcome = .success(try await reconciler.reconcile(id))
                        } catch {
                            outcome = .failure(error)
                        }
                        if let reason = await queue.finished(id, outcome) { await reconciler.giveUp(id, reason: reason) }
                    }
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        tasks.withLock { $0 = [hintTask, loop] }
    }

    /// Schedules `id` now (a change event).
    func enqueue(_ id: ObjectId) {
        let queue = self.queue
        Task { await queue.schedule(id, at: .now) }
    }

    /// Errors reconciles threw, newest last.
    var errors: [String] { get async { await queue.errors } }

    /// Stops scheduling (reconciles in flight finish on their own).
    func stop() async {
        for task in tasks.withLock({ $0 }) { task.cancel() }
        await queue.waitIdle()
    }
}

actor DriverQueue {
    private var due: [ObjectId: ContinuousClock.Instant] = [:]
    private var running = Set<ObjectId>()
    private var again = Set<ObjectId>()
    private var failures: [ObjectId: Int] = [:]
    private(set) var errors: [String] = []

    func schedule(_ id: ObjectId, at instant: ContinuousClock.Instant) {
        if running.contains(id) && instant <= .now {
            again.insert(id)
            return
        }
        due[id] = min(due[id] ?? instant, instant)
    }

    func takeDue() -> [ObjectId] {
        let now = ContinuousClock.now
        let ready = due.filter { $0.value <= now && !running.contains($0.key) }.map(\.key)
        for id in ready {
            due[id] = nil
            running.insert(id)
        }
        return ready
    }

    /// Records the end of a reconcile; returns a reason when the driver gives up on `id`.
    func finished(_ id: ObjectId, _ outcome: Result<ReconcileOutcome, any Error>) -> String? {
        running.remove(id)
        if again.remove(id) != nil { schedule(id, at: .now) }
        switch outcome {
        case .success(.done):
            failures[id] = nil
        case .success(.requeue(let after)):
            failures[id] = nil
            schedule(id, at: .now + after)
        case .failure(let error):
            errors.append("\(id): \(error)")
            let n = (failures[id] ?? 0) + 1
            failures[id] = n
            if n >= 5 {
                failures[id] = nil
                return "reconcile failed \(n) times: \(error)"
            }
            schedule(id, at: .now + .seconds(1))
        }
        return nil
    }

    func waitIdle() async {
        while !running.isEmpty { try? await Task.sleep(for: .milliseconds(20)) }
        due.removeAll()
    }
}
