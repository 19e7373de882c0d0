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
 * The signature is trail_json_sign's (key.h): "signer" is the contributor's
 * verifier key and "sig" the Ed25519 signature over the canonical JSON of the
 * manifest without "sig", so it binds the datanet, the contributor, the
 * license, the source and, through "root", every record.
 *
 * The same records, datanet, key and options give the same bytes: Ed25519
 * signatures are deterministic and nothing comes from the clock, the user or
 * the umask. The uncompressed tar is the reproducible form; zstd output is
 * reproducible for one libzstd version (compressed bytes may differ between
 * versions, the tar inside does not).
 *
 * Reading never writes files: entries are read into memory under limits, and
 * anything but the two regular files is refused. A bundle is accepted only
 * in its canonical form, the exact tar trail_bundle_pack would write for its
 * content, so unpacking and re-packing any accepted bundle gives its bytes
 * back (for zstd: its tar stream).
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
	size_t max_ratio;      /* uncompressed / archive bytes, past 1 MiB (default 200) */
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
 * The archive of an already signed bundle (as trail_bundle_read gave it):
 * nothing is signed again. Gives the bytes trail_bundle_create wrote.
 */
int trail_bundle_pack(const trail_bundle *b, int zstd, void **out, size_t *len, trail_error *err);

/*
 * Read and verify a bundle: archive safety and limits (no "..", absolute
 * names, links, devices, FIFOs, setuid/setgid/sticky bits, sparse members,
 * members beyond manifest.json and records.ndjson; member count, unpacked
 * bytes and ratio within limits), the manifest's signature by its
 * contributor, record count, canonical form of every record line, the
 * Merkle root and the canonical form of the archive. TRAIL_EDATA for a
 * malformed, hostile or non-canonical archive, TRAIL_ELIMIT over a limit,
 * TRAIL_EVERIFY when the content does not match its signed manifest.
 * limits may be NULL (defaults). Only an uncompressed or zstd tar is read.
 */
int trail_bundle_read(const void *buf, size_t len, const trail_bundle_limits *limits,
		      trail_bundle **out, trail_error *err);
void trail_bundle_free(trail_bundle *b);

/* Record id of one record: the digest of its canonical JSON. */
int trail_record_id(const json_t *record, char id[72], trail_error *err);

#endif
