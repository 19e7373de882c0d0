/*
 * Dataset validation: schema, UTF-8, size, license, exact and near
 * duplicates, quality rules (Gopher quality and repetition, C4, FineWeb)
 * and PII, each a named rule with configurable thresholds.
 *
 *   trail_policy     the rules and thresholds; defaults, or a JSON file
 *   trail_validator  checks records one at a time against a policy, the
 *                    records seen earlier in the submission and the
 *                    approved records the caller loaded
 *   trail_minhasher  5-word-shingle MinHash signatures over xxHash
 *   trail_ndindex    the near-duplicate index (LSH bands + b-bit signatures)
 *   trail_pii_*      the PII scanner and deterministic redaction
 *
 * Ownership: handles are released with their *_free (NULL is a no-op).
 * json_t values returned through `json_t **` are new references the caller
 * must json_decref; a validator keeps a pointer to its policy, which must
 * outlive it. Nothing here is thread-safe; use one validator per thread.
 */
#ifndef TRAIL_VALIDATE_H
#define TRAIL_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "trail.h"

/* ---- policy ------------------------------------------------------------ */

enum trail_schema {
	TRAIL_SCHEMA_TEXT = 0,     /* {"text"} */
	TRAIL_SCHEMA_INSTRUCT = 1, /* {"prompt","completion"} */
};

/* "text" / "instruct" -> enum value, or -1. */
int trail_schema_parse(const char *name);
const char *trail_schema_name(int schema);

typedef struct trail_policy trail_policy;

/*
 * The default policy for a schema. Quality rules (gopher-*, c4-*,
 * fineweb-*) are on by default for `text` and off for `instruct`, whose
 * short pairs they were not designed for; a policy file can turn them on.
 */
int trail_policy_new(int schema, trail_policy **out);
/*
 * Parse a policy object: {"schema": ..., "redact": bool, "rules": {NAME:
 * false | true | {PARAM: value, ...}}}. Missing keys keep their defaults;
 * an unknown key, a wrong type or an out-of-range value is TRAIL_EDATA
 * naming the key ("rules.gopher-word-count.mn"). schema >= 0 overrides the
 * file's "schema" (and picks the defaults).
 */
int trail_policy_from_json(const json_t *j, const char *source, int schema,
			   trail_policy **out, trail_error *err);
/*
 * A named preset over the defaults: "web" (the defaults: web pages),
 * "short-form" (knowledge-base entries: short records pass) or "code"
 * (no prose rules). TRAIL_EUSAGE for another name.
 */
int trail_policy_preset(const char *name, int schema, trail_policy **out, trail_error *err);
/* The i-th preset's name; NULL past the last. */
const char *trail_policy_preset_name(size_t i);
/* Read and parse a policy file (TRAIL_ENOINPUT if it cannot be read). */
int trail_policy_load(const char *path, int schema, trail_policy **out, trail_error *err);
/* The effective policy, every rule with every parameter (new reference). */
json_t *trail_policy_to_json(const trail_policy *p);
int trail_policy_schema(const trail_policy *p);
int trail_policy_redact(const trail_policy *p);
void trail_policy_set_redact(trail_policy *p, int on);
/* Whether rule `name` is on; -1 if there is no such rule. */
int trail_policy_enabled(const trail_policy *p, const char *name);
void trail_policy_free(trail_policy *p);

/* The rule catalogue: names in report order, NULL past the end. */
const char *trail_rule_name(size_t i);

/* ---- near-duplicate detection ------------------------------------------ */

typedef struct trail_nd_params {
	int shingle;      /* words per shingle (5) */
	int bands, rows;  /* LSH: bands x rows permutations (14 x 8) */
	double threshold; /* minimum estimated Jaccard to report (0.7); 0 reports every band match */
	uint64_t seed;    /* hash seed; indexes only match with the same seed */
} trail_nd_params;

#define TRAIL_ND_MAXPERM 512

void trail_nd_params_default(trail_nd_params *p);

