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
#ifndef TRAIL_DATA_H
#define TRAIL_DATA_H
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ledger/ledger.h"
#include "core/core.h"

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

/*
 * Where contributions come from: files, standard input and http(s) URLs
 * (libcurl, with a size cap, a timeout, a redirect limit and an optional
 * SHA-256 pin), and turning their bytes into records.
 *
 * Ownership: buffers returned through `void **` are trail_malloc'd.
 */

#include <stddef.h>

#include <jansson.h>


typedef struct trail_fetch_opts {
	size_t max_bytes;  /* default 256 MiB */
	long timeout_s;    /* whole transfer; default 60 */
	long max_redirects; /* default 3 */
	const char *sha256; /* "sha256:<hex>" or bare hex pin; NULL = none */
} trail_fetch_opts;

/* Once per process, before any fetch (libcurl's global setup). */
int trail_source_init(void);

int trail_is_url(const char *s);
/* Fetch a URL. TRAIL_EVERIFY when the pin does not match; TRAIL_EAGAIN on timeouts and 5xx. */
int trail_fetch(const char *url, const trail_fetch_opts *o, void **out, size_t *len,
		char digest[72], trail_error *err);

enum { TRAIL_SRC_NDJSON, TRAIL_SRC_TEXT, TRAIL_SRC_BUNDLE };
/* Guess what bytes hold: a bundle (tar or zstd magic), NDJSON ('{' first), or text. */
int trail_source_kind(const void *buf, size_t len);

/*
 * Append the records in buf to `records`: NDJSON objects, or plain text as
 * {"text": ...}, one record per paragraph (blank-line separated) or, with
 * per_file, one for the whole input. Errors name `source` and the line.
 */
int trail_source_records(const void *buf, size_t len, const char *source, int per_file,
			 json_t *records, trail_error *err);

/*
 * Split plain text into records as trail_source_records does: one per
 * paragraph (lines of only spaces, tabs or CRs separate them) or, with
 * per_file, the whole input; each trimmed of trailing whitespace and
 * leading line breaks, empty ones skipped. fn gets the bytes (not yet
 * checked to be UTF-8) and the line each starts on; a non-zero return
 * stops the split and is returned. The one splitter of datanet-add and
 * datanet-validate, so both see the same records.
 */
typedef int (*trail_text_fn)(void *ctx, const char *text, size_t len, long line,
			     trail_error *err);
int trail_source_split_text(const void *buf, size_t len, int per_file, trail_text_fn fn,
			    void *ctx, trail_error *err);

/* Read one input whole: a file, "-" (standard input) or an http(s) URL. For
 * a URL, *source (if not NULL) gets {"url","sha256"}; else it is left alone. */
int trail_source_read(const char *input, const trail_fetch_opts *o, void **out, size_t *len,
		      json_t **source, trail_error *err);

typedef struct trail_source_opts {
	trail_fetch_opts fetch; /* also the size cap of files and standard input */
	int per_file;           /* plain text: one record per input */
	int zstd;               /* compress the bundle */
	const char *license;    /* the contribution's license; NULL: "" */
} trail_source_opts;

/*
 * One contribution from inputs (files, "-", URLs; none: "-"): their records
 * packed into one bundle for `datanet`, signed by `contributor`, with the
 * source in the manifest when the only input is a URL. An existing bundle
 * must come alone and is verified and passed through unchanged. *records
 * gets the record count. All inputs are read before anything is returned.
 */
int trail_source_bundle(char *const *inputs, int n, const trail_source_opts *o,
			const char *datanet, const trail_signer *contributor, void **out,
			size_t *len, size_t *records, trail_error *err);

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

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>


/* ---- policy ------------------------------------------------------------ */

enum trail_schema {
	TRAIL_SCHEMA_TEXT = 0,     /* {"text"} */
	TRAIL_SCHEMA_INSTRUCT = 1, /* {"prompt","completion"} */
	TRAIL_SCHEMA_CHAT = 2,     /* {"messages":[{"role","content"},...]} */
};

/* "text" / "instruct" / "chat" -> enum value, or -1. */
int trail_schema_parse(const char *name);
const char *trail_schema_name(int schema);

