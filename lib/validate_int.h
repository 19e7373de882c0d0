/*
 * Internal to the validation files (policy.c, quality.c, validate.c): the
 * policy's fields and the rule numbering. Not part of the public API.
 */
#ifndef TRAIL_VALIDATE_INT_H
#define TRAIL_VALIDATE_INT_H

#include "validate.h"

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

#endif
