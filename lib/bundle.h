/*
 * Contribution bundles: a byte-reproducible tar (pax format, entries sorted,
 * mtime 0, uid/gid 0, no owner names, mode 0644, optional zstd) holding
 *
 *   manifest.json   canonical JSON, signed by the contributor:
 *                   {"format": "trail-bundle/1", "datanet", "contributor"
 *                    (verifier key), "records" (count), "root" (base64
 *                    RFC 9162 root over the record ids' 32-byte digests),
 *                    "license", "source" ({"url","sha256"}, optional),
 *                    "signer", "sig"}
 *   records.ndjson  the records, one canonical JSON object per line
 *
 * The same records, datanet, key and options give the same bytes.
 * Reading never writes files: entries are read into memory under limits, and
 * anything but the two regular files is refused.
 *
 * Ownership: a trail_bundle owns its manifest and records (json_t
 * references); trail_bundle_free releases them. Byte buffers returned
 * through `void **` are trail_malloc'd.
 */
#ifndef TRAIL_BUNDLE_H
#define TRAIL_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "key.h"
#include "trail.h"

typedef struct trail_bundle_limits {
	size_t max_entries;    /* archive members (default 16) */
	size_t max_bytes;      /* uncompressed bytes in all (default 1 GiB) */
	size_t max_ratio;      /* uncompressed / compressed (default 200) */
	size_t max_record;     /* one record line (default 1 MiB) */
} trail_bundle_limits;

void trail_bundle_limits_default(trail_bundle_limits *l);

typedef struct trail_bundle {
	json_t *manifest; /* the signed manifest */
	json_t *records;  /* array of record objects, in bundle order */
	json_t *ids;      /* array of "sha256:" record ids */
} trail_bundle;

/*
 * Build and sign a bundle. records: an array of JSON objects. source may be
 * NULL. zstd: compress. *out gets the archive bytes.
 */
int trail_bundle_create(const json_t *records, const char *datanet, const char *license,
			const json_t *source, const trail_signer *contributor, int zstd,
			void **out, size_t *len, trail_error *err);

/*
 * Read and verify a bundle: archive safety and limits, the manifest's
 * signature, record count, canonical form of every record line and the
 * Merkle root. TRAIL_EDATA for a malformed or hostile archive,
 * TRAIL_EVERIFY when the content does not match its signed manifest.
 * limits may be NULL (defaults).
 */
int trail_bundle_read(const void *buf, size_t len, const trail_bundle_limits *limits,
		      trail_bundle **out, trail_error *err);
void trail_bundle_free(trail_bundle *b);

/* Record id of one record: the digest of its canonical JSON. */
int trail_record_id(const json_t *record, char id[72], trail_error *err);

#endif