/*
 * A chat record's "messages": a non-empty list of objects holding exactly a
 * string "role" (system, user or assistant) and a string "content", with at
 * least one assistant turn (the tokens a fine-tune learns). 0 when valid,
 * else -1 and a reason in why (at most n bytes, NUL-terminated).
 */
int trail_chat_messages_check(const json_t *messages, char *why, size_t n);

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
/*
 * What the index keeps of a signature, as bytes: each band's 32-bit key
 * (little-endian) then the 2-bit values packed, trail_ndindex_keylen bytes
 * (84 at 14 x 8). The _key calls take it in place of the signature and
 * give the same results; a sharded validation carries keys, not signatures.
 */
size_t trail_ndindex_keylen(const trail_ndindex *ix);
void trail_ndindex_key(trail_ndindex *ix, const uint32_t *sig, uint8_t *key);
int trail_ndindex_add_key(trail_ndindex *ix, const uint8_t *key, const uint8_t id[32]);
int trail_ndindex_query_key(trail_ndindex *ix, const uint8_t *key, uint64_t *ordinal, double *score);
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

/* ---- sharded validation (validate_shard.c) ---------------------------------- */

/*
 * A validation split by record range: each shard checks its records with
 * the validator in partial mode and writes a partial; the merge replays
 * the duplicate checks over every partial in input order and gives the
 * verdicts, summary and exit status of one pass, byte for byte.
 *
 * The partial (NDJSON, trail-formats(5); compact JSON, members in the
 * order of the verdicts, numbers with every digit): line 1
 *   {"type":"validation-partial","version":1,"policy":<digest of the
 *    effective policy's canonical JSON>,"inputs":[{"name","digest"}],
 *    "options":{...},"records":N,"lo","hi"}
 * where records counts every item of the inputs (a record, a line that is
 * not UTF-8, a malformed line) and [lo, hi) is the shard's; then one line
 * per item of the range: a record's
 *   {"record","n","file"?,"pre":[reasons],"post":[reasons],"redacted"?,
 *    "dups"?:true,"key"?:<base64 index key>,"who"?:<contributor>}
 * (the reasons before and after the duplicate checks, which apply when
 * "dups" is there), or a malformed line's
 *   {"malformed":<message>,"code":"data"|"limit","source","n"}.
 */

/*
 * In partial mode trail_validator_check and _check_line give a partial's
 * record line in *verdict instead of a verdict (no duplicate checks, no
 * accepted record, nothing counted).
 */
void trail_validator_set_partial(trail_validator *v, int on);
/*
 * Line 1 of a partial (new reference); inputs: [{"name","digest"}];
 * options: what else the shard's verdicts depend on (the caller's
 * reading options), which every partial of a merge must share.
 */
int trail_vpartial_header(const trail_validator *v, const json_t *inputs, const json_t *options, uint64_t records,
			  uint64_t lo, uint64_t hi, json_t **out, trail_error *err);
/* The SHA-256 digest of a file's bytes, read in blocks, for a partial's "inputs". */
int trail_vpartial_file_digest(const char *path, char digest[TRAIL_DIGEST_STRLEN], trail_error *err);
/* The line of a malformed item (e: its error, TRAIL_EDATA or TRAIL_ELIMIT); NULL on ENOMEM. */
json_t *trail_vpartial_malformed(const trail_error *e);

/*
 * The merge of partials (paths, any order) with v, a validator of the
 * same policy in normal mode that holds the approved records. Open checks
 * every header: the policy is v's, the inputs, options and count of items
 * the same in all, the ranges cover every item exactly once (TRAIL_EDATA naming a
 * gap, an overlap, a part given twice or a foreign one). Next gives the
 * items in input order: a verdict (*verdict, new reference, with *who the
 * contributor the shard saw, borrowed, or NULL), or a malformed item
 * (*verdict NULL, bad->code TRAIL_EDATA or TRAIL_ELIMIT with its source,
 * line and message); neither (bad->code 0) at the end. A partial with
 * fewer or more lines than its range is TRAIL_EDATA.
 */
