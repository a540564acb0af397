// AMQP: messages and their basic-class properties, and their conversion to and from
// rabbitmq-c's `amqp_basic_properties_t`.

import CRabbitMQ

/// Whether the broker writes a message to disk.
public enum AMQPDeliveryMode: UInt8, Sendable, Hashable {
    case transient = 1
    /// Survives a broker restart when it sits in a durable queue.
    case persistent = 2
}

/// The properties (headers) of a message. `nil` fields are not sent.
public struct AMQPProperties: Sendable, Hashable {
    /// MIME type of the body, e.g. `application/json`.
    public var contentType: String?
    /// Encoding of the body, e.g. `gzip`.
    public var contentEncoding: String?
    /// Application headers. Empty means none. Dead-lettered messages carry `x-death` here.
    public var headers: AMQPTable
    /// Default ``AMQPDeliveryMode/persistent``.
    public var deliveryMode: AMQPDeliveryMode?
    /// 0...255; a queue with `x-max-priority` n delivers higher priorities (capped at n) first.
    public var priority: UInt8?
    /// Application correlation identifier.
    public var correlationId: String?
    /// Queue (routing key) to reply to.
    public var replyTo: String?
    /// Per-message TTL, sent as whole milliseconds.
    public var expiration: Duration?
    /// Application message identifier (used to match returns of mandatory publishes).
    public var messageId: String?
    /// Seconds since the Unix epoch.
    public var timestamp: UInt64?
    /// Application message type name.
    public var type: String?
    /// The publishing user; RabbitMQ checks it against the connection's user.
    public var userId: String?
    /// The publishing application.
    public var appId: String?

    /// Properties; everything `nil` (not sent) except ``deliveryMode`` (persistent).
    public init(contentType: String? = nil, contentEncoding: String? = nil, headers: AMQPTable = [:],
                deliveryMode: AMQPDeliveryMode? = .persistent, priority: UInt8? = nil, correlationId: String? = nil,
                replyTo: String? = nil, expiration: Duration? = nil, messageId: String? = nil, timestamp: UInt64? = nil,
                type: String? = nil, userId: String? = nil, appId: String? = nil) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.deliveryMode = deliveryMode
        self.priority = priority
        self.correlationId = correlationId
        self.replyTo = replyTo
        self.expiration = expiration
        self.messageId = messageId
        self.timestamp = timestamp
        self.type = type
        self.userId = userId
        self.appId = appId
    }
}

/// A message to publish: a body and its properties (persistent by default).
public struct AMQPMessage: Sendable, Hashable {
    /// The body bytes (the library does not look at them).
    public var body: [UInt8]
    /// The properties.
    public var properties: AMQPProperties

    /// A message with this body.
    public init(body: [UInt8], properties: AMQPProperties = AMQPProperties()) {
        self.body = body
        self.properties = properties
    }

    /// A message whose body is the UTF-8 of `text`.
    public init(_ text: String, properties: AMQPProperties = AMQPProperties()) {
        self.init(body: Array(text.utf8), properties: properties)
    }
}

// MARK: - C conversion

extension AMQPProperties {
    /// The properties as rabbitmq-c wants them, built in `arena`. `messageIdOverride` is
    /// used instead of ``messageId`` when given (mandatory publishes get one).
    func c(in arena: CArena, messageIdOverride: String? = nil) -> amqp_basic_properties_t {
        var p = amqp_basic_properties_t()
        var flags: UInt32 = 0
        func set(_ value: String?, _ flag: Int32, _ field: WritableKeyPath<amqp_basic_properties_t, amqp_bytes_t>) {
            guard let value else { return }
            p[keyPath: field] = arena.bytes(value)
            flags |= UInt32(flag)
        }
        set(contentType, AMQP_BASIC_CONTENT_TYPE_FLAG, \.content_type)
        set(contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG, \.content_encoding)
        if !headers.isEmpty {
            p.headers = arena.table(headers)
            flags |= UInt32(AMQP_BASIC_HEADERS_FLAG)
        }
        if let deliveryMode {
            p.delivery_mode = deliveryMode.rawValue
            flags |= UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG)
        }
        if let priority {
            p.priority = priority
            flags |= UInt32(AMQP_BASIC_PRIORITY_FLAG)
        }
        set(correlationId, AMQP_BASIC_CORRELATION_ID_FLAG, \.correlation_id)
        set(replyTo, AMQP_BASIC_REPLY_TO_FLAG, \.reply_to)
        set(expiration.map { String(max($0.milliseconds, 0)) }, AMQP_BASIC_EXPIRATION_FLAG, \.expiration)
        set(messageIdOverride ?? messageId, AMQP_BASIC_MESSAGE_ID_FLAG, \.message_id)
        if let timestamp {
            p.timestamp = timestamp
            flags |= UInt32(AMQP_BASIC_TIMESTAMP_FLAG)
        }
        set(type, AMQP_BASIC_TYPE_FLAG, \.type)
        set(userId, AMQP_BASIC_USER_ID_FLAG, \.user_id)
        set(appId, AMQP_BASIC_APP_ID_FLAG, \.app_id)
        p._flags = flags
        return p
    }

    /// A copy of properties decoded by rabbitmq-c.
    init(_ p: amqp_basic_properties_t) {
        let flags = p._flags
        func has(_ flag: Int32) -> Bool { flags & UInt32(flag) != 0 }
        func string(_ flag: Int32, _ bytes: amqp_bytes_t) -> String? { has(flag) ? bytes.string : nil }
        self.init(
            contentType: string(AMQP_BASIC_CONTENT_TYPE_FLAG, p.content_type),
            contentEncoding: string(AMQP_BASIC_CONTENT_ENCODING_FLAG, p.content_encoding),
            headers: has(AMQP_BASIC_HEADERS_FLAG) ? AMQPTable(p.headers) : [:],
            deliveryMode: has(AMQP_BASIC_DELIVERY_MODE_FLAG) ? AMQPDeliveryMode(rawValue: p.delivery_mode) : nil,
            priority: has(AMQP_BASIC_PRIORITY_FLAG) ? p.priority : nil,
            correlationId: string(AMQP_BASIC_CORRELATION_ID_FLAG, p.correlation_id),
            replyTo: string(AMQP_BASIC_REPLY_TO_FLAG, p.reply_to),
            expiration: string(AMQP_BASIC_EXPIRATION_FLAG, p.expiration).flatMap { Int64($0) }.map { .milliseconds($0) },
            messageId: string(AMQP_BASIC_MESSAGE_ID_FLAG, p.message_id),
            timestamp: has(AMQP_BASIC_TIMESTAMP_FLAG) ? p.timestamp : nil,
            type: string(AMQP_BASIC_TYPE_FLAG, p.type),
            userId: string(AMQP_BASIC_USER_ID_FLAG, p.user_id),
            appId: string(AMQP_BASIC_APP_ID_FLAG, p.app_id))
    }
}
