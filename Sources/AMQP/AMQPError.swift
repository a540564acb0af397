// AMQP: the one error type of the library, and the one place where rabbitmq-c results
// (`amqp_rpc_reply_t`, `amqp_status_enum`) and server close reasons become an `AMQPError`.

import CRabbitMQ

/// Every error the `AMQP` library throws.
///
/// ``kind`` says what went wrong in terms a caller can act on; when the broker closed a
/// channel or the connection, ``replyCode`` and ``replyText`` carry its reason (for example
/// `404 NOT_FOUND - no queue 'x' in vhost '/'` or `406 PRECONDITION_FAILED - inequivalent
/// arg 'x-max-priority'`). ``libraryStatus`` is the rabbitmq-c status code when the error
/// came from the library. ``context`` names the operation (`queue.declare 'parts'`).
public struct AMQPError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The broad class of an ``AMQPError``.
    public enum Kind: String, Sendable, Hashable {
        /// The caller passed something invalid (a malformed URL, a name longer than 255
        /// bytes, a prefetch of 0, ...). Nothing was sent.
        case invalidArgument
        /// A TCP connection or the AMQP handshake to the broker could not be established.
        case connectionFailed
        /// The broker refused the credentials (403 ACCESS_REFUSED during login).
        case authenticationFailed
        /// An established connection broke: socket error, EOF, or missed heartbeats.
        case connectionLost
        /// The broker closed the connection (``replyCode`` says why, e.g. 320 CONNECTION_FORCED).
        case connectionClosedByServer
        /// The broker closed a channel because of an operation on it (``replyCode``: 403,
        /// 404 NOT_FOUND, 405 RESOURCE_LOCKED, 406 PRECONDITION_FAILED, ...). The library
        /// reopens the channel for the next operation.
        case channelClosedByServer
        /// An operation did not complete within its deadline.
        case timeout
        /// The connection is down and reconnecting; synchronous operations fail fast
        /// instead of waiting. Retry after the state is `.connected` again.
        case notConnected
        /// The broker has blocked the connection (connection.blocked: a memory or disk alarm)
        /// and reads nothing from it until the alarm clears; synchronous operations fail fast
        /// meanwhile and publishes wait. Publish and consume on separate connections so that
        /// consumers keep working.
        case blocked
        /// The connection was closed by the application, or gave up reconnecting.
        case closed
        /// The broker rejected a published message (basic.nack).
        case nacked
        /// A `mandatory` message could not be routed to any queue (basic.return, 312 NO_ROUTE).
        case unroutable
        /// A published message was written to a channel or connection that died before its
        /// confirm arrived: the broker may or may not have it. Republish for at-least-once.
        case unconfirmed
        /// An ack/nack/reject for a delivery that came over a channel or connection that is
        /// gone. Nothing was sent: the broker has requeued the message already.
        case staleDelivery
        /// The delivery was already acked, nacked or rejected.
        case alreadySettled
        /// The broker cancelled the consumer (its queue was deleted, or it failed over).
        case consumerCancelled
        /// The waiting task was cancelled. The operation itself may still complete.
        case cancelled
        /// The broker sent something this library does not expect at that point.
        case protocolError
        /// Any other rabbitmq-c failure (see ``libraryStatus``).
        case library
    }

    /// AMQP 0-9-1 reply codes as the broker sends them in channel.close / connection.close
    /// and basic.return.
    public enum ReplyCode {
        public static let contentTooLarge: UInt16 = 311
        public static let noRoute: UInt16 = 312
        public static let noConsumers: UInt16 = 313
        public static let connectionForced: UInt16 = 320
        public static let invalidPath: UInt16 = 402
        public static let accessRefused: UInt16 = 403
        public static let notFound: UInt16 = 404
        public static let resourceLocked: UInt16 = 405
        public static let preconditionFailed: UInt16 = 406
        public static let frameError: UInt16 = 501
        public static let syntaxError: UInt16 = 502
        public static let commandInvalid: UInt16 = 503
        public static let channelError: UInt16 = 504
        public static let unexpectedFrame: UInt16 = 505
        public static let resourceError: UInt16 = 506
        public static let notAllowed: UInt16 = 530
        public static let notImplemented: UInt16 = 540
        public static let internalError: UInt16 = 541
    }

    /// What went wrong.
    public var kind: Kind
    /// The operation that failed, e.g. `queue.declare 'parts'`.
    public var context: String
    /// The broker's reply code, when the broker closed a channel or the connection or
    /// returned a message.
    public var replyCode: UInt16?
    /// The broker's reply text that goes with ``replyCode``.
    public var replyText: String?
    /// The rabbitmq-c status code (`amqp_status_enum`), when the library reported the error.
    public var libraryStatus: Int32?

    /// Makes an error. Library code builds errors through the mapping functions below.
    public init(
        _ kind: Kind, _ context: String, replyCode: UInt16? = nil, replyText: String? = nil,
        libraryStatus: Int32? = nil
    ) {
        self.kind = kind
        self.context = context
        self.replyCode = replyCode
        self.replyText = replyText
        self.libraryStatus = libraryStatus
    }

    /// True when the broker answered 404 NOT_FOUND (missing queue or exchange).
    public var isNotFound: Bool { replyCode == ReplyCode.notFound }
    /// True when the broker answered 406 PRECONDITION_FAILED (e.g. a re-declaration with
    /// different arguments).
    public var isPreconditionFailed: Bool { replyCode == ReplyCode.preconditionFailed }
    /// True for failures of the transport that the automatic reconnection deals with.
    public var isConnectionLevel: Bool {
        switch kind {
        case .connectionFailed, .connectionLost, .connectionClosedByServer, .notConnected, .timeout: true
        default: false
        }
    }

    public var description: String {
        var text = "AMQP \(kind.rawValue): \(context)"
        if let replyCode {
            text += ": \(replyCode)"
            if let replyText { text += " \(replyText)" }
        } else if let replyText {
            text += ": \(replyText)"
        }
        if let libraryStatus, replyCode == nil, replyText == nil {
            text += ": \(String(cString: amqp_error_string2(libraryStatus)))"
        } else if let libraryStatus, replyCode == nil {
            text += " (\(String(cString: amqp_error_string2(libraryStatus))))"
        }
        return text
    }
}

