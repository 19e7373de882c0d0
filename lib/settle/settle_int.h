/*
 * Settlement's insides, shared by its files and declared nowhere else.
 *
 * Three parts:
 *
 *  1. a strict, allocation-free JSON scanner that checks each NDJSON line
 *     and reads the few members settlement needs in the same pass
 *     (building a JSON tree per record would cost more than everything
 *     else together), optionally over blocks of lines in several threads;
 *  2. the accumulator: per payee, exact sums in 128-bit integers of
 *       acc  = sum over records of fee_num(r) * w(r, payee)
 *       mfee = sum of fee_num(r) over the records of the payee's model
 *     where fee_num(r) = prompt_tokens * fee_per_1k_prompt +
 *     completion_tokens * fee_per_1k_completion is 1000 times the record's
 *     fee, and w(r, payee) is its share in units of 1e-9 after clusters and
 *     normalisation (sum over a record <= 1e9);
 *  3. the result: fees = floor(sum fee_num / 1000) minor units, split by
 *     largest remainder at every level (roles by basis points, then payees
 *     by their exact quotas), then penalties and the conservation checks.
 *
 * Sums of integers do not depend on the order they are taken in, and every
 * rounding happens once, at the end, on those sums: the result is a
 * function of the multiset of lines.
 *
 * The files, each using only those above it:
 *   settle_scan.c     the JSON scanner, growable buffers, fixed-point numbers
 *   settle_policy.c   the handle: policy, payees table, a record's credit
 *   settle_read.c     a line read into the sums; files, with helper threads
 *   settle_penalty.c  which rules a payee breaks; slashing
 *   settle_names.c    short names and key files resolved to the inputs' keys
 *   settle_result.c   largest remainder, the result, conservation; as text
 *   settle_ledger.c   the settlement recorded once in the ledger
 * Functions shared between them are called settle_*; the small hot ones are
 * static inline here, so that splitting the file cost no speed.
 */
#ifndef TRAIL_SETTLE_INT_H
#define TRAIL_SETTLE_INT_H
#include <stdint.h>
#include <string.h>

#include <xxhash.h>

#include "core/core.h"
#include "settle/settle.h"

typedef unsigned __int128 u128;
typedef __int128 i128;

#define NANO 1000000000LL                /* fixed-point unit of shares and scores */
#define FIX_MAX 1000000000000000000LL    /* |fixed-point value| saturates here (1e9) */
#define COUNT_MAX (1ULL << 40)           /* tokens, fees per 1k, flag counts */
/* sum of fee_num: fees stay below 2^53, the largest integer JSON carries exactly */
#define FEES_MAX (((u128)1 << 53) * 1000 - 1)
#define LINE_LIMIT ((size_t)256 << 20)
#define DEPTH_MAX 64

enum { R_PLATFORM, R_MODEL, R_STAKERS, R_CONTRIB };

/* ---- growable byte buffer (settle_scan.c) ------------------------------------------------ */

typedef struct sbuf {
	char *p;
	size_t n, cap;
	int oom; /* set by the first allocation that failed; later writes are dropped */
} sbuf;

/* Room for `more` bytes past n: -1 (and oom set) when it cannot be had. */
int settle_sb_grow(sbuf *b, size_t more);

static inline int sb_reserve(sbuf *b, size_t more)
{
	return b->n + more <= b->cap ? 0 : settle_sb_grow(b, more);
}

static inline void sb_put(sbuf *b, const void *d, size_t n)
{
	if (!sb_reserve(b, n)) {
		memcpy(b->p + b->n, d, n);
		b->n += n;
	}
}

static inline void sb_c(sbuf *b, char c)
{
	if (!sb_reserve(b, 1))
		b->p[b->n++] = c;
}

/* A string in RFC 8785 form: only '"', '\\' and control characters escaped. */
void settle_sb_jstr(sbuf *b, const char *s, size_t n);

/* ---- the scanner (settle_scan.c) ----------------------------------------------------------- */

/* A value's JSON text inside the current line. */
typedef struct span {
	const char *p, *e;
} span;

typedef struct scan {
	const char *p, *e;
	const char *why; /* the first thing found wrong */
	int oom;
} scan;

static inline int bad(scan *s, const char *why)
{
	if (!s->why)
		s->why = why;
	return -1;
}

