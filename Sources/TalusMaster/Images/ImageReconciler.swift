// Image reconciliation (DESIGN §5): import, configure, create, delete through libvirt.
//
// Every reconcile is short. It reads the image document, looks at the world (the domain
// `talus-image-<id>`, the files in the store, the background step of the image), takes one step
// and returns: long work (conversion, VM boot, commit + hash) runs as a background step that
// names the image on `hints` when it ends; a running VM is checked again when libvirt reports a
// lifecycle event of its domain (a hint) and at the latest after `pollInterval` or at its
// deadline. Nothing is remembered between reconciles that cannot be rebuilt from the document,
// libvirt and the disk, so a master restart in the middle of anything resumes or cleans up:
//
// | status                  | what the reconcile does                                                  |
// |-------------------------|--------------------------------------------------------------------------|
// | import                  | waits for a slot; probes + converts the upload (background); boots       |
// | configure               | refuses (children, unfinished jobs) or waits for a slot; boots           |
// | create                  | checks the base; creates the overlay; → creating → ready, or boots       |
// | importing/configuring/creating | VM running: wait (deadline → error). Guest powered off: commit, hash → ready. VM stopped otherwise → error |
// | delete                  | refuses (children, unfinished jobs) or → deleting                        |
// | deleting                | removes VM, files, upload, then the document                             |
// | ready / error           | removes leftovers (a VM, work files, a consumed upload)                  |
// | (document gone)         | removes the VM and work files of that id                                 |
//
// Sessions run on an overlay of the image (`.work/<id>/session.qcow2`) committed only after a
// clean guest power-off, so a session that fails leaves the image file as it was.

import BSON
import Foundation
import Libvirt
import Logging
import Metrics
import Mongo
import TalusCore
import TalusModel

/// Drives image documents toward their requested state (DESIGN §5).
///
/// Wiring in the master daemon:
/// ```swift
/// let images = ImageReconciler(database: db, config: try ImageConfig(settings: settings), logger: logger)
/// queue.register(images)                                     // collection `images`
/// Task { for await id in images.hints { queue.enqueue(images.collection, id) } }
/// ...
/// await images.shutdown()                                    // on SIGTERM, after the queue stopped
/// ```
/// ``hints`` names images whose state may have changed outside MongoDB: a libvirt lifecycle
/// event of their VM, a background step that finished, a slot that freed up. Treat them exactly
/// like change-stream events (coalesce, at most one reconcile per id at a time). Every
/// ``reconcile(_:)`` returns quickly; `.requeue(after:)` is the polling fallback and the
/// deadline timer, so honour it.
///
/// VMs are persistent libvirt domains named `talus-image-<id>`: they keep running when the
/// master stops, and the next master picks them up. Their owner tag is `image:<id>@<database>`;
/// the reconciler touches only domains tagged with its own database's name, so several
/// installations (or test runs) can share one libvirtd. ``pending()`` lists, besides unfinished
/// documents, every image that has a VM or work files, so orphans are removed at start.
public final class ImageReconciler: DocumentReconciler {
    public let collection = TalusModel.Collection.images
    /// Reconciles are short (long work runs in the background), so this only bounds database
    /// and libvirt calls; the image operations themselves are bounded by `images.max_concurrent`.
    public let maxConcurrent: Int
    /// Image ids to reconcile soon (see the type's documentation). Iterate once.
    public let hints: AsyncStream<ObjectId>
    /// How often a running VM is looked at when no lifecycle event arrives.
    public let pollInterval: Duration

    let config: ImageConfig
    let store: ImageStore
    let vms: ImageVMs
    private let link: LibvirtLink
    private let steps: BackgroundSteps
    private let slots: ImageSlots
    private let startup: StartupSweep
    private let images: MongoCollection<ImageDocument>
    private let uploads: MongoCollection<UploadDocument>
    private let jobs: MongoCollection<BSONDocument>
    private let logger: Logger
    private let hintContinuation: AsyncStream<ObjectId>.Continuation

