// AMQP: exchanges, queues and bindings — what a connection declares, and re-declares after
// every reconnection.

/// An exchange to declare.
public struct AMQPExchange: Sendable, Hashable {
    /// The exchange type.
    public enum Kind: Sendable, Hashable {
        case direct, fanout, topic, headers
        /// A plugin-provided type, by name (e.g. `x-delayed-message`).
        case custom(String)

        /// The type's name as sent to the broker.
        public var name: String {
            switch self {
            case .direct: "direct"
            case .fanout: "fanout"
            case .topic: "topic"
            case .headers: "headers"
            case .custom(let name): name
            }
        }
    }

    /// The exchange name.
    public var name: String
    /// The exchange type (default direct).
    public var kind: Kind
    /// Survives a broker restart (default `true`).
    public var durable: Bool
    /// Deleted when its last binding goes (default `false`).
    public var autoDelete: Bool
    /// Only reachable through exchange-to-exchange bindings (default `false`).
    public var `internal`: Bool
    /// Exchange arguments (e.g. `alternate-exchange`).
    public var arguments: AMQPTable

    /// An exchange; durable by default.
    public init(_ name: String, kind: Kind = .direct, durable: Bool = true, autoDelete: Bool = false,
                internal: Bool = false, arguments: AMQPTable = [:]) {
        self.name = name
        self.kind = kind
        self.durable = durable
        self.autoDelete = autoDelete
        self.internal = `internal`
        self.arguments = arguments
    }
}

/// A queue to declare. Well-known `x-` arguments have typed accessors
/// (``maxPriority``, ``deadLetterExchange``, ``deadLetterRoutingKey``, ``messageTTL``,
/// ``maxLength``, ``queueType``); anything else goes into ``arguments`` directly.
public struct AMQPQueue: Sendable, Hashable {
    /// The queue name. An empty name asks the broker to generate one; such queues are not
    /// re-declared after a reconnection (their name would change).
    public var name: String
    /// Survives a broker restart (default `true`).
    public var durable: Bool
    /// Used by this connection only, deleted when it closes (default `false`).
    public var exclusive: Bool
    /// Deleted when its last consumer goes (default `false`).
    public var autoDelete: Bool
    /// Queue arguments (`x-...`); see the typed accessors below.
    public var arguments: AMQPTable

    /// A queue; durable, not exclusive, not auto-delete by default.
    public init(_ name: String, durable: Bool = true, exclusive: Bool = false, autoDelete: Bool = false,
                arguments: AMQPTable = [:]) {
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments
    }

    /// `x-max-priority`: the queue honours message priorities 0...maxPriority (1...255).
    public var maxPriority: Int? {
        get { arguments["x-max-priority"]?.intValue.map(Int.init) }
        set { arguments["x-max-priority"] = newValue.map { .int64(Int64($0)) } }
    }

    /// `x-dead-letter-exchange`: where rejected (not requeued), expired and overflowing
    /// messages go.
    public var deadLetterExchange: String? {
        get { arguments["x-dead-letter-exchange"]?.stringValue }
        set { arguments["x-dead-letter-exchange"] = newValue.map { .string($0) } }
    }

    /// `x-dead-letter-routing-key`: the routing key dead-lettered messages get (default:
    /// their own).
    public var deadLetterRoutingKey: String? {
        get { arguments["x-dead-letter-routing-key"]?.stringValue }
        set { arguments["x-dead-letter-routing-key"] = newValue.map { .string($0) } }
    }

    /// `x-message-ttl`: how long a message may wait in the queue (millisecond resolution).
    public var messageTTL: Duration? {
        get { arguments["x-message-ttl"]?.intValue.map { .milliseconds($0) } }
        set { arguments["x-message-ttl"] = newValue.map { .int64(Int64($0.milliseconds)) } }
    }

    /// `x-max-length`: the most messages the queue holds.
    public var maxLength: Int? {
        get { arguments["x-max-length"]?.intValue.map(Int.init) }
        set { arguments["x-max-length"] = newValue.map { .int64(Int64($0)) } }
    }

    /// `x-queue-type`: `classic` (default), `quorum` or `stream`.
    public var queueType: String? {
        get { arguments["x-queue-type"]?.stringValue }
        set { arguments["x-queue-type"] = newValue.map { .string($0) } }
    }
}

/// A binding of a queue to an exchange.
public struct AMQPBinding: Sendable, Hashable {
    /// The queue that receives.
    public var queue: String
    /// The exchange that routes.
    public var exchange: String
    /// The binding key (direct, topic exchanges; ignored by fanout).
    public var routingKey: String
    /// Binding arguments (headers exchanges).
    public var arguments: AMQPTable

    /// A binding of `queue` to `exchange` with `routingKey`.
    public init(queue: String, exchange: String, routingKey: String = "", arguments: AMQPTable = [:]) {
        self.queue = queue
        self.exchange = exchange
        self.routingKey = routingKey
        self.arguments = arguments
    }
}

/// A set of exchanges, queues and bindings, declared in that order.
///
/// A connection keeps the topology it was given plus everything declared through it
/// afterwards (minus what was deleted or unbound through it), and declares all of it again
/// after every reconnection, before consumers are resumed and queued publishes are sent.
public struct AMQPTopology: Sendable, Hashable {
    /// Exchanges, declared first.
    public var exchanges: [AMQPExchange]
    /// Queues, declared after the exchanges.
    public var queues: [AMQPQueue]
    /// Bindings, declared last.
    public var bindings: [AMQPBinding]

    /// A topology of these exchanges, queues and bindings.
    public init(exchanges: [AMQPExchange] = [], queues: [AMQPQueue] = [], bindings: [AMQPBinding] = []) {
        self.exchanges = exchanges
        self.queues = queues
        self.bindings = bindings
    }

    mutating func record(_ exchange: AMQPExchange) {
        if let index = exchanges.firstIndex(where: { $0.name == exchange.name }) {
            exchanges[index] = exchange
        } else {
            exchanges.append(exchange)
        }
    }

    mutating func record(_ queue: AMQPQueue) {
        guard !queue.name.isEmpty else { return }
        if let index = queues.firstIndex(where: { $0.name == queue.name }) {
            queues[index] = queue
        } else {
            queues.append(queue)
        }
    }

    mutating func record(_ binding: AMQPBinding) {
        if !bindings.contains(binding) { bindings.append(binding) }
    }

    mutating func forget(_ binding: AMQPBinding) { bindings.removeAll { $0 == binding } }

    mutating func forgetQueue(_ name: String) {
        queues.removeAll { $0.name == name }
        bindings.removeAll { $0.queue == name }
    }

    mutating func forgetExchange(_ name: String) {
        exchanges.removeAll { $0.name == name }
        bindings.removeAll { $0.exchange == name }
    }
}

/// What the broker says about a queue: its (possibly generated) name and how many ready
/// messages and consumers it has.
public struct AMQPQueueState: Sendable, Hashable {
    /// The queue name (the generated one for a server-named queue).
    public var name: String
    /// Messages ready for delivery (not counting unacked ones).
    public var messageCount: UInt32
    /// Consumers subscribed to the queue.
    public var consumerCount: UInt32

    /// A queue state.
    public init(name: String, messageCount: UInt32, consumerCount: UInt32) {
        self.name = name
        self.messageCount = messageCount
        self.consumerCount = consumerCount
    }
}
