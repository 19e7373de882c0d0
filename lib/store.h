/*
 * The store: a directory (--home DIR, else $TRAIL_HOME, else ./.trail) with
 *
 *   objects/sha256/<2 hex>/<62 hex>   immutable blobs, digest checked on read
 *   names/<kind>/<name>               registered names -> digest
 *   log/                              the ledger (ledger.h)
 *   keys/operator.key                 the operator's signer key
 *   keys/operator.pub                 its verifier key, for offline checks
 *   config.json                       origin and operator verifier key
 *
 * Ownership: the store handle owns its strings; buffers returned through
 * `void **out` are trail_malloc'd.
 */
#ifndef TRAIL_STORE_H
#define TRAIL_STORE_H

#include <stddef.h>

#include "key.h"
#include "trail.h"

typedef struct trail_store trail_store;

/* The store directory a program should use: opt, else $TRAIL_HOME, else ".trail". */
const char *trail_store_home(const char *opt);

/*
 * Create a store: directories, config.json with `origin` (default: the
 * absolute path's last component), and the operator key: copied from
 * keyfile, or generated. TRAIL_EDATA if a store already exists there.
 */
int trail_store_init(const char *home, const char *origin, const char *keyfile,
		     trail_error *err);
/* Open an existing store; TRAIL_ENOINPUT if there is none. */
int trail_store_open(const char *home, trail_store **out, trail_error *err);
void trail_store_free(trail_store *s);

const char *trail_store_dir(const trail_store *s);
const char *trail_store_origin(const trail_store *s);
/* The operator key (loaded on first use). */
int trail_store_operator(trail_store *s, const trail_signer **out, trail_error *err);
const trail_verifier *trail_store_operator_vkey(const trail_store *s);

/* Add a blob (atomic, idempotent); digest gets "sha256:<hex>". */
int trail_store_put(trail_store *s, const void *buf, size_t len, char digest[72],
		    trail_error *err);
int trail_store_put_file(trail_store *s, const char *path, char digest[72], trail_error *err);
/* Read a blob and check its digest (TRAIL_EVERIFY on mismatch, ENOINPUT if absent). */
int trail_store_get(trail_store *s, const char *digest, void **out, size_t *len,
		    trail_error *err);
int trail_store_has(trail_store *s, const char *digest);
/* The path of an object's file (trail_malloc'd), whether or not it exists. */
char *trail_store_object_path(const trail_store *s, const char *digest);

/* Register a name (kind: "model", "adapter", "datanet", ...) for a digest. */
int trail_store_name_set(trail_store *s, const char *kind, const char *name,
			 const char *digest, trail_error *err);
int trail_store_name_get(trail_store *s, const char *kind, const char *name, char digest[72],
			 trail_error *err);
/* A "sha256:" digest present in the store, or a registered name of `kind`. */
int trail_store_resolve(trail_store *s, const char *kind, const char *arg, char digest[72],
			trail_error *err);

#endif