    /// - Parameters:
    ///   - database: the Talus database (`images`, `uploads`, `jobs` are read; `images` and
    ///     `uploads` written).
    ///   - config: ``ImageConfig``.
    ///   - pollInterval: the polling fallback for running VMs.
    ///   - logger: daemon logger; image operations log at info with `image` metadata.
    public init(database: MongoDatabase, config: ImageConfig, pollInterval: Duration = .seconds(10), logger: Logger) {
        let (stream, continuation) = AsyncStream.makeStream(of: ObjectId.self, bufferingPolicy: .bufferingNewest(10_000))
        hints = stream
        hintContinuation = continuation
        let hint: @Sendable (ObjectId) -> Void = { continuation.yield($0) }
        self.config = config
        self.pollInterval = pollInterval
        self.logger = logger
        maxConcurrent = max(4, config.maxConcurrent)
        store = ImageStore(root: config.store, uploads: config.uploads, fileTimeout: config.fileTimeout)
        link = LibvirtLink(uri: config.libvirtURI, logger: logger, hint: hint)
        vms = ImageVMs(config: config, store: store, link: link, scope: database.name)
        steps = BackgroundSteps(hint: hint)
        slots = ImageSlots(limit: config.maxConcurrent, hint: hint)
        startup = StartupSweep()
        images = database.collection(TalusModel.Collection.images.rawValue, as: ImageDocument.self)
        uploads = database.collection(TalusModel.Collection.uploads.rawValue, as: UploadDocument.self)
        jobs = database.collection(TalusModel.Collection.jobs.rawValue)
    }

    /// Stops background steps, ends ``hints`` and closes the libvirt connection. Image VMs keep
    /// running; the next master continues with them.
    public func shutdown() async {
        await steps.cancelAll()
        await link.close()
        hintContinuation.finish()
    }

    /// The domain type image VMs get (`libvirt.domain_type`; `auto` runs the KVM probe once, a
    /// few seconds where KVM hangs). The daemon may call this at start so that the first image
    /// operation does not wait for the probe, and to log the choice early.
    public func resolveDomainType() async throws -> DomainType {
        try await link.domainType(config.domainType, probeDirectory: store.root)
    }

    /// Image operations holding a slot now (running VMs, conversions), for metrics and tests.
    public func runningOperations() async -> Int { await slots.running }

    // MARK: DocumentReconciler

    public func pending() async throws -> [ObjectId] {
        await sweepOnce()
        let open: [ImageState] = ImageState.allCases.filter { $0 != .ready && $0 != .error }
        let filter: BSONDocument = ["status.name": ["$in": .array(open.map { .string($0.rawValue) })]]
        var ids = Set(try await images.find(filter).map(\.id))
        do {
            ids.formUnion(try await vms.ownedImageIDs())
        } catch {
            logger.error("cannot list image VMs at start; orphaned VMs are removed once libvirt answers", metadata: ["error": "\(error)"])
        }
        ids.formUnion(store.idsWithWork())
        return ids.sorted()
    }

    public func reconcile(_ id: ObjectId) async throws -> ReconcileOutcome {
        await sweepOnce()
        guard let image = try await images.findOne(["_id": .objectId(id)]) else {
            try await cleanUpAfterRemoval(id)
            return .done
        }
        try image.checkSchema()
        switch image.status.name {
        case .import, .configure, .create: return try await startOperation(image)
        case .importing, .configuring, .creating: return try await superviseSession(image)
        case .delete: return try await requestDelete(image)
        case .deleting: return try await finishDelete(image)
        case .ready, .error: return try await settle(image)
        }
    }

    public func giveUp(_ id: ObjectId, reason: String) async {
        await steps.cancel(id)
        do {
            _ = try? await vms.remove(id)
            try? store.removeWork(id)
            await slots.release(id)
            guard let image = try await images.findOne(["_id": .objectId(id)]) else { return }
            guard !image.status.name.isTerminal && image.status.name.canMove(to: .error) else {
                log(id).error("image reconcile keeps failing", metadata: ["reason": "\(reason)"])
                return
            }
            _ = try await write(image, ImageStatus(.error, reason: reason))
            count(image.status.name, "error")
        } catch {
            log(id).error("cannot record the failure of an image", metadata: ["reason": "\(reason)", "error": "\(error)"])
        }
    }

