// CMongoC: libmongoc 1.23 and libbson (Debian: libmongoc-dev, libbson-dev) for Swift.
//
// bson_t is declared 128-byte aligned, so Swift sees `bson_t *` as OpaquePointer and cannot read
// its fields: the helpers below do that in C.
#ifndef CMONGOC_SHIM_H
#define CMONGOC_SHIM_H
#include <mongoc/mongoc.h>

/// The length in bytes of the document behind `b` (its `len` field).
static inline uint32_t cmongoc_bson_len(const bson_t *b) { return b->len; }

/// sizeof(bson_t) and its alignment, so Swift allocates out-parameter storage that matches.
static inline size_t cmongoc_bson_size(void) { return sizeof(bson_t); }
static inline size_t cmongoc_bson_alignment(void) { return BSON_ALIGNOF(bson_t); }

#endif
