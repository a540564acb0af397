// JSON responses, pages, and the lookups every route collection does.

import BSON
import Foundation
import HTTPTypes
import Hummingbird
import Mongo
import NIOCore
import TalusModel

/// A page of a list endpoint: `{items, next}`; `next` is the `after` of the following page, or
/// null on the last page.
struct Page<Item: Encodable>: Encodable {
    var items: [Item]
    var next: String?

    enum CodingKeys: String, CodingKey { case items, next }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(items, forKey: .items)
        if let next { try c.encode(next, forKey: .next) } else { try c.encodeNil(forKey: .next) }
    }
}

enum Render {
    static let encoder = TalusJSON.encoder()

    /// `value` as `application/json`.
    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) throws -> Response {
        let data = try encoder.encode(value)
        var headers = headers
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// 204 No Content.
    static func noContent() -> Response { Response(status: .noContent) }
}

/// The services every route collection uses.
public struct APIServices: Sendable {
    public let store: APIStore
    public let config: APIConfig
    let authenticator: Authenticator
    let uploads: UploadManager
    let gridFS: GridFSBucket

    /// The path parameter `name` as an id; 404 when it is not one.
    func id(_ context: APIRequestContext, _ what: String, param: String = "id") throws -> ObjectId {
        let raw = context.parameters.get(param) ?? ""
        guard let id = ObjectId(raw) else { throw APIProblem(.notFound, "\(what) \(raw) does not exist (ids are 24 hex digits)") }
        return id
    }

    /// The document with `id`, or 404.
    func fetch<T: TalusDocument>(_ collection: MongoCollection<T>, _ id: ObjectId, _ what: String) async throws -> T {
        guard let doc = try await collection.findOne(["_id": .objectId(id)]) else {
            throw APIProblem(.notFound, "\(what) \(id.hex) does not exist")
        }
        try doc.checkSchema()
        return doc
    }

    /// One page of `collection` for `query`, newest first, each document turned into its view.
    func page<T: TalusDocument, V: Encodable>(
        _ collection: MongoCollection<T>, _ query: ListQuery, extra: BSONDocument = [:], view: (T) -> V
    ) async throws -> Response {
        let docs = try await collection.find(
            query.mongoFilter(extra: extra), options: FindOptions(sort: ["_id": -1], limit: query.limit + 1))
        for d in docs { try d.checkSchema() }
        let items = Array(docs.prefix(query.limit))
        let next = docs.count > query.limit ? items.last?.id.hex : nil
        return try Render.json(Page(items: items.map(view), next: next))
    }

    /// Inserts `doc`; a unique-index violation becomes 409 naming the field.
    func insert<T: TalusDocument>(_ collection: MongoCollection<T>, _ doc: T, unique field: String, value: String) async throws {
        do {
            try await collection.insertOne(doc)
        } catch let e as MongoError where e.isDuplicateKey {
            throw APIProblem.conflict("a \(T.collection.rawValue) document with \(field) \"\(value)\" already exists; choose another \(field)")
        }
    }
}

extension SchemaError {
    var problem: APIProblem { APIProblem(.internalServerError, description) }
}
