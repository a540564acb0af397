// CMongoC: libmongoc 1.23 and libbson (Debian: libmongoc-dev, libbson-dev) for Swift.
#ifndef CMONGOC_SHIM_H
#define CMONGOC_SHIM_H
#include <mongoc/mongoc.h>
#endif
