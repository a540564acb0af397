// Authentication and authorization (DESIGN §9). Bearer tokens `talus_<random>` are stored as the
// lowercase hex SHA-256 of the whole token (`tokens.hash`, unique); the secret is shown once when
// the token is created. Roles: admin > user > slave.
//
// Who may do what (kept deliberately simple):
// - `slave` tokens read image files (`GET|HEAD /api/v1/images/{id}/file`) and tool bundles — nothing else;
// - `user` tokens read every shared resource (os, images, code, tasks, jobs, results, crashes,
//   files, filesets, slaves) so people can use each other's images and tools, but change only
//   what they own (`owner`): their images, tasks, jobs, uploads, files, filesets and tokens;
//   their uploads and tokens are private to them; VNC passwords are shown to the owner only;
// - `admin` tokens do everything, including os, users, other users' tokens and slave drains.

import BSON
import Crypto
import Foundation
import Hummingbird
import Logging
import Mongo
import Synchronization
import TalusCore
import TalusModel

/// The authenticated caller of one request.
public struct Identity: Sendable, Equatable {
    public var user: ObjectId
    public var name: String
    public var role: Role
    public var token: ObjectId

    /// True when the caller is an admin or owns a document whose owner is `owner`.
    func mayModify(owner: ObjectId?) -> Bool { role == .admin || (owner != nil && owner == user) }

    /// Throws 403 unless ``mayModify(owner:)``.
    func requireOwner(_ owner: ObjectId?, _ what: String) throws {
        guard mayModify(owner: owner) else {
            throw APIProblem.forbidden("\(what) belongs to another user; only its owner or an admin may change it")
        }
    }
}

/// What a route requires of the caller.
public enum Access: Sendable, Hashable {
    /// No token needed (`/healthz`, and `/metrics` when `http.metrics_public`).
    case open
    /// A token of at least this role.
    case role(Role)
    /// Image files and tool bundles: slave, user or admin tokens.
    case slaveRead
}

/// Token secrets and their hashes.
public enum Tokens {
    /// Every token starts with this, so secret scanners and people recognise it.
    public static let scheme = "talus_"

    /// A fresh token secret: `talus_` + 43 URL-safe characters (32 random bytes).
    public static func generate() -> String { scheme + randomToken(bytes: 32) }

    /// The stored form: lowercase hex SHA-256 of the token text.
    public static func hash(_ token: String) -> String { hexString(SHA256.hash(data: Data(token.utf8))) }

    /// What listings show to tell tokens apart (`talus_AbCd…`).
    public static func prefix(_ token: String) -> String { String(token.prefix(scheme.count + 6)) }
}

/// Verifies bearer tokens against `tokens` and `users`, with a short cache so a busy client does
/// not cost two queries per request. Revocations made through this process drop the cache entry
/// at once.
public final class Authenticator: Sendable {
    struct Entry: Sendable {
        let identity: Identity
        let tokenExpires: Date?
        let checked: ContinuousClock.Instant
    }

    let tokens: MongoCollection<TokenDocument>
    let users: MongoCollection<UserDocument>
    let ttl: Duration
    let logger: Logger
    private let cache = Mutex<[String: Entry]>([:])
    /// Last `last_used` write per token, to write it at most once a minute.
    private let lastUsedWrites = Mutex<[ObjectId: ContinuousClock.Instant]>([:])

    init(database: MongoDatabase, ttl: Duration, logger: Logger) {
        tokens = database.collection(TokenDocument.collection.rawValue, as: TokenDocument.self)
        users = database.collection(UserDocument.collection.rawValue, as: UserDocument.self)
        self.ttl = ttl
        self.logger = logger
    }

    /// The identity behind `Authorization: Bearer …`, nil when the header is absent; throws 401
    /// for a malformed, unknown, expired or revoked token or a disabled user.
    func identify(_ authorization: String?) async throws -> Identity? {
        guard let authorization else { return nil }
        let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw APIProblem(.unauthorized, "the Authorization header must be `Bearer talus_…`",
                             headers: [.wwwAuthenticate: "Bearer realm=\"talus\""])
        }
        let token = String(parts[1]).trimmingCharacters(in: .whitespaces)
        guard token.hasPrefix(Tokens.scheme), token.count < 200 else { throw Self.rejected }
        let hash = Tokens.hash(token)
        let now = ContinuousClock.now
        if let hit = cache.withLock({ $0[hash] }), now - hit.checked < ttl {
            if let e = hit.tokenExpires, e <= Date() { throw Self.rejected }
            return hit.identity
        }
        guard let doc = try await tokens.findOne(["hash": .string(hash)]) else {
            cache.withLock { _ = $0.removeValue(forKey: hash) }
            throw Self.rejected
        }
        if let e = doc.expires, e <= Date() { throw Self.rejected }
        guard let user = try await users.findOne(["_id": .objectId(doc.user)]), !user.disabled else { throw Self.rejected }
        let identity = Identity(user: user.id, name: user.name, role: user.role, token: doc.id)
        cache.withLock { $0[hash] = Entry(identity: identity, tokenExpires: doc.expires, checked: now) }
        noteUse(doc.id)
        return identity
    }

    static var rejected: APIProblem {
        APIProblem(.unauthorized, "the token is unknown, expired or revoked; log in again with a valid token (talus login)",
                   headers: [.wwwAuthenticate: "Bearer realm=\"talus\", error=\"invalid_token\""])
    }

    /// Forgets cached verifications (after a revocation or a user change).
    func invalidate(tokenHash: String? = nil) {
        cache.withLock { c in
            if let tokenHash { c.removeValue(forKey: tokenHash) } else { c.removeAll() }
        }
    }

    private func noteUse(_ token: ObjectId) {
        let now = ContinuousClock.now
        let due = lastUsedWrites.withLock { m -> Bool in
            if let last = m[token], now - last < .seconds(60) { return false }
            m[token] = now
            return true
        }
        guard due else { return }
        let tokens = self.tokens, logger = self.logger
        Task {
            do {
                try await tokens.updateOne(["_id": .objectId(token)], ["$set": ["last_used": .datetime(bsonNow())]])
            } catch {
                logger.debug("could not record token use", metadata: ["error": "\(error)"])
            }
        }
    }
}
