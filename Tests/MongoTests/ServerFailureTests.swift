// A server that goes away and comes back (a private SecantusDB on its own port).

import BSON
import Foundation
import Mongo
import TalusTestSupport
import Testing

@Suite(.serialized) struct ServerFailureTests {
    @Test(.timeLimit(.minutes(3))) func operationsFailWithANetworkErrorAndRecoverWhenTheServerReturns() async throws {
        let server = try PrivateSecantus()
        try await server.start()
        let client = try makeClient(uri: server.uri, uriOptions: "serverSelectionTimeoutMS=2000&connectTimeoutMS=1000")
        let docs = client.database("failover").collection("docs")
        try await docs.insertOne(["n": 1])

        await server.stop()
        let failure = await elapsed {
            let error = await #expect(throws: MongoError.self) { try await docs.insertOne(["n": 2]) }
            #expect(error?.isNetworkError == true, "\(String(describing: error))")
            #expect(error?.isRetryable == true)
            #expect(error?.domain == .serverSelection || error?.domain == .stream)
            let read = await #expect(throws: MongoError.self) { try await docs.countDocuments() }
            #expect(read?.isNetworkError == true)
        }
        #expect(failure < .seconds(20), "failing took \(failure)")

        try await server.start()
        try await waitUntil("the client reconnects", timeout: .seconds(60), interval: .milliseconds(200)) {
            (try? await docs.insertOne(["n": 3])) != nil
        }
        #expect(try await docs.countDocuments(["n": 1]) == 1)
        await client.close()
        await server.stop()
    }

    @Test(.timeLimit(.minutes(3))) func aChangeStreamSurfacesTheServerGoingAway() async throws {
        let server = try PrivateSecantus()
        try await server.start()
        let client = try makeClient(uri: server.uri, uriOptions: "serverSelectionTimeoutMS=2000&connectTimeoutMS=1000&socketTimeoutMS=3000")
        let items = client.database("failover").collection("items")
        let stream = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 300))
        try await items.insertOne(["n": 1])
        var it = stream.makeAsyncIterator()
        let first = try await nextEvent(&it)
        #expect(first.fullDocument?["n"] == 1)
        let token = try #require(stream.resumeToken)

        await server.stop()
        let error = await #expect(throws: MongoError.self) {
            while try await it.next() != nil {}
        }
        #expect(error?.isNetworkError == true, "\(String(describing: error))")
        try await waitUntil("the stream thread ends", timeout: .seconds(10)) { stream.isClosed }

        // After a restart the saved token resumes where the stream was.
        try await server.start()
        try await waitUntil("the server answers", timeout: .seconds(60), interval: .milliseconds(200)) {
            (try? await items.insertOne(["n": 2])) != nil
        }
        let resumed = try await items.watch(options: ChangeStreamOptions(maxAwaitTimeMS: 300, resumeAfter: token))
        var it2 = resumed.makeAsyncIterator()
        #expect(try await nextEvent(&it2).fullDocument?["n"] == 2)
        await resumed.close()
        await client.close()
        await server.stop()
    }
}