typedef struct trail_vmerge trail_vmerge;
int trail_vmerge_open(trail_validator *v, const char *const *paths, size_t n, trail_vmerge **out,
		      trail_error *err);
/* The inputs the partials were made from (borrowed): [{"name","digest"}]. */
const json_t *trail_vmerge_inputs(const trail_vmerge *m);
int trail_vmerge_next(trail_vmerge *m, json_t **verdict, const char **who, trail_error *bad, trail_error *err);
void trail_vmerge_free(trail_vmerge *m);

/*
 * A verdict as GitHub Actions workflow commands, one
 * "::error file=F,line=N::rule: detail" per reason (nothing when ok), into
 * a trail_malloc'd string (NULL on ENOMEM; "" when there is nothing).
 */
char *trail_verdict_github(const json_t *verdict, const char *file);
/* One "::error file=F,line=N[,title=T]::msg\n" line, escaped (trail_malloc'd). */
char *trail_github_annotation(const char *file, long line, const char *title, const char *msg);

/*
 * The penalty flag of a rejected record, an attr-settle(1) flags line (new
 * reference): {"type":"flags","contributor","rejected"|"flagged":1,
 * "record","rules":[NAME...],"file"?,"n"}. A record rejected for personal
 * data or as a copy (a pii-* rule, duplicate, near-duplicate) counts as
 * flagged, one rejected for anything else (schema, size, license, utf8,
 * quality rules) as rejected; rules lists the verdict's rules in order.
 * NULL when the record was accepted, contributor is NULL or empty, or on
 * ENOMEM (*oom set, when oom is not NULL).
 */
json_t *trail_verdict_flag(const json_t *verdict, const char *contributor, int *oom);

/*
 * Datanets: named datasets of signed contributions, recorded in the ledger.
 *
 * Ledger entries (all signed JSON objects, see key.h):
 *   datanet       {"type":"datanet","name","schema":"text|instruct","license",
 *                  "owner":<verifier key>,"policy_object":<digest>?} by the owner
 *   contribution  {"type":"contribution","datanet","bundle":<digest>,
 *                  "contributor","records","root","license","source"?} by the
 *                  contributor; the bundle is an object in the store
 *   approval      {"type":"approval","datanet","contribution":<entry index>,
 *                  "bundle","decision":"approve|reject","reason"?,
 *                  "rejected":[{"n","record"}...]?} by the owner; the latest
 *                  decision for a contribution counts; an approval with
 *                  "rejected" approves the bundle's other records
 *   validation    {"type":"validation","datanet","bundle","report_object",
 *                  "accepted","rejected"} by whoever ran the validation
 *
 * A snapshot NAME@SIZE is the approved records as of tree size SIZE (the
 * first SIZE ledger entries), in ledger order of their contributions, then
 * bundle order: the exact set a model is trained on. Each record comes with
 * "record" (its id), "contributor", "bundle" and "entry" (the contribution's
 * ledger index) beside its own fields. A record contributed twice appears
 * twice, once per contribution.
 *
 * Ownership: JSON values returned through `json_t **` are new references.
 */

#include <stdint.h>

#include <jansson.h>


/* Split "NAME[@SIZE]"; size 0 when absent. *name is trail_malloc'd. */
int trail_datanet_spec(const char *arg, char **name, uint64_t *size, trail_error *err);

/*
 * A record for `schema`: a JSON object of string fields holding the
 * schema's fields, and none of those a snapshot adds (record, contributor,
 * bundle, entry). Extra fields are allowed.
 */
int trail_datanet_check_record(const json_t *rec, const char *schema, trail_error *err);

/*
 * A signed datanet entry by `owner`; TRAIL_EDATA if the name is taken,
 * TRAIL_EUSAGE for a bad name or schema. policy (may be NULL) must be one
 * trail_policy_from_json accepts (TRAIL_EDATA naming the key if not); it is
 * stored as an object in canonical form.
 */
int trail_datanet_create(trail_store *s, const char *name, const char *schema,
			 const char *license, const json_t *policy, const trail_signer *owner,
			 uint64_t *entry, trail_error *err);