    // MARK: Requests: import, configure, create

    private func startOperation(_ image: ImageDocument) async throws -> ReconcileOutcome {
        let id = image.id
        if let (step, poll) = await steps.take(id) {
            switch (step, poll) {
            case (.prepareImport, .running), (.finalize, .running):
                return .requeue(after: .seconds(2))
            case (.prepareImport, .finished(.success)):
                break  // converted: boot below
            case (.boot, .running(let since)):
                let elapsed = ContinuousClock.now - since
                guard elapsed < config.bootTimeout else {
                    await steps.cancel(id)
                    try await vms.remove(id)
                    return try await fail(image, "the VM did not start within images.boot_timeout (\(Self.text(config.bootTimeout))); libvirtd may be overloaded: see the master's log, then request the operation again")
                }
                return .requeue(after: min(config.bootTimeout - elapsed, .seconds(2)))
            case (.boot, .finished(.success(.booted(let session)))):
                return try await enterSession(image, session)
            case (_, .finished(.failure(let error))):
                return try await fail(image, Self.reason(error, doing: step == .boot ? "starting the VM" : "preparing the import"))
            case (_, .finished(.success)):
                break
            }
        }

        switch image.status.name {
        case .import:
            if !store.exists(store.imagePath(id)) {
                guard try await takeSlot(image) else { return .requeue(after: pollInterval) }
                await startImportPreparation(image)
                return .requeue(after: .seconds(2))
            }
        case .configure:
            guard store.exists(store.imagePath(id)) else {
                return try await fail(image, "the image has no file in the store (its import failed before conversion): delete it and import the disk again")
            }
            if let refusal = try await refusal(of: image, operation: "configure") { return try await refuse(image, refusal) }
        case .create:
            if !needsVM(image) { return try await createWithoutVM(image) }
            if let problem = try await baseProblem(image) { return try await fail(image, problem) }
            if !store.exists(store.imagePath(id)) { try await store.createChild(id, base: image.base!) }
        default:
            break
        }
        guard try await takeSlot(image) else { return .requeue(after: pollInterval) }
        await startBoot(image)
        return .requeue(after: .seconds(2))
    }

    private func startImportPreparation(_ image: ImageDocument) async {
        let (id, store, uploads, logger) = (image.id, store, uploads, log(image.id))
        let uploadID = image.request?.upload
        await steps.start(id, .prepareImport) {
            guard let uploadID else { throw ImageFailure("the import request names no upload: upload the disk image and import it again") }
            guard let upload = try await uploads.findOne(["_id": .objectId(uploadID)]) else {
                throw ImageFailure("upload \(uploadID) does not exist (it expired or was removed): upload the disk image again")
            }
            guard upload.complete else {
                throw ImageFailure("upload \(uploadID) (\(upload.filename)) is incomplete: finish the upload, then import it")
            }
            let path = try store.uploadPath(upload)
            let probed = try await store.probe(path: path, filename: upload.filename)
            logger.info("converting upload", metadata: [
                "upload": "\(uploadID)", "format": "\(probed.format.rawValue)", "virtual_size": "\(probed.virtualSize)",
            ])
            try await store.convert(path, format: probed.format, to: id)
            return .prepared
        }
    }

    private func startBoot(_ image: ImageDocument) async {
        let interactive = isInteractive(image)
        let length = interactive ? sessionLength(image) : config.configureTimeout
        let bootDeadline = ContinuousClock.now.advanced(by: config.bootTimeout)
        let (id, vms, shape, script) = (image.id, vms, image.vm, image.request?.script)
        let started = ContinuousClock.now
        await steps.start(id, .boot) {
            let session = try await vms.boot(
                id: id, shape: shape, interactive: interactive, script: script, length: length, bootDeadline: bootDeadline)
            Timer(label: "talus_image_vm_boot_seconds").record(duration: ContinuousClock.now - started)
            return .booted(session)
        }
    }

