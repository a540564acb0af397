// LibvirtError: the one error type of this module, and the one place that reads libvirt's
// thread-local last error.

import CLibvirt

/// An error from libvirt, or from this wrapper's own checks before it calls libvirt.
///
/// libvirt keeps its last error per thread. This wrapper runs each libvirt call on a thread it
/// owns and copies the error on that same thread right after the call fails
/// (``LibvirtError/last(_:)``), so the fields here always belong to the failing call.
///
/// Errors raised by the wrapper itself (bad arguments, a closed connection, malformed XML handed
/// to ``DomainDescription``) use the same codes libvirt would (``Code/invalidArgument``,
/// ``Code/invalidConnection``, ``Code/xmlError``) with ``domain`` ``ErrorDomain/none``.
public struct LibvirtError: Error, Sendable, Hashable, CustomStringConvertible {
    /// libvirt's error number (`virErrorNumber`).
    public var code: Code
    /// The libvirt subsystem that raised the error (`virErrorDomain`).
    public var domain: ErrorDomain
    /// How serious libvirt says it is.
    public var level: Level
    /// libvirt's message, e.g. `Requested operation is not valid: domain is not running`.
    public var message: String
    /// The libvirt function (or wrapper operation) that failed, e.g. `virDomainDestroy`.
    public var operation: String

    /// Makes an error; mostly for the wrapper itself and for tests.
    public init(
        code: Code, domain: ErrorDomain = .none, level: Level = .error, message: String, operation: String
    ) {
        self.code = code
        self.domain = domain
        self.level = level
        self.message = message
        self.operation = operation
    }

    public var description: String {
        "\(operation): \(message) (libvirt error \(code.rawValue), domain \(domain.rawValue))"
    }

    /// The domain does not exist (`VIR_ERR_NO_DOMAIN`): a lookup by a name or UUID nobody defined,
    /// or a transient domain that stopped meanwhile.
    public var isNoDomain: Bool { code == .noDomain }

    /// The operation does not apply to the object's current state (`VIR_ERR_OPERATION_INVALID`),
    /// e.g. destroying a domain that is not running or starting one that already runs.
    public var isOperationInvalid: Bool { code == .operationInvalid }

    /// A domain with this name or UUID already exists (`VIR_ERR_DOM_EXIST`, or libvirt's
    /// `operation failed: domain '…' already exists with uuid …`).
    public var isDomainExists: Bool {
        code == .domainExists || (code == .operationFailed && message.contains("already exists"))
    }

    /// The XML was malformed or described something libvirt refuses.
    public var isInvalidXML: Bool {
        code == .xmlError || code == .xmlDetail || code == .xmlInvalidSchema || code == .configUnsupported
    }

    /// A bad argument (`VIR_ERR_INVALID_ARG`), from libvirt or from this wrapper's checks.
    public var isInvalidArgument: Bool { code == .invalidArgument }

    /// The connection is gone or unusable (closed by us, libvirtd restarted, keepalive timeout, RPC
    /// failure). The remedy is to open a new ``LibvirtConnection``.
    public var isConnectionFailure: Bool {
        code == .noConnect || code == .invalidConnection || code == .rpc || domain == .rpc
    }

    /// The domain has no metadata element for the asked namespace (`VIR_ERR_NO_DOMAIN_METADATA`).
    public var isNoMetadata: Bool { code == .noDomainMetadata }

    /// libvirt's error number. Compare with the named constants; others are kept as they come.
    public struct Code: RawRepresentable, Sendable, Hashable {
        public var rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        init(_ number: virErrorNumber) { rawValue = Int32(number.rawValue) }