/* The datanet entry of `name` as of tree size `size` (0: all). */
int trail_datanet_find(trail_ledger *l, const char *name, uint64_t size, json_t **def,
		       uint64_t *entry, trail_error *err);

/*
 * Add a bundle as a contribution, all or nothing: verified, stored as an
 * object, recorded in a signed entry and committed. The bundle must be
 * for `name`, signed by `contributor`, and its records must fit the
 * datanet's schema. Concurrent contributors wait for the ledger's writer
 * lock. *receipt gets {"datanet","entry","bundle","records","checkpoint",
 * "proof"}: the checkpoint note of the tree holding the entry and the
 * entry's C2SP tlog-proof, both verifiable offline.
 */
int trail_datanet_contribute(trail_store *s, const char *name, const void *bundle, size_t len,
			     const trail_signer *contributor, json_t **receipt, trail_error *err);

/* The owner's decision on the contribution recorded at ledger entry `contribution`. */
int trail_datanet_decide(trail_store *s, const char *name, uint64_t contribution, int approve,
			 const char *reason, const trail_signer *owner, uint64_t *entry,
			 trail_error *err);
/*
 * The same; an approval may leave records out: `rejected` (NULL or an
 * array of {"n": position in records.ndjson from 1, "record": its id},
 * not all of the bundle) goes into the entry, in bundle order, and those
 * records are not in snapshots while this decision is the latest. A
 * position names one copy of a record the bundle holds twice.
 * TRAIL_EUSAGE for a record not in the bundle at that position, or for
 * rejecting every record (reject the bundle instead).
 */
int trail_datanet_approve_records(trail_store *s, const char *name, uint64_t contribution,
				  int approve, const json_t *rejected, const char *reason,
				  const trail_signer *owner, uint64_t *entry, trail_error *err);

/* A signed validation entry; report (the verdict lines) is stored as an object. */
int trail_datanet_record_validation(trail_store *s, const char *name, const char *bundle,
				    const void *report, size_t len, long accepted, long rejected,
				    const trail_signer *signer, uint64_t *entry, trail_error *err);

/*
 * A bundle named by a file path or by the "sha256:" digest of an object in
 * the store (s may be NULL for paths), read and verified.
 */
int trail_datanet_load_bundle(trail_store *s, const char *ref, trail_bundle **out,
			      char digest[72], trail_error *err);
/* The ledger entry that contributed bundle `digest` to datanet `name`. */
int trail_datanet_contribution_of(trail_store *s, const char *name, const char *digest,
				  uint64_t *entry, trail_error *err);
/* The datanet entry and its policy (NULL when it has none). */
int trail_datanet_policy(trail_store *s, const char *name, json_t **def, json_t **policy,
			 trail_error *err);

/*
 * Snapshots. trail_datanet_iter_open reads the ledger as of tree size `size`
 * (0: the committed tree now) and finds the contributions the owner had
 * approved by then (the latest decision counts); trail_datanet_iter_next
 * gives their records one by one, *rec a new reference, NULL at the end.
 * A bundle that does not match its contribution entry (datanet,
 * contributor, record count, root) stops the read with TRAIL_EVERIFY.
 * Entries appended after `size` change nothing: the same store, name and
 * size give the same records in the same order.
 */
typedef struct trail_datanet_iter trail_datanet_iter;
int trail_datanet_iter_open(trail_store *s, const char *name, uint64_t size,
			    trail_datanet_iter **out, trail_error *err);
int trail_datanet_iter_next(trail_datanet_iter *it, json_t **rec, trail_error *err);
/* The tree size the snapshot is read at (the ledger's size when 0 was given). */
uint64_t trail_datanet_iter_size(const trail_datanet_iter *it);
void trail_datanet_iter_free(trail_datanet_iter *it);

/*
 * The same, through a callback called once per record; a non-zero return
 * stops the walk and is returned.
 */
typedef int (*trail_datanet_record_fn)(void *ctx, const json_t *record);
int trail_datanet_snapshot(trail_store *s, const char *name, uint64_t size,
			   trail_datanet_record_fn fn, void *ctx, trail_error *err);

#endif