/* a == b for n bytes: keys and names are short, a call to memcmp costs more than the loop */
static inline int same(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static inline void ws(scan *s)
{
	while (s->p < s->e && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static inline int lit(scan *s, char c)
{
	ws(s);
	if (s->p < s->e && *s->p == c) {
		s->p++;
		return 1;
	}
	return 0;
}

/*
 * A string at s->p: checked completely (escapes, surrogate pairs, UTF-8, no
 * control characters, no NUL). *raw gets the text between the quotes and
 * *esc whether it holds escapes (then settle_decode() gives its value).
 */
int settle_str_scan(scan *s, span *raw, int *esc);
/* Decode a checked string body with escapes, appending it to b (no NUL). */
void settle_decode(const span *raw, sbuf *b);
/* A number per RFC 8259; *isint when it has neither fraction nor exponent. */
int settle_num_scan(scan *s, span *t, int *isint);
/* Check and step over one value. */
int settle_value_skip(scan *s, int depth);

/*
 * Members and elements, one at a time: start with *n == 0. members() gives
 * 1 with the next key (decoded when it holds escapes) after its ':', 0 at
 * the '}'; elements() 1 with s->p at the next element, 0 at the ']'.
 */
#define KEY_RAW_MAX 72 /* the longest key wanted (12 bytes) written with \u escapes */
int settle_members(scan *s, int *n, char *kb, const char **k, size_t *kn);
int settle_elements(scan *s, int *n);

/* Which of keys[] (nk < 32) k is, or -1; *seen refuses a key given twice. */
typedef struct mkey {
	const char *k;
	size_t n;
} mkey;
#define KEY(s) {s, sizeof s - 1}

static inline int key_of(scan *s, const mkey *keys, int nk, const char *k, size_t kn, unsigned *seen, int *out)
{
	*out = -1;
	for (int i = 0; i < nk; i++)
		if (keys[i].n == kn && same(keys[i].k, k, kn)) {
			if (*seen & 1u << i)
				return bad(s, "a member is given twice");
			*seen |= 1u << i;
			*out = i;
			break;
		}
	return 0;
}

/* An integer in [0, max] at s->p; -1 (no message) for anything else. */
int settle_count_at(scan *s, uint64_t max, uint64_t *out);
/*
 * The value of a number's checked text in units of 1e-9, rounded toward zero and saturated at
 * +-FIX_MAX, computed from its decimal text with integers only.
 */
int64_t settle_fixed_of(const char *p, const char *e);

/* ---- the handle and its payees (settle_policy.c) -------------------------------------------- */

typedef struct payee {
	char *name; /* owned, NUL-terminated */
	uint32_t len;
	uint32_t slot;  /* position in the current record's credit list */
	uint64_t mark;  /* the record that slot belongs to */
	u128 acc;       /* sum of fee_num * w */
	u128 mfee;      /* sum of fee_num over records of the models this payee owns */
	i128 neg;       /* sum of negative top scores, 1e-9 units */
	uint64_t rejected, flagged, poisoning;
	uint64_t stake;
	uint8_t rec;  /* named by an attribution record: a contributor as the inputs spell it */
	uint8_t flag; /* named by a flags line */
} payee;

/* String -> index + 1, open addressing over XXH3 (a hash table, not a content address). */
typedef struct ent {
	uint64_t h;
	uint32_t v; /* payee index + 1; 0: empty */
} ent;

typedef struct table {
	ent *e;
	size_t cap, n;
} table;

/* A string as read from a line: in the line itself, or decoded into the arena. */
typedef struct sref {
	size_t off;
	uint32_t len;
	uint8_t arena, null;
} sref;

typedef struct credit {
	uint32_t who;
	u128 w;
	u128 rem;
} credit;

typedef struct scored {
	sref who;
	int64_t v;
} scored;

typedef struct cluster {
	sref first;
	size_t m0, m1; /* members[m0..m1) */
} cluster;

#define VEC(T) struct { T *v; size_t n, cap; }

struct trail_settle {
	json_t *policy;
	uint64_t fee_p, fee_c;
	int64_t bps[4];
	uint32_t platform, model_owner;
	int64_t max_rejected, max_flagged, max_poisoning; /* -1: no rule */
	int has_min_influence;
	int64_t min_influence; /* 1e-9 units */
	int64_t slash_bps;

	payee *pay;
	size_t npay, cappay;
	table names;  /* payee name -> payee */
	table models; /* model -> owning payee; keys in mnames */
	char **mnames;     /* models named in model_owners */
	uint32_t *mowner;  /* their owners (payee indexes) */
	size_t nmodels;

	json_t *anchors; /* attribution-batch entries the inputs were found in (settle_ledger.c); NULL: none */
	int stakes_ledger;   /* policy "stakes": "ledger" */
	json_t *stake_refs;  /* the stake entries used (settle_ledger.c); NULL: none read */

	/* confidence: a record's contributors' share retained (policy "confidence") */
	int conf_rule;                /* the policy has a confidence rule */
	int retain_unattributed;      /* confidence.unattributed == "retain" */
	int has_min_confidence;
	int64_t min_confidence;       /* confidence.min, 1e-9 units */
	u128 lowconf;                 /* sum of fee_num * 1e9 over the records retained so */
	uint64_t lowconf_records;

	/* adapter owners (policy "adapter_owners", "model_split"); nadapters 0: none, the old sums */
	table adapters;               /* adapter -> owner; keys in anames */
	char **anames;
	uint32_t *aowner;
	size_t nadapters;
	int64_t split_base;           /* model_split.base, of 10000 */
	uint64_t adapter_records;

	u128 fees;    /* sum of fee_num */
	uint8_t inputs[32];
	uint64_t records, flag_lines, serial;
	int resolved; /* settle_resolve has run */

	/* per-line scratch, reused: bounded by the longest line */
	sbuf arena, view;
	VEC(scored) contrib;
	VEC(scored) top;
	VEC(sref) members;
	VEC(sref) poison;
	VEC(cluster) clusters;
	VEC(credit) cred;
};

/* Double *cap (16 at first) of elements of `size` bytes: 0, or -1 out of memory. */
int settle_vec_grow(void **v, size_t *cap, size_t size);

#define VEC_PUSH(s, vec, x)                                                                       \
	((vec).n < (vec).cap || settle_vec_grow((void **)&(vec).v, &(vec).cap, sizeof *(vec).v) == 0 \
		 ? ((vec).v[(vec).n++] = (x), 0)                                                   \
		 : -1)

static inline uint64_t hash(const char *p, size_t n)
{
	return XXH3_64bits(p, n);
}

/* The slot for key (n bytes) under h: found (v != 0) or the empty one to fill. */
ent *settle_table_slot(table *t, char **keys, const char *k, size_t n, uint64_t h);
/* The payee called k; created when `create`. 0 found/created, 1 absent, -1 out of memory. */
int settle_payee_get(trail_settle *s, const char *k, size_t n, int create, uint32_t *out);
/* Payees by name, bytewise. */
int settle_name_cmp(const payee *a, const payee *b);
/*
 * The credit of the record now in the per-line scratch (`line` its text),
 * into s->cred: see settle_policy.c. -1 out of memory.
 */
int settle_record_credit(trail_settle *s, const char *line);
/*
 * A stake from the ledger as an input (settle_read.c): the staker's stake
 * set and the view 'S' STAKER AMOUNT added to the inputs digest. -1 out of
 * memory.
 */
int settle_stake_input(trail_settle *s, const char *who, uint64_t amount);

static inline const char *str_of(const trail_settle *s, const char *line, const sref *r)
{
	return r->arena ? s->arena.p + r->off : line + r->off;
}

static inline int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

static inline uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

/* ---- names (settle_names.c) ---------------------------------------------------------------- */

/*
 * Once, after the inputs are read: payees named by the policy or flags
 * lines with a short name or a key file merged into the contributor key
 * the inputs have for them. TRAIL_OK, TRAIL_EDATA (ambiguous, unknown,
 * unreadable key file) or TRAIL_ENOMEM.
 */
int settle_resolve(trail_settle *s, trail_error *err);

/* ---- penalties (settle_penalty.c) ---------------------------------------------------------- */

/* The penalty rules p breaks, as a new array of names (empty: none); NULL out of memory. */
json_t *settle_reasons(const trail_settle *s, const payee *p);
/*
 * Append to `slashed` a {"to","stake","amount","reasons"} for each staker
 * who breaks a rule, taking payees in `order`: TRAIL_OK or TRAIL_ENOMEM.
 */
int settle_slash(const trail_settle *s, const uint32_t *order, json_t *slashed);

#endif
