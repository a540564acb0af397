import BSON
import Foundation
import Testing
@testable import TalusModel

@Suite struct FilesTests {
    @Test func storedFilesUseTheGridFSFieldNames() throws {
        let file = StoredFileDocument(length: 600_000, filename: "seed.bin",
                                      metadata: StoredFileMetadata(sha256: "ab", owner: ObjectId(), tags: ["corpus"]))
        let doc = try BSONEncoder().encode(file)
        #expect(doc.keys == ["_id", "length", "chunkSize", "uploadDate", "filename", "metadata"])
        #expect(doc["length"] == .int64(600_000))
        #expect(doc["chunkSize"] == .int32(255 * 1024))
        #expect(doc["uploadDate"]?.dateValue == file.uploadDate)
        #expect(doc["metadata"]?["sha256"]?.stringValue == "ab")
        #expect(try BSONDecoder().decode(StoredFileDocument.self, from: doc) == file)
        #expect(file.chunkCount == 3)
        #expect(StoredFileDocument(length: 0, filename: "e", metadata: .init(sha256: "x")).chunkCount == 0)
        #expect(file.ref == StoredFileRef(id: file.id, name: "seed.bin", size: 600_000, sha256: "ab"))

        let chunk = FileChunkDocument(filesId: file.id, n: 2, data: BSONBinary(bytes: [1, 2, 3]))
        let chunkDoc = try BSONEncoder().encode(chunk)
        #expect(chunkDoc.keys == ["_id", "files_id", "n", "data"])
        #expect(chunkDoc["n"] == .int32(2))
        #expect(try BSONDecoder().decode(FileChunkDocument.self, from: chunkDoc) == chunk)
    }

    @Test func fileMetadataWithoutTagsDecodes() throws {
        // A file written by another GridFS client carries only what it knows.
        let meta = try BSONDecoder().decode(StoredFileMetadata.self, from: ["sha256": "cd"])
        #expect(meta == StoredFileMetadata(sha256: "cd"))
    }

    @Test func uploadsRecordTheAnnouncedSize() throws {
        let upload = UploadDocument(filename: "disk.qcow2", path: "x.part", size: 10, expectedSize: 4096,
                                    expires: bsonNow())
        let doc = try BSONEncoder().encode(upload)
        #expect(doc["expected_size"] == .int64(4096))
        #expect(try BSONDecoder().decode(UploadDocument.self, from: doc) == upload)
        var old = doc
        _ = old.removeValue(forKey: "expected_size")
        #expect(try BSONDecoder().decode(UploadDocument.self, from: old).expectedSize == nil)
    }
}