// MARK: - The choke point: rabbitmq-c results and server close reasons → AMQPError

extension AMQPError {
    /// Maps a rabbitmq-c status code (negative `amqp_status_enum`) to an error.
    /// `connecting` tells transport failures while establishing a connection
    /// (``Kind/connectionFailed``) from failures of an established one (``Kind/connectionLost``).
    static func status(_ status: Int32, _ context: String, connecting: Bool = false) -> AMQPError {
        let kind: Kind
        switch status {
        case AMQP_STATUS_TIMEOUT.rawValue:
            kind = .timeout
        case AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue, AMQP_STATUS_CONNECTION_CLOSED.rawValue,
             AMQP_STATUS_SOCKET_ERROR.rawValue, AMQP_STATUS_SOCKET_CLOSED.rawValue,
             AMQP_STATUS_TCP_ERROR.rawValue:
            kind = connecting ? .connectionFailed : .connectionLost
        case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED.rawValue, AMQP_STATUS_INCOMPATIBLE_AMQP_VERSION.rawValue,
             AMQP_STATUS_BROKER_UNSUPPORTED_SASL_METHOD.rawValue, AMQP_STATUS_SOCKET_INUSE.rawValue:
            kind = .connectionFailed
        case AMQP_STATUS_BAD_URL.rawValue, AMQP_STATUS_INVALID_PARAMETER.rawValue,
             AMQP_STATUS_TABLE_TOO_BIG.rawValue, AMQP_STATUS_UNSUPPORTED.rawValue:
            kind = .invalidArgument
        case AMQP_STATUS_BAD_AMQP_DATA.rawValue, AMQP_STATUS_UNKNOWN_CLASS.rawValue,
             AMQP_STATUS_UNKNOWN_METHOD.rawValue, AMQP_STATUS_WRONG_METHOD.rawValue,
             AMQP_STATUS_UNEXPECTED_STATE.rawValue:
            kind = .protocolError
        default:
            kind = .library
        }
        return AMQPError(kind, context, libraryStatus: status)
    }

    /// Maps an `amqp_rpc_reply_t` to an error, or `nil` when the reply is normal.
    static func reply(_ reply: amqp_rpc_reply_t, _ context: String, connecting: Bool = false) -> AMQPError? {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return nil
        case AMQP_RESPONSE_NONE:
            return AMQPError(.protocolError, context, replyText: "missing RPC reply")
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return status(reply.library_error, context, connecting: connecting)
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            return serverClose(reply.reply, context, connecting: connecting)
                ?? AMQPError(.protocolError, context, replyText: "unexpected method \(reply.reply.id) in reply")
        default:
            return AMQPError(.protocolError, context, replyText: "unknown reply type \(reply.reply_type.rawValue)")
        }
    }

    /// Maps a channel.close or connection.close method sent by the broker to an error, or
    /// `nil` for any other method.
    static func serverClose(_ method: amqp_method_t, _ context: String, connecting: Bool = false) -> AMQPError? {
        switch method.id {
        case AMQP_CHANNEL_CLOSE_METHOD:
            guard let close = method.decoded?.assumingMemoryBound(to: amqp_channel_close_t.self).pointee else {
                return AMQPError(.channelClosedByServer, context)
            }
            return AMQPError(
                .channelClosedByServer, context, replyCode: close.reply_code, replyText: close.reply_text.string)
        case AMQP_CONNECTION_CLOSE_METHOD:
            guard let close = method.decoded?.assumingMemoryBound(to: amqp_connection_close_t.self).pointee else {
                return AMQPError(.connectionClosedByServer, context)
            }
            let kind: Kind = connecting && close.reply_code == ReplyCode.accessRefused
                ? .authenticationFailed : (connecting ? .connectionFailed : .connectionClosedByServer)
            return AMQPError(kind, context, replyCode: close.reply_code, replyText: close.reply_text.string)
        default:
            return nil
        }
    }

    /// This error seen by a publish whose confirm can no longer arrive: ``Kind/unconfirmed``,
    /// keeping the cause's reply code and text.
    func asUnconfirmed(_ context: String) -> AMQPError {
        AMQPError(.unconfirmed, "\(context) (\(self.context): \(kind.rawValue))",
                  replyCode: replyCode, replyText: replyText, libraryStatus: libraryStatus)
    }
}

extension amqp_bytes_t {
    /// The bytes as a Swift string (UTF-8, invalid sequences replaced).
    var string: String {
        guard len > 0, let bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: bytes, count: len), as: UTF8.self)
    }

    /// A copy of the bytes.
    var array: [UInt8] {
        guard len > 0, let bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: bytes, count: len))
    }
}
