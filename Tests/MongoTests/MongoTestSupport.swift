// Helpers for the Mongo tests: a client on the shared SecantusDB replica set and a database that
// belongs to one test (unique name, dropped afterwards).

import BSON
import Foundation
import Logging
import Mongo
import TalusTestSupport
import Testing

/// A client on the shared replica set (`TALUS_TEST_MONGO_URI`).
func makeClient(
    uri: String? = nil, configuration: MongoClient.Configuration = .init(), uriOptions: String = ""
) throws -> MongoClient {
    var base = try uri ?? TestEnvironment.mongoURI()
    if !uriOptions.isEmpty { base += (base.contains("?") ? "&" : "?") + uriOptions }
    return try MongoClient(uri: base, configuration: configuration, logger: Logger(label: "test.mongo"))
}

/// Runs `body` with a client and a fresh database, then drops the database and closes the client.
func withDatabase(
    _ prefix: String = "mongotest", configuration: MongoClient.Configuration = .init(),
    _ body: (MongoClient, MongoDatabase) async throws -> Void
) async throws {
    let client = try makeClient(configuration: configuration)
    let db = client.database(uniqueName(prefix))
    do {
        try await body(client, db)
    } catch {
        try? await db.drop()
        await client.close()
        throw error
    }
    try await db.drop()
    await client.close()
}

/// Reads the next event of `iterator` or fails after `timeout`.
func nextEvent<T>(
    _ iterator: inout ChangeStream<T>.AsyncIterator, timeout: Duration = .seconds(20),
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> ChangeEvent<T> {
    let box = IteratorBox(iterator)
    let event = try await withThrowingTaskGroup(of: ChangeEvent<T>?.self) { group in
        group.addTask { try await box.next() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw TestSupportError("no change event within \(timeout)")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
    iterator = box.iterator
    guard let event else {
        throw TestSupportError("the change stream ended")
    }
    return event
}

/// Lets a test hand an iterator to a child task (used by one task at a time).
final class IteratorBox<T: Decodable & Sendable>: @unchecked Sendable {
    var iterator: ChangeStream<T>.AsyncIterator
    init(_ iterator: ChangeStream<T>.AsyncIterator) { self.iterator = iterator }
    func next() async throws -> ChangeEvent<T>? { try await iterator.next() }
}

/// A job-like model for the tests.
struct Job: Codable, Sendable, Equatable {
    var _id: ObjectId = ObjectId()
    var name: String
    var priority: Int
    var created: Date = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded() / 1000)
    var tags: [String] = []
    var status: Status = Status(name: "run")
    var params: BSONDocument = [:]
    var note: String?

    struct Status: Codable, Sendable, Equatable {
        var name: String
        var reason: String?
    }
}

/// Something measured by the clock, for bounds on latency.
func elapsed(_ body: () async throws -> Void) async rethrows -> Duration {
    let clock = ContinuousClock()
    let start = clock.now
    try await body()
    return clock.now - start
}