    /// Writes the transitional state with the VNC details once the VM runs.
    private func enterSession(_ image: ImageDocument, _ session: BootedSession) async throws -> ReconcileOutcome {
        let next: ImageState = switch image.status.name {
        case .import: .importing
        case .configure: .configuring
        default: .creating
        }
        let status = ImageStatus(next, deadline: session.deadline, vnc: session.vnc, domain: session.domain)
        guard try await write(image, status) != nil else { return .requeue(after: .zero) }
        var metadata: Logger.Metadata = ["domain": "\(session.domain)", "deadline": "\(session.deadline)"]
        if let vnc = session.vnc { metadata["vnc"] = "\(vnc.host):\(vnc.port)" }
        log(image.id).info("image VM running", metadata: metadata)
        return .requeue(after: min(pollInterval, Self.until(session.deadline)))
    }

    /// A non-interactive create without a script, `create → ready` in one reconcile:
    /// `qemu-img create` of the overlay (a process, the slowest part) runs while the base is
    /// checked; then the overlay is hashed and the image is ready. An unusable base removes the
    /// overlay again. After a crash halfway the overlay is found and reused.
    private func createWithoutVM(_ image: ImageDocument) async throws -> ReconcileOutcome {
        let (id, store) = (image.id, store)
        async let overlay: Void = {
            if let base = image.base, !store.exists(store.imagePath(id)) { try await store.createChild(id, base: base) }
        }()
        if let problem = try await baseProblem(image) {
            try? await overlay
            try? store.removeImage(id)
            return try await fail(image, problem)
        }
        try await overlay
        return try await becomeReady(image, try await store.describe(id))
    }

    // MARK: Sessions: importing, configuring, creating

    private func superviseSession(_ image: ImageDocument) async throws -> ReconcileOutcome {
        let id = image.id
        await slots.hold(id)
        if let (step, poll) = await steps.take(id) {
            switch (step, poll) {
            case (.finalize, .running):
                return .requeue(after: .seconds(2))
            case (.finalize, .finished(.success(.finalized(let file)))):
                return try await becomeReady(image, file)
            case (.finalize, .finished(.failure(let error))):
                return try await fail(image, Self.reason(error, doing: "saving the image after the session"))
            default:
                await steps.cancel(id)
            }
        }
        let deadline = image.status.deadline ?? image.status.since.addingTimeInterval(seconds(config.sessionTimeout))
        guard let domain = try await vms.domain(id) else {
            if store.exists(store.sessionOverlay(id)) {
                return try await fail(image, "the VM \(ImageDomain.name(id)) disappeared before the guest shut down (removed outside Talus?); the session's changes were discarded")
            }
            // Committed and removed by a finalize that did not get to write `ready`: hash again.
            await startFinalize(id)
            return .requeue(after: .seconds(2))
        }
        guard let state = try await ImageVMs.state(of: domain) else { return .requeue(after: .zero) }
        if case .paused(.ioError) = state {
            return try await fail(image, "the VM stopped on a disk I/O error (is \(store.root) full?); the session's changes were discarded")
        }
        if state.isActive {
            guard Date() < deadline else {
                try await vms.remove(id)
                return try await fail(image, deadlineReason(image, deadline: deadline))
            }
            return .requeue(after: min(pollInterval, Self.until(deadline) + .milliseconds(200)))
        }
        guard case .shutOff(.shutdown) = state else {
            let reason = Date() >= deadline
                ? deadlineReason(image, deadline: deadline)
                : "the VM stopped without the guest powering off (\(state)); the session's changes were discarded" + consoleTail(id)
            return try await fail(image, reason)
        }
        if image.request?.script != nil, let rc = store.scriptExitStatus(id), rc != 0 {
            return try await fail(image, "the configuration script exited with status \(rc); the session's changes were discarded" + consoleTail(id))
        }
        log(id).info("guest powered off; saving the image")
        await startFinalize(id)
        return .requeue(after: .seconds(2))
    }

    private func startFinalize(_ id: ObjectId) async {
        let (store, vms) = (store, vms)
        await steps.start(id, .finalize) {
            try await store.commitSession(id)
            try await vms.remove(id)
            try store.discardSession(id)
            return .finalized(try await store.describe(id))
        }
    }

