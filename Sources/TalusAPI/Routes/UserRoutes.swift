// Users (admin) and tokens (each user their own; admins anyone's).

import BSON
import Foundation
import Hummingbird
import Mongo
import TalusModel

/// What the API shows of a token: never the hash.
struct TokenView: Encodable {
    var id: ObjectId
    var user: ObjectId
    var name: String
    var prefix: String
    var expires: Date?
    var lastUsed: Date?
    var created: Date
    var tags: Tags
    /// The secret, only in the answer to the create request.
    var token: String?

    init(_ t: TokenDocument, secret: String? = nil) {
        id = t.id; user = t.user; name = t.name; prefix = t.prefix; expires = t.expires; lastUsed = t.lastUsed
        created = t.created; tags = t.tags; token = secret
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id", user, name, prefix, expires
        case lastUsed = "last_used"
        case created, tags, token
    }
}

/// Creates the first admin (or, with `force`, another admin or a new token for an existing
/// one). Returns the user and the token secret, which is stored only as a hash.
public func bootstrapAdmin(store: APIStore, name: String, force: Bool) async throws -> (UserDocument, String) {
    if let problem = Validation.nameProblem(name) { throw BootstrapError(message: "invalid name: \(problem)") }
    try await store.ensureIndexes()
    let admins = try await store.users.find(["role": "admin", "disabled": false], options: FindOptions(limit: 5))
    if !admins.isEmpty && !force {
        throw BootstrapError(message: "an admin already exists (\(admins.map(\.name).joined(separator: ", "))); ask them for a token (talus token create), or pass --force to create another admin or a new token for \(name)")
    }
    var user: UserDocument
    if let existing = try await store.users.findOne(["name": .string(name)]) {
        guard force else { throw BootstrapError(message: "user \(name) exists; pass --force to give it a new admin token") }
        user = existing
        user.role = .admin
        user.disabled = false
        user.updated = bsonNow()
        try await store.users.updateOne(["_id": .objectId(user.id)],
                                        ["$set": ["role": "admin", "disabled": false, "updated": .datetime(user.updated)]])
    } else {
        user = UserDocument(name: name, role: .admin)
        try await store.users.insertOne(user)
    }
    let secret = Tokens.generate()
    try await store.tokens.insertOne(TokenDocument(user: user.id, name: "bootstrap", hash: Tokens.hash(secret), prefix: Tokens.prefix(secret)))
    return (user, secret)
}

/// Why `bootstrap-admin` refused.
public struct BootstrapError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

struct UserRoutes: APIRouteCollection {
    static let filters = [Filter.name, Filter("role", .oneOf(Role.allCases.map(\.rawValue))), Filter("disabled", .bool), Filter.tag]

