// The shared shape of `talus <resource> list` and `talus <resource> show`: fetch a page (or one
// document) from `/api/v1/<apiPath>`, print it as a table / key-value block, or as JSON with
// --json. Each resource declares only what differs (``ListedResource``); its ArgumentParser
// commands keep their own names, options and help and call ``Listing`` in one line.

import Foundation
import TalusModel

/// A resource the CLI lists and shows.
protocol ListedResource: Codable {
    /// Where the API lists them: `/api/v1/<apiPath>`.
    static var apiPath: String { get }
    /// What one is called in messages (`no task named x (talus task list)`).
    static var what: String { get }
    /// The field a name argument is matched against (`name`, `hostname`); nil: ids only.
    static var nameField: String? { get }
    /// The query keys its list endpoint takes (its filters and `tag`); `--tag` is not sent to one
    /// that does not take it.
    static var filterKeys: Set<String> { get }
    /// The table header of `list`.
    static var columns: [String] { get }
    /// One table row of `list`.
    var row: [String] { get }
    /// Prints `items` as the `list` table (default: ``columns`` and ``row``).
    static func printTable(_ items: [Self], client: APIClient) async throws
}

extension ListedResource {
    static var nameField: String? { "name" }

    static func printTable(_ items: [Self], client: APIClient) async throws {
        Output.table(columns, items.map(\.row))
    }
}

/// A resource the CLI also shows one of.
protocol ShownResource: ListedResource {
    /// Prints one for `show`: its fields and whatever follows them.
    func printDetails(client: APIClient) async throws
    /// The API path of the one `argument` (a name or id) names.
    static func path(of argument: String, client: APIClient) async throws -> String
}

extension ShownResource {
    static func path(of argument: String, client: APIClient) async throws -> String {
        let id = nameField == nil ? argument : try await client.resolve(Self.self, argument)
        return "/api/v1/\(apiPath)/\(id)"
    }
}

extension APIClient {
    /// The id of the `R` that `nameOrId` names (see ``resolve(_:_:field:what:)``).
    func resolve<R: ListedResource>(_ type: R.Type, _ nameOrId: String) async throws -> String {
        try await resolve(R.apiPath, nameOrId, field: R.nameField ?? "name", what: R.what)
    }
}

/// One query item of a list command: a value, or a reference by name or id to another resource.
struct ListFilter {
    let key: String
    let value: String?
    let resolve: ((APIClient, String) async throws -> String)?

    /// `key=value` when `value` is given.
    static func field(_ key: String, _ value: String?) -> ListFilter { ListFilter(key: key, value: value, resolve: nil) }

    /// `owner=me` when `mine`.
    static func mine(_ mine: Bool) -> ListFilter { field("owner", mine ? "me" : nil) }

    /// `key=<id>` of the `R` that `nameOrId` names, when given.
    static func reference<R: ListedResource>(_ key: String, _ nameOrId: String?, _ type: R.Type) -> ListFilter {
        ListFilter(key: key, value: nameOrId, resolve: { client, v in try await client.resolve(R.self, v) })
    }

    func resolved(_ client: APIClient) async throws -> (String, String?) {
        guard let value, let resolve else { return (key, value) }
        return (key, try await resolve(client, value))
    }
}

enum Listing {
    /// `talus <resource> list`: the items matching `filters` (and `--tag`) up to `--limit` (all
    /// with `--all`), as a table or JSON.
    static func list<R: ListedResource>(_ type: R.Type, _ global: GlobalOptions, _ options: ListOptions,
                                        filters: [ListFilter] = []) async throws {
        try await withAPI { client in
            var extra: [(String, String?)] = []
            for f in filters { extra.append(try await f.resolved(client)) }
            assert(extra.allSatisfy { R.filterKeys.contains($0.0) }, "a filter \(R.apiPath) does not declare")
            let query = options.query(extra).filter { R.filterKeys.contains($0.0) }
            let items = try await client.list("/api/v1/\(R.apiPath)", query: query, limit: options.max, as: R.self)
            if global.json { try Output.json(items); return }
            try await R.printTable(items, client: client)
        }
    }

    /// `talus <resource> show`: the one `argument` names, as fields or JSON.
    static func show<R: ShownResource>(_ type: R.Type, _ argument: String, _ global: GlobalOptions) async throws {
        try await withAPI { client in
            let item = try await client.get(try await R.path(of: argument, client: client), as: R.self)
            try await present(item, global, client: client)
        }
    }

    /// Prints one fetched document as `show` does.
    static func present<R: ShownResource>(_ item: R, _ global: GlobalOptions, client: APIClient) async throws {
        if global.json { try Output.json(item); return }
        try await item.printDetails(client: client)
    }
}