    private func becomeReady(_ image: ImageDocument, _ file: ImageFile) async throws -> ReconcileOutcome {
        // Side effects first: whoever sees `ready` sees the upload gone and the slot free.
        try store.removeWork(image.id)
        await consumeUpload(image)
        await slots.release(image.id)
        let fileValue = try BSONEncoder().encodeValue(file)
        guard try await write(image, ImageStatus(.ready), set: ["file": fileValue]) != nil else { return .requeue(after: .zero) }
        count(image.status.name, "ready")
        log(image.id).info("image ready", metadata: [
            "sha256": "\(file.sha256 ?? "")", "size": "\(file.size ?? 0)", "virtual_size": "\(file.virtualSize ?? 0)",
        ])
        return .done
    }

    // MARK: Delete

    private func requestDelete(_ image: ImageDocument) async throws -> ReconcileOutcome {
        if let refusal = try await refusal(of: image, operation: "delete") { return try await refuse(image, refusal) }
        guard let deleting = try await write(image, ImageStatus(.deleting)) else { return .requeue(after: .zero) }
        return try await finishDelete(deleting)
    }

    private func finishDelete(_ image: ImageDocument) async throws -> ReconcileOutcome {
        let id = image.id
        await steps.cancel(id)
        try await vms.remove(id)
        try store.removeWork(id)
        try store.removeImage(id)
        await consumeUpload(image)
        _ = try await images.deleteOne(["_id": .objectId(id), "status.name": .string(ImageState.deleting.rawValue)])
        await slots.release(id)
        count(.delete, "deleted")
        log(id).info("image deleted", metadata: ["name": "\(image.name)"])
        return .done
    }

    // MARK: Terminal states and removed documents

    /// `ready` / `error`: nothing may run for the image. Removes what a crash or an outside
    /// action left behind.
    private func settle(_ image: ImageDocument) async throws -> ReconcileOutcome {
        let id = image.id
        if await steps.take(id) != nil { await steps.cancel(id) }
        if try await vms.remove(id) { log(id).warning("removed a VM left behind by an earlier operation") }
        try store.removeWork(id)
        if image.request?.upload != nil { await consumeUpload(image) }
        await slots.release(id)
        return .done
    }

    private func cleanUpAfterRemoval(_ id: ObjectId) async throws {
        await steps.cancel(id)
        if try await vms.remove(id) { log(id).warning("removed the VM of an image whose document is gone") }
        try store.removeWork(id)
        await slots.release(id)
    }

    // MARK: Checks

    /// Why `operation` (configure or delete) may not run now, or nil.
    private func refusal(of image: ImageDocument, operation: String) async throws -> String? {
        let children = try await images.find(["base": .objectId(image.id)], options: FindOptions(limit: 5))
        if !children.isEmpty {
            let total = try await images.countDocuments(["base": .objectId(image.id)])
            let names = children.map(\.name).joined(separator: ", ")
            let what = total == 1 ? "1 image is" : "\(total) images are"
            let advice = operation == "configure"
                ? "configure a child image instead, or delete the children first"
                : "delete them first"
            return "\(operation) refused: \(what) based on this image (\(names)\(total > children.count ? ", …" : "")); \(advice)"
        }
        let active = JobState.allCases.filter(\.isActive).map { BSONValue.string($0.rawValue) }
        let running = try await jobs.countDocuments(["image": .objectId(image.id), "status.name": ["$in": .array(active)]])
        if running > 0 {
            return "\(operation) refused: \(running) unfinished job\(running == 1 ? "" : "s") use\(running == 1 ? "s" : "") this image; wait for \(running == 1 ? "it" : "them") to finish or cancel \(running == 1 ? "it" : "them") first"
        }
        return nil
    }

    /// Goes back to where a refused request came from: `ready` when the image has a complete
    /// file, `error` otherwise; the reason says why.
    private func refuse(_ image: ImageDocument, _ reason: String) async throws -> ReconcileOutcome {
        let complete = image.file?.sha256 != nil && store.exists(store.imagePath(image.id))
        guard try await write(image, ImageStatus(complete ? .ready : .error, reason: reason)) != nil else { return .requeue(after: .zero) }
        count(image.status.name, "refused")
        log(image.id).info("request refused", metadata: ["reason": "\(reason)"])
        return .done
    }

