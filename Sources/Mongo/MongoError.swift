// MongoError: the one error type of the Mongo module, mapped from libmongoc's bson_error_t (and
// the server reply) at one choke point, BSONBridge.swift.

import BSON

/// An error from MongoDB, libmongoc or the Swift layer above it.
///
/// `domain` and `code` are libmongoc's (error API version 2: errors the server reports have domain
/// ``Domain/server`` and the server's code, e.g. 11000 for a duplicate key). Errors raised in Swift
/// (encoding a model, a closed client) use the domains ``Domain/codec`` and ``Domain/client``.
public struct MongoError: Error, Sendable, CustomStringConvertible {
    /// libmongoc's `mongoc_error_domain_t`, plus two Swift-side domains.
    public struct Domain: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        public static let client = Domain(rawValue: 1)
        public static let stream = Domain(rawValue: 2)
        public static let `protocol` = Domain(rawValue: 3)
        public static let cursor = Domain(rawValue: 4)
        public static let query = Domain(rawValue: 5)
        public static let insert = Domain(rawValue: 6)
        public static let sasl = Domain(rawValue: 7)
        public static let bson = Domain(rawValue: 8)
        public static let matcher = Domain(rawValue: 9)
        public static let namespace = Domain(rawValue: 10)
        public static let command = Domain(rawValue: 11)
        public static let collection = Domain(rawValue: 12)
        public static let gridfs = Domain(rawValue: 13)
        public static let scram = Domain(rawValue: 14)
        public static let serverSelection = Domain(rawValue: 15)
        public static let writeConcern = Domain(rawValue: 16)
        /// An error the server returned (`ok: 0`, a write error).
        public static let server = Domain(rawValue: 17)
        public static let transaction = Domain(rawValue: 18)
        public static let clientSideEncryption = Domain(rawValue: 19)
        public static let pool = Domain(rawValue: 20)
        /// Swift side: a value could not be encoded to or decoded from BSON.
        public static let codec = Domain(rawValue: 1000)

        public var description: String {
            switch self {
            case .client: "client"
            case .stream: "stream"
            case .protocol: "protocol"
            case .cursor: "cursor"
            case .query: "query"
            case .insert: "insert"
            case .bson: "bson"
            case .command: "command"
            case .collection: "collection"
            case .serverSelection: "serverSelection"
            case .writeConcern: "writeConcern"
            case .server: "server"
            case .transaction: "transaction"
            case .codec: "codec"
            default: "domain\(rawValue)"
            }
        }
    }

    /// Where the error comes from.
    public let domain: Domain
    /// The libmongoc or server error code.
    public let code: Int
    /// The human-readable message.
    public let message: String
    /// The server's reply or error document when there is one (write errors, `errorLabels`...).
    public let reply: BSONDocument?

    public init(domain: Domain, code: Int, message: String, reply: BSONDocument? = nil) {
        self.domain = domain
        self.code = code
        self.message = message
        self.reply = reply.flatMap { $0.isEmpty ? nil : $0 }
    }

    public var description: String {
        var text = "MongoError(\(domain) \(code)): \(message)"
        if let name = codeName { text += " [\(name)]" }
        if !labels.isEmpty { text += " labels: \(labels.joined(separator: ","))" }
        return text
    }

    /// The server's `codeName` ("DuplicateKey", "IllegalOperation"...), when it sent one.
    public var codeName: String? {
        reply?["codeName"]?.stringValue ?? firstWriteError?["codeName"]?.stringValue
    }

    /// The `errorLabels` of the reply ("RetryableWriteError", "ResumableChangeStreamError"...).
    public var labels: [String] {
        (reply?["errorLabels"]?.arrayValue ?? []).compactMap(\.stringValue)
    }

    private var firstWriteError: BSONValue? { reply?["writeErrors"]?.arrayValue?.first }

    private var serverCodes: [Int] {
        var codes = [code]
        if let c = reply?["code"]?.intValue { codes.append(c) }
        for e in reply?["writeErrors"]?.arrayValue ?? [] {
            if let c = e["code"]?.intValue { codes.append(c) }
        }
        return codes
    }

    /// A unique index refused the write (server code 11000, 11001 or 12582).
    public var isDuplicateKey: Bool {
        serverCodes.contains { $0 == 11000 || $0 == 11001 || $0 == 12582 }
    }

    /// The server could not be reached: no suitable server within `serverSelectionTimeoutMS`, or
    /// the connection failed or broke.
    public var isNetworkError: Bool {
        domain == .stream || domain == .serverSelection || labels.contains("NetworkError")
    }

    /// No server could be selected (it is down, unreachable, or not a primary).
    public var isServerSelectionError: Bool { domain == .serverSelection }

    /// Retrying the operation later may succeed: a network error, a primary change, shutdown, or
    /// a reply labelled retryable by the server.
    public var isRetryable: Bool {
        if isNetworkError { return true }
        if labels.contains(where: { ["RetryableWriteError", "ResumableChangeStreamError", "TransientTransactionError"].contains($0) }) {
            return true
        }
        guard domain == .server || domain == .query || domain == .command || domain == .writeConcern else { return false }
        return serverCodes.contains { Self.retryableServerCodes.contains($0) }
    }

    /// Codes the MongoDB retryable-reads/writes specifications treat as retryable.
    static let retryableServerCodes: Set<Int> = [
        6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 234, 133,
    ]

    /// An error raised in Swift while encoding or decoding a value.
    static func codec(_ error: any Error, _ what: String) -> MongoError {
        MongoError(domain: .codec, code: 0, message: "\(what): \(error)")
    }
}