/*
 * Shingling and MinHash. Words are maximal runs of letters, digits and
 * non-ASCII bytes, ASCII letters folded to lower case; a shingle is
 * `shingle` consecutive words (a text with fewer words is one shingle; one
 * with no words has none), hashed with XXH3. Permutation i maps a shingle
 * hash x to the high 32 bits of a_i * x + b_i (mod 2^64), a strongly
 * universal family; the signature is the minimum under each.
 */
typedef struct trail_minhasher trail_minhasher;
int trail_minhasher_new(const trail_nd_params *p, trail_minhasher **out);
void trail_minhasher_free(trail_minhasher *m);
/*
 * Signature of a text into sig[bands*rows]; returns the number of
 * shingles (0: no words, sig unchanged) or -TRAIL_ENOMEM.
 */
long trail_minhash(trail_minhasher *m, const char *text, size_t len, uint32_t *sig);
/*
 * The distinct shingle hashes of a text, sorted, into a buffer owned by m
 * (valid until the next call); used to measure exact Jaccard similarity.
 */
long trail_shingles(trail_minhasher *m, const char *text, size_t len, const uint64_t **out);
/* Exact Jaccard similarity of two sorted hash sets. */
double trail_jaccard(const uint64_t *a, size_t na, const uint64_t *b, size_t nb);

/*
 * The near-duplicate index. Per record: its 32-byte id, a 2-bit signature
 * (the low 2 bits of each minimum, for the score), and one entry per band
 * (an 8-bit fingerprint and a 32-bit ordinal) in a sorted array per band
 * with a 2^16-bucket directory; recent additions sit in a small hash table
 * per band until they are merged in. Candidates are records sharing a band;
 * the score is the b-bit estimate of the Jaccard similarity
 * ((m/k - 1/4) / (3/4) for m of k equal 2-bit values).
 */
typedef struct trail_ndindex trail_ndindex;
int trail_ndindex_new(const trail_nd_params *p, trail_ndindex **out);
void trail_ndindex_free(trail_ndindex *ix);
/* Add a record: its signature and 32-byte id. */
int trail_ndindex_add(trail_ndindex *ix, const uint32_t *sig, const uint8_t id[32]);
/*
 * The best match for a signature: the record with the highest score at or
 * above the threshold (the earliest on ties) among the candidates, which
 * are at most the 32 earliest records sharing each band key, so a flood of
 * near-identical records costs a bounded amount per query. Returns 1 and
 * fills ordinal/score when found, 0 when not, -TRAIL_ENOMEM on failure.
 */
int trail_ndindex_query(trail_ndindex *ix, const uint32_t *sig, uint64_t *ordinal,
			double *score);
/*
 * Whether a record with this id and signature is in the index (exact copy):
 * every record sharing its first band key is compared, however many.
 */
int trail_ndindex_contains(trail_ndindex *ix, const uint32_t *sig, const uint8_t id[32],
			   uint64_t *ordinal);
const uint8_t *trail_ndindex_id(const trail_ndindex *ix, uint64_t ordinal);
/* Merge recent additions into the sorted arrays (after a bulk load). */
int trail_ndindex_compact(trail_ndindex *ix);
uint64_t trail_ndindex_count(const trail_ndindex *ix);
/* Bytes allocated by the index, all of it. */
size_t trail_ndindex_bytes(const trail_ndindex *ix);

/* ---- PII --------------------------------------------------------------- */

enum trail_pii_kind {
	TRAIL_PII_EMAIL,
	TRAIL_PII_PHONE,
	TRAIL_PII_IP,
	TRAIL_PII_PRIVATE_KEY,
	TRAIL_PII_API_TOKEN,
	TRAIL_PII_KINDS
};

/* Rule name ("pii-email") and redaction placeholder ("[EMAIL]"). */
const char *trail_pii_rule(int kind);
const char *trail_pii_placeholder(int kind);

typedef struct trail_pii_match {
	int kind;
	size_t start, end; /* byte offsets [start, end) */
} trail_pii_match;