    /// Why the base of a `create` cannot be used, or nil.
    private func baseProblem(_ image: ImageDocument) async throws -> String? {
        guard let baseID = image.base else { return "create needs a base image (`base`)" }
        guard let base = try await images.findOne(["_id": .objectId(baseID)]) else {
            return "the base image \(baseID) does not exist"
        }
        guard base.status.name == .ready else {
            return "the base image \(base.name) is \(base.status.name), not ready: create the image again once it is ready"
        }
        guard store.exists(store.imagePath(baseID)) else {
            return "the base image \(base.name) has no file in the store"
        }
        return nil
    }

    // MARK: Failure

    /// Ends the operation in `error(reason)`: background step cancelled, VM removed, session
    /// discarded (the image file stays as it was), upload consumed, slot released; then the
    /// status is written.
    private func fail(_ image: ImageDocument, _ reason: String) async throws -> ReconcileOutcome {
        let id = image.id
        await steps.cancel(id)
        try await vms.remove(id)
        try store.removeWork(id)
        // Side effects first: whoever sees `error` sees the upload gone and the slot free.
        await consumeUpload(image)
        await slots.release(id)
        guard try await write(image, ImageStatus(.error, reason: reason)) != nil else { return .requeue(after: .zero) }
        count(image.status.name, "error")
        log(id).warning("image operation failed", metadata: ["state": "\(image.status.name)", "reason": "\(reason)"])
        return .done
    }

    private func deadlineReason(_ image: ImageDocument, deadline: Date) -> String {
        let start = image.status.since
        let length = Self.text(.seconds(Int64(max(0, deadline.timeIntervalSince(start)).rounded())))
        if isInteractive(image) {
            let source = image.request?.sessionSeconds != nil ? "the requested session length" : "images.session_timeout"
            return "the interactive session ended at its deadline (\(length), \(source)) before the guest was shut down; the VM was stopped and its changes were discarded: shut the guest down before the deadline, or ask for a longer session"
        }
        return "the guest did not power off within \(length) (images.configure_timeout); the VM was stopped and its changes were discarded. Does the image run the Talus boot hook, and does the script end?" + consoleTail(image.id)
    }

    private func consoleTail(_ id: ObjectId) -> String {
        let tail = store.serialTail(id)
        return tail.isEmpty ? "" : ". Last console lines: \(tail)"
    }

    // MARK: Helpers

    private func needsVM(_ image: ImageDocument) -> Bool {
        image.status.name != .create || image.request?.interactive == true || image.request?.script != nil
    }

    private func isInteractive(_ image: ImageDocument) -> Bool {
        switch image.status.name {
        case .create, .creating: image.request?.interactive == true
        default: image.request?.interactive ?? true
        }
    }

    private func sessionLength(_ image: ImageDocument) -> Duration {
        guard let seconds = image.request?.sessionSeconds, seconds > 0 else { return config.sessionTimeout }
        return min(.seconds(seconds), config.sessionTimeoutMax)
    }

    /// A slot for the operation, or a reason on the request saying it waits.
    private func takeSlot(_ image: ImageDocument) async throws -> Bool {
        if await slots.acquire(image.id) { return true }
        let reason = "waiting: \(config.maxConcurrent) image operation\(config.maxConcurrent == 1 ? "" : "s") already running (images.max_concurrent)"
        if image.status.reason != reason {
            _ = try await images.updateOne(
                conditionFilter(image), ["$set": ["status.reason": .string(reason), "updated": .datetime(bsonNow())]])
        }
        return false
    }

    /// Deletes the upload an import consumed (file, then document). Failures are logged: the
    /// API's expiry removes the rest.
    private func consumeUpload(_ image: ImageDocument) async {
        guard let uploadID = image.request?.upload else { return }
        do {
            guard let upload = try await uploads.findOne(["_id": .objectId(uploadID)]) else { return }
            store.removeUploadFile(upload)
            _ = try await uploads.deleteOne(["_id": .objectId(uploadID)])
            log(image.id).debug("upload consumed", metadata: ["upload": "\(uploadID)"])
        } catch {
            log(image.id).warning("cannot remove the consumed upload", metadata: ["upload": "\(uploadID)", "error": "\(error)"])
        }
    }

