/*
 * The span engine: a suffix array over a tokenised training set, to find
 * the maximal spans of an answer that occur verbatim in training data, with
 * their counts and the records they occur in (the infini-gram idea).
 *
 * File layout (little-endian, mmap-able; all sections 8-byte aligned):
 *   header   magic "TRLSPAN\0", u32 version (1), u32 reserved,
 *            u64 ntokens, u64 nrecords, u32 vocab, u32 reserved,
 *            32-byte training-set root (the caller's, e.g. the Merkle root
 *            over record ids), 32-byte SHA-256 of everything after the header
 *   tokens   u32[ntokens]: each record's tokens followed by a separator
 *            (vocab + record index, so no two separators are equal and no
 *            match crosses a record boundary)
 *   starts   u64[nrecords + 1]: offset of each record in tokens
 *   sa       u32[ntokens]: suffix array (ntokens < 2^32)
 *
 * Ownership: the index handle owns its mapping; spans returned by
 * trail_span_match are one trail_malloc'd array (records included), freed
 * with trail_free.
 */
#ifndef TRAIL_SPAN_H
#define TRAIL_SPAN_H

#include <stddef.h>
#include <stdint.h>

#include "trail.h"

#define TRAIL_SPAN_MAX_RECORDS 16 /* record ids listed per span */

/* Build an index over nrec records (token arrays) and write it atomically. */
int trail_span_build(const int32_t *const *recs, const size_t *lens, size_t nrec,
		     uint32_t vocab, const uint8_t root[32], const char *path, trail_error *err);

typedef struct trail_span_index trail_span_index;

/* Open (mmap) and check an index: magic, version, sizes, content digest. */
int trail_span_open(const char *path, trail_span_index **out, trail_error *err);
void trail_span_free(trail_span_index *x);
uint64_t trail_span_ntokens(const trail_span_index *x);
uint64_t trail_span_nrecords(const trail_span_index *x);
const uint8_t *trail_span_root(const trail_span_index *x);

/* Occurrences of q[0..n) in the training set: the count (0 if none). */
uint64_t trail_span_count(const trail_span_index *x, const int32_t *q, size_t n);

typedef struct trail_span {
	size_t start, len;   /* in the query */
	uint64_t count;      /* occurrences in the training set */
	size_t nrecords;     /* distinct records listed (at most TRAIL_SPAN_MAX_RECORDS) */
	uint64_t records[TRAIL_SPAN_MAX_RECORDS]; /* record indexes, ascending */
} trail_span;

/*
 * Maximal spans of q of at least min_len tokens that occur in the training
 * set at most max_count times (0: no limit): for each query position the
 * longest match starting there, kept when not inside the previous one.
 * O(L log N) binary-search steps per query position.
 */
int trail_span_match(const trail_span_index *x, const int32_t *q, size_t n, size_t min_len,
		     uint64_t max_count, trail_span **out, size_t *nout, trail_error *err);

#endif