/*
 * Find PII in s[0..len) for the kinds whose bit (1 << kind) is set in
 * `kinds`. Matches are in order and do not overlap. Returns the number
 * found (calling with max 0 counts them), or -TRAIL_ENOMEM.
 * Public addresses only: private, loopback, link-local, documentation and
 * other special-purpose IPv4/IPv6 ranges are not reported; neither are
 * dates, times, version strings or numbers that merely look like phones.
 */
long trail_pii_scan(const char *s, size_t len, unsigned kinds, trail_pii_match *m, size_t max);
/*
 * Replace every match with its kind's placeholder. *out is a new
 * trail_malloc'd NUL-terminated string; counts[kind] gets the number of
 * replacements. The rewrite depends on the input alone.
 */
int trail_pii_redact(const char *s, size_t len, unsigned kinds, char **out, size_t *outlen,
		     size_t counts[TRAIL_PII_KINDS]);

/* ---- quality rules -------------------------------------------------------- */

/*
 * Run the enabled quality rules of p on one text, appending one reason
 * object per failing rule to `reasons` ({"rule": NAME, "value": measured,
 * "min"/"max": limit, ...}). Returns 0 or -TRAIL_ENOMEM.
 */
int trail_quality_check(const trail_policy *p, const char *text, size_t len, json_t *reasons);

/* ---- the validator ------------------------------------------------------- */

typedef struct trail_validator trail_validator;

int trail_validator_new(const trail_policy *p, trail_validator **out, trail_error *err);
void trail_validator_free(trail_validator *v);
/* Redact PII instead of rejecting it (also set by the policy's "redact"). */
void trail_validator_set_redact(trail_validator *v, int on);
/* The input's name, added to verdicts as "file" (copied; NULL: none). */
int trail_validator_set_source(trail_validator *v, const char *source);
/* The submission's license, for records without a "license" field (copied). */
int trail_validator_set_license(trail_validator *v, const char *license);

/*
 * Approved records, for exact and near duplicates: a whole record (indexed
 * for both), or an id alone ("sha256:<hex>", exact duplicates only). Call
 * trail_validator_compact after loading many.
 */
int trail_validator_approve(trail_validator *v, const json_t *record, trail_error *err);
int trail_validator_approve_id(trail_validator *v, const char *id, trail_error *err);
int trail_validator_compact(trail_validator *v);

/*
 * Check one record, input line n. *verdict gets {"record": id, "n": n,
 * "ok": bool, "reasons": [...]} plus "redacted": [{"rule", "count"}] when
 * PII was rewritten. *accepted (if not NULL) gets the record as it would be
 * stored (redacted when redacting) when ok, else NULL. The record joins the
 * submission for the duplicate checks of later records.
 */
int trail_validator_check(trail_validator *v, const json_t *record, long n, json_t **verdict,
			  json_t **accepted, trail_error *err);
/*
 * Check one raw NDJSON line: invalid UTF-8 is a `utf8` verdict (record id
 * = digest of the raw bytes); otherwise as trail_validator_check. Malformed
 * JSON is TRAIL_EDATA in err, with no verdict.
 */
int trail_validator_check_line(trail_validator *v, const char *line, size_t len,
			       const char *source, long n, json_t **verdict, json_t **accepted,
			       trail_error *err);
/* Count a line the caller found malformed (for the summary). */
void trail_validator_note_malformed(trail_validator *v);
/*
 * {"summary": {"records", "accepted", "rejected", "malformed", "redacted",
 * "rules": {NAME: count}}} (new reference).
 */
json_t *trail_validator_summary(const trail_validator *v);
uint64_t trail_validator_rejected(const trail_validator *v);

/*
 * A verdict as GitHub Actions workflow commands, one
 * "::error file=F,line=N::rule: detail" per reason (nothing when ok), into
 * a trail_malloc'd string (NULL on ENOMEM; "" when there is nothing).
 */
char *trail_verdict_github(const json_t *verdict, const char *file);
/* One "::error file=F,line=N[,title=T]::msg\n" line, escaped (trail_malloc'd). */
char *trail_github_annotation(const char *file, long line, const char *title, const char *msg);

#endif
