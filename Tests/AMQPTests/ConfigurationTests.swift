// AMQPTests: configuration parsing and policies (no broker needed).

import AMQP
import Testing

@Suite("AMQP configuration")
struct ConfigurationTests {
    @Test("URLs parse with the usual defaults and percent-decoding")
    func urlParsing() throws {
        let plain = try AMQPEndpoint(url: "amqp://guest:guest@127.0.0.1:44097/")
        #expect(plain == AMQPEndpoint(host: "127.0.0.1", port: 44097, user: "guest", password: "guest", virtualHost: "/"))
        #expect(try AMQPEndpoint(url: "amqp://rabbit").port == 5672)
        #expect(try AMQPEndpoint(url: "amqp://rabbit").virtualHost == "/")
        #expect(try AMQPEndpoint(url: "amqp://rabbit/%2F").virtualHost == "/")
        #expect(try AMQPEndpoint(url: "amqp://rabbit/talus").virtualHost == "talus")
        let encoded = try AMQPEndpoint(url: "AMQP://us%40er:p%3Ass@[::1]:5673/v%20h")
        #expect(encoded == AMQPEndpoint(host: "::1", port: 5673, user: "us@er", password: "p:ss", virtualHost: "v h"))
        #expect(!encoded.description.contains("p:ss"))
    }

    @Test("bad URLs are refused with a reason", arguments: [
        "", "rabbit:5672", "http://rabbit/", "amqps://rabbit/", "amqp://", "amqp://rabbit:notaport/",
        "amqp://rabbit:70000/", "amqp://rabbit/a/b", "amqp://rabbit/?heartbeat=5", "amqp://rabbit/%zz",
        "amqp://[::1/",
    ])
    func badURLs(url: String) {
        #expect {
            try AMQPEndpoint(url: url)
        } throws: { error in
            guard let error = error as? AMQPError else { return false }
            return error.kind == .invalidArgument && error.replyText != nil
        }
    }

    @Test("a bad URL never leaks its password into the error")
    func passwordNotInErrors() {
        #expect {
            try AMQPEndpoint(url: "amqp://user:secret@rabbit:nope/")
        } throws: { error in
            !"\(error)".contains("secret")
        }
    }

    @Test("backoff grows, is capped and jittered")
    func backoff() {
        let policy = AMQPReconnectPolicy(initialDelay: .milliseconds(100), maximumDelay: .seconds(2), multiplier: 2, jitter: 0.2)
        #expect((.milliseconds(80) ... .milliseconds(120)).contains(policy.delay(beforeAttempt: 1)))
        #expect((.milliseconds(320) ... .milliseconds(480)).contains(policy.delay(beforeAttempt: 3)))
        for attempt in 6...40 {
            #expect((.milliseconds(1600) ... .milliseconds(2400)).contains(policy.delay(beforeAttempt: attempt)))
        }
        let delays = Set((0..<20).map { _ in policy.delay(beforeAttempt: 2) })
        #expect(delays.count > 1, "jitter spreads the delays")
        let steady = AMQPReconnectPolicy(initialDelay: .milliseconds(100), jitter: 0)
        #expect(steady.delay(beforeAttempt: 1) == .milliseconds(100))
    }

    @Test("invalid configurations are refused before connecting")
    func invalidConfiguration() async throws {
        var configuration = try AMQPConfiguration(url: "amqp://127.0.0.1:1/")
        configuration.frameMax = 100
        let error = await amqpError { _ = try await AMQPConnection.connect(configuration) }
        #expect(error?.kind == .invalidArgument)
    }

    @Test("queue argument accessors write the x- arguments")
    func queueArguments() {
        var queue = AMQPQueue("q")
        queue.maxPriority = 10
        queue.deadLetterExchange = "dlx"
        queue.deadLetterRoutingKey = "dead"
        queue.messageTTL = .milliseconds(1500)
        queue.queueType = "classic"
        #expect(queue.arguments == [
            "x-max-priority": 10, "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead",
            "x-message-ttl": 1500, "x-queue-type": "classic",
        ])
        #expect(queue.messageTTL == .milliseconds(1500))
        queue.maxPriority = nil
        #expect(queue.arguments["x-max-priority"] == nil)
    }
}