    /// Matches the document only while its status is the one `image` was read with.
    private func conditionFilter(_ image: ImageDocument) -> BSONDocument {
        ["_id": .objectId(image.id), "status.name": .string(image.status.name.rawValue), "status.since": .datetime(image.status.since)]
    }

    /// Writes `status` (checked against the status machine) if the document still has the
    /// status it was read with, and returns the document as written; nil if it changed
    /// meanwhile (reconcile again).
    @discardableResult
    private func write(_ image: ImageDocument, _ status: ImageStatus, set extra: BSONDocument = [:]) async throws -> ImageDocument? {
        try image.status.name.checkTransition(to: status.name, id: image.id)
        var set: BSONDocument = ["status": try BSONEncoder().encodeValue(status), "updated": .datetime(bsonNow())]
        for (key, value) in extra { set.setValue(value, forKey: key) }
        let result = try await images.updateOne(conditionFilter(image), ["$set": .document(set)])
        if result.matchedCount == 0 {
            log(image.id).debug("image changed while reconciling; looking again", metadata: ["wanted": "\(status.name)"])
        }
        guard result.matchedCount == 1 else { return nil }
        var written = image
        written.status = status
        return written
    }

    /// At the first reconcile: mark images whose VM runs as holding a slot, so the limit holds
    /// across a restart.
    private func sweepOnce() async {
        await startup.once { [self] in
            do {
                try store.prepare()
            } catch {
                logger.error("cannot create the image store", metadata: ["store": "\(store.root)", "error": "\(error)"])
            }
            var held = Set<ObjectId>()
            if let owned = try? await vms.ownedImageIDs() { held.formUnion(owned) }
            let transitional = ImageState.allCases.filter(\.isTransitional).map { BSONValue.string($0.rawValue) }
            if let docs = try? await images.find(["status.name": ["$in": .array(transitional)]]) {
                held.formUnion(docs.filter { $0.status.name != .deleting }.map(\.id))
            }
            for id in held { await slots.hold(id) }
        }
    }

    private func count(_ state: ImageState, _ outcome: String) {
        let operation = switch state {
        case .import, .importing: "import"
        case .configure, .configuring: "configure"
        case .create, .creating: "create"
        case .delete, .deleting: "delete"
        case .ready, .error: "other"
        }
        Counter(label: "talus_image_operations_total", dimensions: [("operation", operation), ("outcome", outcome)]).increment()
    }

    private func log(_ id: ObjectId) -> Logger {
        var logger = logger
        logger[metadataKey: "image"] = "\(id)"
        return logger
    }

    static func reason(_ error: any Error, doing what: String) -> String {
        if let failure = error as? ImageFailure { return failure.reason }
        return "\(what) failed: \(ImageStore.shortError(error))"
    }

    static func until(_ date: Date) -> Duration {
        .milliseconds(max(0, Int64((date.timeIntervalSinceNow * 1000).rounded(.up))))
    }

    /// `90s`, `5m`, `4h`, `1h30m` for reasons.
    static func text(_ d: Duration) -> String {
        let s = d.components.seconds
        if s < 1 { return "\(d.components.attoseconds / 1_000_000_000_000_000)ms" }
        if s < 120 { return "\(s)s" }
        if s % 3600 == 0 { return "\(s / 3600)h" }
        if s < 3600 || s % 60 != 0 { return s % 60 == 0 ? "\(s / 60)m" : "\(s)s" }
        return "\(s / 3600)h\((s % 3600) / 60)m"
    }
}

/// Runs a start-up sweep once, however many reconciles start at the same time.
actor StartupSweep {
    private var task: Task<Void, Never>?

    func once(_ body: @escaping @Sendable () async -> Void) async {
        if task == nil { task = Task { await body() } }
        await task?.value
    }
}
