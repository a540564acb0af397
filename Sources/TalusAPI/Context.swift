// The request context every handler gets: Hummingbird's core storage plus the caller.

import Hummingbird
import Logging
import NIOCore

/// Request context of the Talus API.
public struct APIRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The caller, set by ``RequestObserver`` when the request carries a valid token.
    public var identity: Identity?
    /// The peer's address, for the request log.
    public let remoteAddress: String?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        identity = nil
        remoteAddress = source.channel.remoteAddress?.ipAddress
    }

    /// JSON request bodies are read through ``ObjectReader`` with `http.max_body`; this bound
    /// only applies to Hummingbird's own decoding, which the API does not use.
    public var maxUploadSize: Int { 1 << 20 }

    /// The caller; 401 without a token (routes with ``Access/open`` never call this).
    func caller() throws -> Identity {
        guard let identity else { throw APIProblem.unauthorized }
        return identity
    }
}