    func register(on router: APIRouter, services s: APIServices) {
        let users = s.store.users
        router.add(.post, "/api/v1/users", .role(.admin)) { request, context in
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name()
            let role = body.enumeration("role", Role.self, required: true)
            let tags = body.tags() ?? []
            try body.check()
            let user = UserDocument(name: name!, role: role!, tags: tags)
            try await s.insert(users, user, unique: "name", value: user.name)
            return try Render.json(user, status: .created, headers: [.location: "/api/v1/users/\(user.id.hex)"])
        }
        router.add(.get, "/api/v1/users", .role(.admin)) { request, context in
            try await s.page(users, ListQuery(request, filters: Self.filters, caller: context.identity)) { $0 }
        }
        router.add(.get, "/api/v1/users/me", .role(.user)) { _, context in
            try Render.json(try await s.fetch(users, try context.caller().user, "user"))
        }
        router.add(.get, "/api/v1/users/{id}", .role(.admin)) { _, context in
            try Render.json(try await s.fetch(users, try s.id(context, "user"), "user"))
        }
        router.add(.patch, "/api/v1/users/{id}", .role(.admin)) { request, context in
            let id = try s.id(context, "user")
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let role = body.enumeration("role", Role.self)
            let disabled = body.bool("disabled")
            let tags = body.tags()
            try body.check()
            var user = try await s.fetch(users, id, "user")
            if user.role == .admin, (role.map { $0 != .admin } ?? false) || disabled == true {
                try await Self.requireAnotherAdmin(users, besides: id)
            }
            var set: BSONDocument = ["updated": .datetime(bsonNow())]
            if let role { set["role"] = .string(role.rawValue); user.role = role }
            if let disabled { set["disabled"] = .bool(disabled); user.disabled = disabled }
            if let tags { set["tags"] = .array(tags.map { .string($0) }); user.tags = tags }
            try await users.updateOne(["_id": .objectId(id)], ["$set": .document(set)])
            s.authenticator.invalidate()
            return try Render.json(try await s.fetch(users, id, "user"))
        }
        router.add(.delete, "/api/v1/users/{id}", .role(.admin)) { _, context in
            let id = try s.id(context, "user")
            let user = try await s.fetch(users, id, "user")
            if user.role == .admin { try await Self.requireAnotherAdmin(users, besides: id) }
            try await s.store.tokens.deleteMany(["user": .objectId(id)])
            try await users.deleteOne(["_id": .objectId(id)])
            s.authenticator.invalidate()
            return Render.noContent()
        }

        // MARK: Tokens
        let tokens = s.store.tokens
        router.add(.post, "/api/v1/tokens", .role(.user)) { request, context in
            let caller = try context.caller()
            var body = try await ObjectReader.body(request, limit: s.config.maxBody)
            let name = body.name()
            let userId = body.objectId("user")
            let days = body.int("expires_in_days", range: 1...3650)
            let tags = body.tags() ?? []
            try body.check()
            let owner = userId ?? caller.user
            if owner != caller.user {
                guard caller.role == .admin else { throw APIProblem.forbidden("only admins create tokens for other users") }
                guard try await users.findOne(["_id": .objectId(owner)]) != nil else {
                    throw APIProblem.invalid("user", "user \(owner.hex) does not exist")
                }
            }
            let secret = Tokens.generate()
            let now = bsonNow()
            let expires = days.map { now.addingTimeInterval(Double($0) * 86_400) }
            let token = TokenDocument(user: owner, name: name!, hash: Tokens.hash(secret), prefix: Tokens.prefix(secret),
                                      expires: expires, tags: tags, now: now)
            try await tokens.insertOne(token)
            return try Render.json(TokenView(token, secret: secret), status: .created,
                                   headers: [.location: "/api/v1/tokens/\(token.id.hex)"])
        }
        router.add(.get, "/api/v1/tokens", .role(.user)) { request, context in
            let caller = try context.caller()
            let query = try ListQuery(request, filters: [Filter("user", .owner), Filter.name], caller: caller)
            if caller.role != .admin, let u = query.filter["user"], u != .objectId(caller.user) {
                throw APIProblem.forbidden("you may list only your own tokens")
            }
            let extra: BSONDocument = caller.role == .admin ? [:] : ["user": .objectId(caller.user)]
            return try await s.page(tokens, query, extra: extra) { TokenView($0) }
        }
        router.add(.delete, "/api/v1/tokens/{id}", .role(.user)) { _, context in
            let caller = try context.caller()
            let id = try s.id(context, "token")
            let token = try await s.fetch(tokens, id, "token")
            guard caller.role == .admin || token.user == caller.user else {
                throw APIProblem(.notFound, "token \(id.hex) does not exist")
            }
            try await tokens.deleteOne(["_id": .objectId(id)])
            s.authenticator.invalidate(tokenHash: token.hash)
            return Render.noContent()
        }
    }

    /// 409 unless another enabled admin remains.
    static func requireAnotherAdmin(_ users: MongoCollection<UserDocument>, besides id: ObjectId) async throws {
        let others = try await users.countDocuments(["role": "admin", "disabled": false, "_id": ["$ne": .objectId(id)]])
        guard others > 0 else {
            throw APIProblem.conflict("this is the last enabled admin; make another user admin first")
        }
    }
}
