// AMQP: where the broker is and how a connection behaves (heartbeats, timeouts, reconnection).

/// A broker address parsed from an `amqp://user:password@host:port/vhost` URL.
///
/// Follows the RabbitMQ URI spec with the usual client convention for the vhost: no path
/// or a bare `/` means the default vhost `/`; otherwise the path without its leading slash,
/// percent-decoded (`/%2F` is `/`, `/talus` is `talus`). User and password are
/// percent-decoded and default to `guest`; the port defaults to 5672. `amqps` and query
/// parameters are refused (set the ``AMQPConfiguration`` fields instead).
public struct AMQPEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// Host name or address of the broker.
    public var host: String
    /// TCP port (default 5672).
    public var port: Int
    /// User name for SASL PLAIN (default `guest`).
    public var user: String
    /// Password for SASL PLAIN (default `guest`); never logged or shown in errors.
    public var password: String
    /// The virtual host (default `/`).
    public var virtualHost: String

    /// An endpoint from its parts.
    public init(host: String, port: Int = 5672, user: String = "guest", password: String = "guest",
                virtualHost: String = "/") {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.virtualHost = virtualHost
    }

    /// Parses an `amqp://` URL. Throws ``AMQPError/Kind/invalidArgument`` saying what is wrong.
    public init(url: String) throws(AMQPError) {
        func invalid(_ why: String) -> AMQPError {
            AMQPError(.invalidArgument, "AMQP URL '\(AMQPEndpoint.redacted(url))'", replyText: why)
        }
        guard let schemeEnd = url.firstRange(of: "://") else { throw invalid("missing 'amqp://'") }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "amqp" else {
            throw invalid(scheme == "amqps" ? "TLS (amqps) is not supported" : "scheme must be amqp")
        }
        var rest = Substring(url[schemeEnd.upperBound...])
        if rest.contains("?") || rest.contains("#") { throw invalid("query parameters and fragments are not supported") }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        var user = "guest", password = "guest"
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                guard let u = AMQPEndpoint.percentDecode(userInfo[..<colon]),
                      let p = AMQPEndpoint.percentDecode(userInfo[userInfo.index(after: colon)...])
                else { throw invalid("bad percent-encoding in user info") }
                user = u
                password = p
            } else {
                guard let u = AMQPEndpoint.percentDecode(userInfo) else { throw invalid("bad percent-encoding in user") }
                user = u
            }
        }
        var host = rest
        var port = 5672
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw invalid("unterminated IPv6 address") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()) else { throw invalid("bad port") }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            guard let p = Int(rest[rest.index(after: colon)...]) else { throw invalid("bad port") }
            port = p
        }
        guard !host.isEmpty else { throw invalid("missing host") }
        guard (1...65535).contains(port) else { throw invalid("port \(port) out of range") }
        var vhost = "/"
        if !path.isEmpty {
            guard !path.contains("/") else { throw invalid("the vhost must be one path segment (encode '/' as %2F)") }
            guard let decoded = AMQPEndpoint.percentDecode(path) else { throw invalid("bad percent-encoding in vhost") }
            vhost = decoded
        }
        self.init(host: String(host), port: port, user: user, password: password, virtualHost: vhost)
    }

    /// The URL without the password.
    public var description: String {
        let vhost = virtualHost == "/" ? "" : virtualHost
        return "amqp://\(user)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(vhost)"
    }

    static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.firstRange(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@")
        else { return url }
        let userInfo = url[schemeEnd.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return String(url[..<colon]) + ":***" + String(url[at...])
    }

    static func percentDecode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

/// How a connection retries after the broker went away: exponential backoff from
/// ``initialDelay``, multiplied by ``multiplier`` per failed attempt, capped at
/// ``maximumDelay``, each delay randomised by ±``jitter`` (a fraction) so that many clients
/// do not reconnect in lock-step.
public struct AMQPReconnectPolicy: Sendable, Hashable {
    /// Reconnect at all. When `false` a lost connection goes to `.closed(error)`.
    public var enabled: Bool
    /// Delay before the first reconnection attempt (default 100 ms).
    public var initialDelay: Duration
    /// Upper bound of the delay between attempts (default 10 s).
    public var maximumDelay: Duration
    /// Growth factor per failed attempt (default 2).
    public var multiplier: Double
    /// Random spread of each delay as a fraction of it, 0...1 (default 0.2: ±20 %).
    public var jitter: Double
    /// Give up after this many failed attempts in a row (`nil`, the default: never).
    public var maximumAttempts: Int?

    /// A policy; see the properties for the defaults.
    public init(enabled: Bool = true, initialDelay: Duration = .milliseconds(100), maximumDelay: Duration = .seconds(10),
                multiplier: Double = 2, jitter: Double = 0.2, maximumAttempts: Int? = nil) {
        self.enabled = enabled
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
        self.maximumAttempts = maximumAttempts
    }

    /// The defaults: 100 ms doubling to 10 s, ±20 %, forever.
    public static let `default` = AMQPReconnectPolicy()
    /// No reconnection.
    public static let disabled = AMQPReconnectPolicy(enabled: false)

    /// The delay before attempt number `attempt` (1-based).
    public func delay(beforeAttempt attempt: Int) -> Duration {
        let base = initialDelay.seconds * pow(max(multiplier, 1), Double(max(attempt - 1, 0)))
        let capped = min(base, maximumDelay.seconds)
        let spread = min(max(jitter, 0), 1)
        let factor = spread > 0 ? Double.random(in: (1 - spread)...(1 + spread)) : 1
        return .nanoseconds(Int64(max(capped * factor, 0) * 1e9))
    }
}

/// Everything about one connection. Keys and defaults:
///
/// - `endpoint`: where the broker is (from the URL).
/// - `heartbeatSeconds` (default 30; 0 disables): the heartbeat interval proposed to the
///   broker (the broker may lower it). The connection thread wakes at least every half
///   interval so heartbeats go out while idle; a broker silent for two intervals is
///   treated as gone.
/// - `connectionName` (default none): shown by the broker (`rabbitmqctl list_connections
///   client_properties`, management UI).
/// - `frameMax` (default 131072): the largest frame proposed; bodies are split into frames.
/// - `connectTimeout` (default 10 s): TCP connect plus AMQP handshake.
/// - `rpcTimeout` (default 30 s): any synchronous operation (declare, bind, qos, ...).
///   A timeout is treated as a broken connection (the reply could still arrive later).
/// - `closeTimeout` (default 10 s): how long ``AMQPConnection/close()`` waits for
///   outstanding publisher confirms before closing.
/// - `reconnect` (default ``AMQPReconnectPolicy/default``).
/// - `maxInFlightPublishes` (default 1000): publishes not yet confirmed, including those
///   queued while reconnecting; ``AMQPConnection/publish(_:exchange:routingKey:mandatory:)``
///   suspends when this many are outstanding (backpressure).
public struct AMQPConfiguration: Sendable {
    /// Where the broker is.
    public var endpoint: AMQPEndpoint
    /// Proposed heartbeat interval in seconds (default 30; 0 disables).
    public var heartbeatSeconds: UInt16
    /// The name the broker shows for the connection (default none).
    public var connectionName: String?
    /// The largest frame proposed, at least 4096 (default 131072).
    public var frameMax: UInt32
    /// TCP connect plus AMQP handshake (default 10 s).
    public var connectTimeout: Duration
    /// Any synchronous operation (default 30 s); a timeout counts as a broken connection.
    public var rpcTimeout: Duration
    /// How long `close()` waits for outstanding confirms (default 10 s).
    public var closeTimeout: Duration
    /// Reconnection backoff (default ``AMQPReconnectPolicy/default``).
    public var reconnect: AMQPReconnectPolicy
    /// Unsettled publishes before `publish` suspends (default 1000).
    public var maxInFlightPublishes: Int

    /// A configuration for `endpoint`.
    public init(endpoint: AMQPEndpoint, heartbeatSeconds: UInt16 = 30, connectionName: String? = nil,
                frameMax: UInt32 = 131_072, connectTimeout: Duration = .seconds(10), rpcTimeout: Duration = .seconds(30),
                closeTimeout: Duration = .seconds(10), reconnect: AMQPReconnectPolicy = .default,
                maxInFlightPublishes: Int = 1000) {
        self.endpoint = endpoint
        self.heartbeatSeconds = heartbeatSeconds
        self.connectionName = connectionName
        self.frameMax = frameMax
        self.connectTimeout = connectTimeout
        self.rpcTimeout = rpcTimeout
        self.closeTimeout = closeTimeout
        self.reconnect = reconnect
        self.maxInFlightPublishes = maxInFlightPublishes
    }

    /// A configuration for the broker at `url` (see ``AMQPEndpoint/init(url:)``).
    public init(url: String, heartbeatSeconds: UInt16 = 30, connectionName: String? = nil,
                frameMax: UInt32 = 131_072, connectTimeout: Duration = .seconds(10), rpcTimeout: Duration = .seconds(30),
                closeTimeout: Duration = .seconds(10), reconnect: AMQPReconnectPolicy = .default,
                maxInFlightPublishes: Int = 1000) throws(AMQPError) {
        self.init(endpoint: try AMQPEndpoint(url: url), heartbeatSeconds: heartbeatSeconds,
                  connectionName: connectionName, frameMax: frameMax, connectTimeout: connectTimeout,
                  rpcTimeout: rpcTimeout, closeTimeout: closeTimeout, reconnect: reconnect,
                  maxInFlightPublishes: maxInFlightPublishes)
    }

    func validate() throws(AMQPError) {
        func invalid(_ why: String) -> AMQPError { AMQPError(.invalidArgument, "AMQP configuration", replyText: why) }
        guard frameMax >= 4096 else { throw invalid("frameMax must be at least 4096 (AMQP FRAME-MIN-SIZE)") }
        guard maxInFlightPublishes >= 1 else { throw invalid("maxInFlightPublishes must be at least 1") }
        guard connectTimeout > .zero, rpcTimeout > .zero else { throw invalid("timeouts must be positive") }
        guard reconnect.initialDelay >= .zero, reconnect.maximumDelay >= reconnect.initialDelay else {
            throw invalid("reconnect delays must satisfy 0 <= initialDelay <= maximumDelay")
        }
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }

    /// The duration in whole milliseconds, rounded up.
    var milliseconds: Int {
        let (s, attoseconds) = components
        return Int(s) * 1000 + Int((attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
