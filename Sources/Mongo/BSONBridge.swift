// The choke points between Swift and libmongoc: BSONDocument <-> bson_t (through bytes) and
// bson_error_t (+ reply) -> MongoError. Everything here runs on threads the client owns.

import BSON
import CMongoC

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A new `bson_t` holding a copy of `document`; the caller destroys it with `bson_destroy`.
func makeBSON(_ document: BSONDocument) throws -> OpaquePointer {
    let bytes: [UInt8]
    do {
        bytes = try document.toBytes()
    } catch {
        throw MongoError.codec(error, "document cannot be written as BSON")
    }
    guard let b = bytes.withUnsafeBufferPointer({ bson_new_from_data($0.baseAddress, $0.count) }) else {
        throw MongoError(domain: .bson, code: 0, message: "libbson rejected a document of \(bytes.count) bytes")
    }
    return b
}

extension BSONDocument {
    /// A copy of the document behind a `bson_t *` (parsed and validated).
    init(copying bson: OpaquePointer) throws {
        let length = Int(cmongoc_bson_len(bson))
        guard let data = bson_get_data(bson) else {
            throw MongoError(domain: .bson, code: 0, message: "bson_get_data returned NULL")
        }
        do {
            self = try BSONDocument(buffer: UnsafeRawBufferPointer(start: data, count: length))
        } catch {
            throw MongoError.codec(error, "libmongoc returned a document that is not valid BSON")
        }
    }
}

extension MongoError {
    /// The mapping from libmongoc: domain, code and message of `error`, with `reply` attached.
    init(_ error: bson_error_t, reply: BSONDocument?) {
        var error = error
        let capacity = MemoryLayout.size(ofValue: error.message)
        let message = withUnsafePointer(to: &error.message) { tuple in
            tuple.withMemoryRebound(to: CChar.self, capacity: capacity) { chars in
                let length = strnlen(chars, capacity)
                return chars.withMemoryRebound(to: UInt8.self, capacity: length) {
                    String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
                }
            }
        }
        self.init(domain: Domain(rawValue: error.domain), code: Int(error.code), message: message, reply: reply)
    }

    /// The error of a failed cursor or change stream call from its error document out-parameter.
    init(_ error: bson_error_t, replyPointer: OpaquePointer?) {
        self.init(error, reply: replyPointer.flatMap { try? BSONDocument(copying: $0) })
    }
}

/// Calls a libmongoc function that fills a reply `bson_t` and a `bson_error_t`: allocates the
/// reply storage (`bson_t` is 128-byte aligned), copies the reply out, destroys it, and throws the
/// mapped ``MongoError`` when `call` returns false.
@discardableResult
func withReply(_ call: (OpaquePointer, UnsafeMutablePointer<bson_error_t>) -> Bool) throws -> BSONDocument {
    let storage = UnsafeMutableRawPointer.allocate(byteCount: cmongoc_bson_size(), alignment: cmongoc_bson_alignment())
    defer { storage.deallocate() }
    let reply = OpaquePointer(storage)
    bson_init(reply)
    defer { bson_destroy(reply) }
    var error = bson_error_t()
    let ok = call(reply, &error)
    let document = try? BSONDocument(copying: reply)
    guard ok else { throw MongoError(error, reply: document) }
    return document ?? BSONDocument()
}

/// A `bson_t` for each document, alive during `body`, destroyed afterwards.
func withBSON<R>(_ documents: [BSONDocument], _ body: ([OpaquePointer]) throws -> R) throws -> R {
    var pointers: [OpaquePointer] = []
    pointers.reserveCapacity(documents.count)
    defer { pointers.forEach { bson_destroy($0) } }
    for d in documents { pointers.append(try makeBSON(d)) }
    return try body(pointers)
}
