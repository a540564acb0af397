// The HTTP side of the CLI: JSON requests, problem responses turned into errors that say what
// to do, streamed uploads with progress and resumption, byte-exact downloads.

import AsyncHTTPClient
import BSON
import Crypto
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOFileSystem
import NIOHTTP1
import TalusModel

/// Why a command failed, with the exit code scripts see.
public enum CLIError: Error, CustomStringConvertible {
    /// Bad arguments or input (exit 1).
    case usage(String)
    /// The server refused the request (4xx) (exit 2).
    case refused(status: Int, detail: String, problems: [String])
    /// The server failed (5xx) or could not be reached (exit 3).
    case failure(String)
    /// The image, job or transfer ended in error, failed or was cancelled (exit 4).
    case ended(String)
    /// Ctrl-C (exit 130).
    case interrupted(String)

    public var exitCode: Int32 {
        switch self {
        case .usage: 1
        case .refused: 2
        case .failure: 3
        case .ended: 4
        case .interrupted: 130
        }
    }

    public var description: String {
        switch self {
        case .usage(let m), .failure(let m), .ended(let m), .interrupted(let m): return m
        case .refused(let status, let detail, let problems):
            var out = "the server refused the request (\(status)): \(detail)"
            if problems.count > 1 { out += problems.map { "\n  - \($0)" }.joined() }
            if status == 401 { out += "\nLog in again: talus login URL (or set TALUS_TOKEN)." }
            return out
        }
    }
}

/// The problem+json body of an error response.
struct ProblemBody: Decodable {
    var title: String?
    var status: Int?
    var detail: String?
    var errors: [FieldProblemBody]?
    struct FieldProblemBody: Decodable { var field: String; var problem: String }
}

/// A page of a list endpoint.
struct PageBody<T: Decodable>: Decodable {
    var items: [T]
    var next: String?
}

/// Talks to one Talus API with one token.
final class APIClient: Sendable {
    let baseURL: String
    let token: String
    let http: HTTPClient

    init(baseURL: String, token: String) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.token = token
        var config = HTTPClient.Configuration()
        config.timeout = .init(connect: .seconds(10), read: .seconds(300))
        config.decompression = .disabled
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    func shutdown() async { try? await http.shutdown() }

    func request(_ method: HTTPMethod, _ path: String) -> HTTPClientRequest {
        var r = HTTPClientRequest(url: baseURL + path)
        r.method = method
        r.headers.add(name: "Authorization", value: "Bearer \(token)")
        r.headers.add(name: "User-Agent", value: "talus-cli")
        return r
    }

