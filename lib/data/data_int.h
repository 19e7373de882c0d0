/*
 * Internal to the validation files (policy.c, quality.c, validate.c): the
 * policy's fields and the rule numbering. Not part of the public API.
 */
#ifndef TRAIL_DATA_INT_H
#define TRAIL_DATA_INT_H
#include <string.h>

#include "data/data.h"

/* Rules in report order; the names are in policy.c's table. */
enum trail_rule_id {
	R_UTF8,
	R_SCHEMA,
	R_SIZE,
	R_LICENSE,
	R_DUPLICATE,
	R_NEAR,
	R_GQ_WORDS,
	R_GQ_WORDLEN,
	R_GQ_SYMBOL,
	R_GQ_BULLET,
	R_GQ_ELLIPSIS,
	R_GQ_ALPHA,
	R_GQ_STOP,
	R_GR_LINES,
	R_GR_PARAS,
	R_GR_TOP,
	R_GR_DUP,
	R_C4_LOREM,
	R_C4_CURLY,
	R_C4_BADWORDS,
	R_C4_SENTENCES,
	R_FW_PUNCT,
	R_FW_SHORT,
	R_FW_DUPCHARS,
	R_FW_NEWLINE,
	R_PII_EMAIL,
	R_PII_PHONE,
	R_PII_IP,
	R_PII_KEY,
	R_PII_TOKEN,
	R_COUNT
};

typedef struct trail_words {
	char **v;
	size_t n;
} trail_words;

struct trail_policy {
	int schema;
	int redact;
	unsigned char on[R_COUNT];

	long long max_bytes;     /* size */
	int license_required;    /* license */
	trail_words licenses;
	trail_nd_params nd;      /* near-duplicate */

	long long gq_min_words, gq_max_words;
	double gq_min_wordlen, gq_max_wordlen;
	double gq_max_symbol;
	double gq_max_bullet, gq_max_ellipsis;
	double gq_min_alpha;
	long long gq_min_stop;
	trail_words gq_stop_words;

	double gr_line_frac, gr_line_chars;
	double gr_para_frac, gr_para_chars;
	double gr_top[5];  /* [2..4] */
	double gr_dup[11]; /* [5..10] */

	trail_words c4_bad_words;
	long long c4_min_sentences, c4_min_line_words, c4_max_word_len;
	int c4_terminal_punct, c4_javascript, c4_policy_lines;

	double fw_min_punct;
	double fw_max_short;
	long long fw_short_len;
	double fw_max_dup_chars;
	double fw_max_newline;
};

const char *trail_rule_name_of(int id);

/* For validate_shard.c: the validator's policy, and a verdict from a partial's record line. */
const trail_policy *trail_validator_policy(const trail_validator *v);
/* TRAIL_EDATA when the line is not a partial's record line, TRAIL_ENOMEM. */
int trail_validator_partial_verdict(trail_validator *v, const json_t *line, json_t **verdict);

/*
 * Scratch buffers for the quality rules, kept from one text to the next
 * (trail_quality_check makes and frees one per call).
 */
typedef struct trail_qscratch trail_qscratch;
trail_qscratch *trail_qscratch_new(void);
void trail_qscratch_free(trail_qscratch *q);
int trail_quality_check_with(const trail_policy *p, trail_qscratch *q, const char *text,
			     size_t len, json_t *reasons);

/*
 * For the tests: trail_pii_scan with each byte-driven scanner (phones,
 * IPv4, tokens) run on its own over every byte, as written; the fast path
 * runs them in one pass and must find the same matches.
 */
long trail_pii_scan_reference(const char *s, size_t len, unsigned kinds, trail_pii_match *m,
			      size_t max);

/*
 * For the tests: make m use MinHash kernel `which` (0 the C reference,
 * 1 AVX2, 2 AVX-512); TRAIL_EUSAGE where the CPU lacks it. Every kernel
 * gives the same signature.
 */
int trail_minhasher_set_kernel(trail_minhasher *m, int which);

/*
 * Bytewise tests eight bytes at a time (SWAR) for the text scanners. A
 * mask has the high bit of each byte that passes; tx_bits packs those into
 * one bit per byte, byte i (in text order) at bit i.
 */
#define TX_ONES 0x0101010101010101ull
#define TX_HIGH 0x8080808080808080ull

static inline uint64_t tx_load(const void *p)
{
	uint64_t x;
	memcpy(&x, p, sizeof x);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	x = __builtin_bswap64(x);
#endif
	return x;
}

static inline void tx_store(void *p, uint64_t x)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	x = __builtin_bswap64(x);
#endif
	memcpy(p, &x, sizeof x);
}

/* Up to 8 bytes from p, zero-padded. */
static inline uint64_t tx_load_tail(const void *p, size_t n)
{
	unsigned char t[8] = {0};
	memcpy(t, p, n < 8 ? n : 8);
	return tx_load(t);
}

/* ASCII bytes in [lo, hi] (lo <= hi < 0x80); bytes >= 0x80 never pass. */
static inline uint64_t tx_range(uint64_t x, unsigned lo, unsigned hi)
{
	uint64_t h = x & ~TX_HIGH;
	return (h + (0x80 - lo) * TX_ONES) & ~(h + (0x7f - hi) * TX_ONES) & ~x & TX_HIGH;
}

/* Bytes equal to c. */
static inline uint64_t tx_eq(uint64_t x, unsigned c)
{
	uint64_t y = x ^ (c * TX_ONES);
	uint64_t t = (y & ~TX_HIGH) + ~TX_HIGH;
	return ~(t | y | ~TX_HIGH);
}

static inline unsigned tx_bits(uint64_t mask)
{
	return (unsigned)((((mask >> 7) & TX_ONES) * 0x0102040810204080ull) >> 56);
}

/* Bit count, without a library call where the target has no POPCNT instruction. */
static inline unsigned tx_popcount(uint64_t x)
{
#ifdef __POPCNT__
	return (unsigned)__builtin_popcountll(x);
#else
	x -= (x >> 1) & 0x5555555555555555ull;
	x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
	x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
	return (unsigned)((x * 0x0101010101010101ull) >> 56);
#endif
}

/* ASCII letters folded to lower case. */
static inline uint64_t tx_fold(uint64_t x)
{
	return x ^ (tx_range(x, 'A', 'Z') >> 2);
}

#endif