        public static let ok = Code(VIR_ERR_OK)
        public static let internalError = Code(VIR_ERR_INTERNAL_ERROR)
        public static let noSupport = Code(VIR_ERR_NO_SUPPORT)
        public static let noConnect = Code(VIR_ERR_NO_CONNECT)
        public static let invalidConnection = Code(VIR_ERR_INVALID_CONN)
        public static let invalidDomain = Code(VIR_ERR_INVALID_DOMAIN)
        public static let invalidArgument = Code(VIR_ERR_INVALID_ARG)
        public static let operationFailed = Code(VIR_ERR_OPERATION_FAILED)
        public static let xmlError = Code(VIR_ERR_XML_ERROR)
        public static let domainExists = Code(VIR_ERR_DOM_EXIST)
        public static let operationDenied = Code(VIR_ERR_OPERATION_DENIED)
        public static let xmlDetail = Code(VIR_ERR_XML_DETAIL)
        public static let systemError = Code(VIR_ERR_SYSTEM_ERROR)
        public static let rpc = Code(VIR_ERR_RPC)
        public static let noDomain = Code(VIR_ERR_NO_DOMAIN)
        public static let authFailed = Code(VIR_ERR_AUTH_FAILED)
        public static let operationInvalid = Code(VIR_ERR_OPERATION_INVALID)
        public static let configUnsupported = Code(VIR_ERR_CONFIG_UNSUPPORTED)
        public static let operationTimeout = Code(VIR_ERR_OPERATION_TIMEOUT)
        public static let argumentUnsupported = Code(VIR_ERR_ARGUMENT_UNSUPPORTED)
        public static let noDomainMetadata = Code(VIR_ERR_NO_DOMAIN_METADATA)
        public static let operationUnsupported = Code(VIR_ERR_OPERATION_UNSUPPORTED)
        public static let accessDenied = Code(VIR_ERR_ACCESS_DENIED)
        public static let xmlInvalidSchema = Code(VIR_ERR_XML_INVALID_SCHEMA)
    }

    /// The libvirt subsystem that raised an error (`virErrorDomain`).
    public struct ErrorDomain: RawRepresentable, Sendable, Hashable {
        public var rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        init(_ domain: virErrorDomain) { rawValue = Int32(domain.rawValue) }

        public static let none = ErrorDomain(VIR_FROM_NONE)
        public static let domain = ErrorDomain(VIR_FROM_DOM)
        public static let qemu = ErrorDomain(VIR_FROM_QEMU)
        public static let remote = ErrorDomain(VIR_FROM_REMOTE)
        public static let rpc = ErrorDomain(VIR_FROM_RPC)
        public static let test = ErrorDomain(VIR_FROM_TEST)
        public static let xml = ErrorDomain(VIR_FROM_XML)
        public static let capabilities = ErrorDomain(VIR_FROM_CAPABILITIES)
    }

    /// How serious libvirt says an error is (`virErrorLevel`).
    public enum Level: Sendable, Hashable {
        case none, warning, error

        init(_ level: virErrorLevel) {
            switch level {
            case VIR_ERR_NONE: self = .none
            case VIR_ERR_WARNING: self = .warning
            default: self = .error
            }
        }
    }
}

extension LibvirtError {
    /// Copies libvirt's last error of the *calling thread*. Call it on the thread that made the
    /// failing libvirt call, right after that call (see ``LibvirtRuntime/call(_:_:)``).
    static func last(_ operation: String) -> LibvirtError {
        guard let error = virGetLastError() else {
            return LibvirtError(
                code: .internalError, message: "libvirt reported a failure without error details",
                operation: operation)
        }
        let e = error.pointee
        let message = e.message.map { String(cString: $0) } ?? "unknown libvirt error"
        return LibvirtError(
            code: Code(rawValue: e.code), domain: ErrorDomain(rawValue: e.domain), level: Level(e.level),
            message: message, operation: operation)
    }

    /// An invalid argument caught by the wrapper before calling libvirt.
    static func invalidArgument(_ message: String, operation: String) -> LibvirtError {
        LibvirtError(code: .invalidArgument, message: message, operation: operation)
    }

    /// The operation was asked of a connection that ``LibvirtConnection/close()`` closed.
    static func closed(_ uri: String, operation: String) -> LibvirtError {
        LibvirtError(code: .invalidConnection, message: "the connection to \(uri) is closed", operation: operation)
    }
}