    /// Sends `request`; a non-2xx answer becomes a ``CLIError``.
    func send(_ request: HTTPClientRequest, deadline: NIODeadline = .now() + .seconds(300)) async throws -> HTTPClientResponse {
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, deadline: deadline)
        } catch let error as CLIError {
            throw error
        } catch {
            throw CLIError.failure("cannot reach the Talus API at \(baseURL): \(Self.describe(error)). Is talus-api running there? (URL from `talus login` or TALUS_URL)")
        }
        guard (200..<300).contains(Int(response.status.code)) || response.status == .notModified else {
            throw try await Self.error(from: response)
        }
        return response
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError { return "\(e)" }
        return (error as? any LocalizedError)?.errorDescription ?? "\(error)"
    }

    static func error(from response: HTTPClientResponse) async throws -> CLIError {
        let body = (try? await response.body.collect(upTo: 1 << 20)) ?? ByteBuffer()
        let problem = try? JSONDecoder().decode(ProblemBody.self, from: Data(buffer: body))
        let code = Int(response.status.code)
        let detail = problem?.detail ?? (String(buffer: body).isEmpty ? response.status.reasonPhrase : String(buffer: body))
        if code >= 500 { return .failure("the Talus API failed (\(code)): \(detail)") }
        let problems = problem?.errors?.map { "\($0.field): \($0.problem)" } ?? []
        return .refused(status: code, detail: detail, problems: problems)
    }

    // MARK: JSON

    func json<T: Decodable>(_ method: HTTPMethod, _ path: String, body: (any Encodable)? = nil, as type: T.Type) async throws -> T {
        let data = try await raw(method, path, body: body)
        do {
            return try TalusJSON.decoder().decode(T.self, from: data)
        } catch {
            throw CLIError.failure("unexpected answer from \(path): \(error)")
        }
    }

    /// The response body of a JSON request (empty for 204).
    func raw(_ method: HTTPMethod, _ path: String, body: (any Encodable)? = nil) async throws -> Data {
        var r = request(method, path)
        if let body {
            r.headers.add(name: "Content-Type", value: "application/json")
            r.body = .bytes(ByteBuffer(bytes: try TalusJSON.encoder().encode(body)))
        }
        let response = try await send(r)
        return Data(buffer: try await response.body.collect(upTo: 64 << 20))
    }

    func get<T: Decodable>(_ path: String, as type: T.Type) async throws -> T { try await json(.GET, path, as: type) }

    /// Every item of a list endpoint up to `limit` (nil: all), following the cursor.
    func list<T: Decodable>(_ path: String, query: [(String, String)], limit: Int?, as type: T.Type) async throws -> [T] {
        var out: [T] = []
        var after: String?
        repeat {
            var q = query
            let want = limit.map { min(500, $0 - out.count) } ?? 500
            q.append(("limit", String(want)))
            if let after { q.append(("after", after)) }
            let page = try await get(path + "?" + Self.encodeQuery(q), as: PageBody<T>.self)
            out += page.items
            after = page.next
        } while after != nil && (limit.map { out.count < $0 } ?? true)
        return out
    }

    static func encodeQuery(_ items: [(String, String)]) -> String {
        var allowed = CharacterSet.urlQueryAllowed
        allowed.remove(charactersIn: "&=+;#")
        return items.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.1)" }.joined(separator: "&")
    }

    /// The id of `nameOrId` in `collection` (`images`, `tasks`...): an id as is, else the one
    /// document whose `field` equals it.
    func resolve(_ collection: String, _ nameOrId: String, field: String = "name", what: String) async throws -> String {
        if ObjectId(nameOrId) != nil { return nameOrId }
        struct IdOnly: Decodable { var _id: String }
        let found = try await get("/api/v1/\(collection)?" + Self.encodeQuery([(field, nameOrId), ("limit", "2")]), as: PageBody<IdOnly>.self)
        guard let first = found.items.first else {
            throw CLIError.refused(status: 404, detail: "no \(what) named \(nameOrId) (talus \(what) list)", problems: [])
        }
        guard found.items.count == 1 else {
            throw CLIError.usage("several \(what)s are named \(nameOrId); use the id")
        }
        return first._id
    }

    // MARK: Uploads

    /// Sends `request` with the bytes `offset..<size` of the file at `path` as its body,
    /// reporting each chunk to `progress`; returns the response body.
    func sendFile(_ request: HTTPClientRequest, path: String, offset: Int64, size: Int64, progress: Progress?) async throws -> Data {
        try await FileSystem.shared.withFileHandle(forReadingAt: FilePath(path)) { handle in
            let chunks = handle.readChunks(in: offset..<size, chunkLength: .mebibytes(1)).map { chunk -> ByteBuffer in
                progress?.add(chunk.readableBytes)
                return chunk
            }
            var req = request
            req.body = .stream(chunks, length: .known(size - offset))
            let response = try await self.send(req, deadline: .distantFuture)
            return Data(buffer: try await response.body.collect(upTo: 1 << 20))
        }
    }

    /// Streams `path` into upload `id` from `offset`. Returns the upload document the server
    /// answered.
    func putUpload(id: String, path: String, size: Int64, offset: Int64, progress: Progress?) async throws -> UploadDocument {
        var r = request(.PUT, "/api/v1/uploads/\(id)/content")
        r.headers.add(name: "Content-Type", value: "application/octet-stream")
        if offset > 0 { r.headers.add(name: "Content-Range", value: "bytes \(offset)-\(size - 1)/\(size)") }
        let data = try await sendFile(r, path: path, offset: offset, size: size, progress: progress)
        return try TalusJSON.decoder().decode(UploadDocument.self, from: data)
    }

    /// Uploads the file at `path`: announce, stream, and on a broken connection resume from what
    /// the server has (up to `retries` times). Returns the complete upload.
    func upload(path: String, progress: Progress?, retries: Int = 3) async throws -> UploadDocument {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
        struct Announce: Encodable { var filename: String; var size: Int64 }
        let filename = URL(fileURLWithPath: path).lastPathComponent
        var upload = try await json(.POST, "/api/v1/uploads", body: Announce(filename: filename, size: size), as: UploadDocument.self)
        progress?.start(total: size)
        var attempt = 0
        while !upload.complete {
            do {
                upload = try await putUpload(id: upload.id.hex, path: path, size: size, offset: upload.size, progress: progress)
            } catch let e as CLIError {
                guard case .failure = e, attempt < retries else { throw e }
                attempt += 1
                try await Task.sleep(for: .seconds(1 << attempt))
                upload = try await get("/api/v1/uploads/\(upload.id.hex)", as: UploadDocument.self)
                progress?.reset(to: upload.size)
                progress?.note("connection lost; resuming at byte \(upload.size) (attempt \(attempt + 1))")
            }
        }
        progress?.finish()
        return upload
    }

    // MARK: Downloads

    /// Streams GET `path` into `destination` (`-` for stdout) byte-exact, through a temporary
    /// file renamed at the end, and checks the sha256 the server sent. Returns (bytes, sha256).
    func download(_ path: String, to destination: String) async throws -> (Int64, String) {
        let response = try await send(request(.GET, path), deadline: .distantFuture)
        let expected = response.headers.first(name: "X-Talus-SHA256")
        var hasher = SHA256()
        var count: Int64 = 0
        if destination == "-" {
            for try await buffer in response.body {
                buffer.withUnsafeReadableBytes { raw in
                    hasher.update(bufferPointer: raw)
                    var done = 0
                    while done < raw.count {
                        let n = Foundation.write(1, raw.baseAddress! + done, raw.count - done)
                        if n <= 0 { break }
                        done += n
                    }
                }
                count += Int64(buffer.readableBytes)
            }
        } else {
            let temp = destination + ".talus-part"
            try await FileSystem.shared.withFileHandle(
                forWritingAt: FilePath(temp), options: .newFile(replaceExisting: true)
            ) { handle in
                try await handle.withBufferedWriter(capacity: .mebibytes(1)) { writer in
                    for try await buffer in response.body {
                        buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                        count += Int64(buffer.readableBytes)
                        try await writer.write(contentsOf: buffer)
                    }
                }
            }
            let sha = hexOf(hasher.finalize())
            if let expected, expected != sha {
                unlink(temp)
                throw CLIError.failure("download of \(path) is corrupt (sha256 \(sha), server says \(expected)); try again")
            }
            guard rename(temp, destination) == 0 else { throw CLIError.failure("cannot write \(destination): \(String(cString: strerror(errno)))") }
            return (count, sha)
        }
        let sha = hexOf(hasher.finalize())
        if let expected, expected != sha { throw CLIError.failure("download of \(path) is corrupt (sha256 \(sha), server says \(expected))") }
        return (count, sha)
    }
}

/// Lowercase hex of a digest.
func hexOf(_ bytes: some Sequence<UInt8>) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}
