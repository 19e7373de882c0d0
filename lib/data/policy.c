/*
 * Validation policies: the rule catalogue, its defaults, and the JSON policy
 * file. Every threshold is a parameter of a named rule; the table below is
 * the single list that parsing, printing and the man page follow.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "data/data_int.h"

enum { P_INT, P_NUM, P_BOOL, P_WORDS };

struct param {
	const char *name;
	int type;
	size_t off;
	double lo, hi;
};

struct rule {
	const char *name;
	int fixed;   /* always on */
	int quality; /* off by default for the instruct schema */
	struct param p[7];
};

#define F(field) offsetof(struct trail_policy, field)
#define FRAC(name, field) {name, P_NUM, F(field), 0, 1}

static const struct rule rules[R_COUNT] = {
	[R_UTF8] = {"utf8", 1, 0, {{0}}},
	[R_SCHEMA] = {"schema", 1, 0, {{0}}},
	[R_SIZE] = {"size", 0, 0, {{"max-bytes", P_INT, F(max_bytes), 2, 1 << 30}}},
	[R_LICENSE] = {"license", 0, 0,
		       {{"required", P_BOOL, F(license_required), 0, 1},
			{"allowed", P_WORDS, F(licenses), 0, 0}}},
	[R_DUPLICATE] = {"duplicate", 0, 0, {{0}}},
	[R_NEAR] = {"near-duplicate", 0, 0,
		    {{"shingle", P_INT, F(nd.shingle), 1, 64},
		     {"bands", P_INT, F(nd.bands), 1, 64},
		     {"rows", P_INT, F(nd.rows), 1, 32},
		     FRAC("threshold", nd.threshold),
		     {"seed", P_INT, F(nd.seed), 0, 9007199254740991.0}}},
	[R_GQ_WORDS] = {"gopher-word-count", 0, 1,
			{{"min", P_INT, F(gq_min_words), 0, 1e15},
			 {"max", P_INT, F(gq_max_words), 0, 1e15}}},
	[R_GQ_WORDLEN] = {"gopher-mean-word-length", 0, 1,
			  {{"min", P_NUM, F(gq_min_wordlen), 0, 1e6},
			   {"max", P_NUM, F(gq_max_wordlen), 0, 1e6}}},
	[R_GQ_SYMBOL] = {"gopher-symbol-ratio", 0, 1, {{"max", P_NUM, F(gq_max_symbol), 0, 1e6}}},
	[R_GQ_BULLET] = {"gopher-bullet-lines", 0, 1, {FRAC("max", gq_max_bullet)}},
	[R_GQ_ELLIPSIS] = {"gopher-ellipsis-lines", 0, 1, {FRAC("max", gq_max_ellipsis)}},
	[R_GQ_ALPHA] = {"gopher-alpha-words", 0, 1, {FRAC("min", gq_min_alpha)}},
	[R_GQ_STOP] = {"gopher-stop-words", 0, 1,
		       {{"min", P_INT, F(gq_min_stop), 0, 1e6},
			{"words", P_WORDS, F(gq_stop_words), 0, 0}}},
	[R_GR_LINES] = {"gopher-dup-lines", 0, 1,
			{FRAC("max-fraction", gr_line_frac), FRAC("max-char-fraction", gr_line_chars)}},
	[R_GR_PARAS] = {"gopher-dup-paragraphs", 0, 1,
			{FRAC("max-fraction", gr_para_frac), FRAC("max-char-fraction", gr_para_chars)}},
	[R_GR_TOP] = {"gopher-top-ngram", 0, 1,
		      {FRAC("2", gr_top[2]), FRAC("3", gr_top[3]), FRAC("4", gr_top[4])}},
	[R_GR_DUP] = {"gopher-dup-ngram", 0, 1,
		      {FRAC("5", gr_dup[5]), FRAC("6", gr_dup[6]), FRAC("7", gr_dup[7]),
		       FRAC("8", gr_dup[8]), FRAC("9", gr_dup[9]), FRAC("10", gr_dup[10])}},
	[R_C4_LOREM] = {"c4-lorem-ipsum", 0, 1, {{0}}},
	[R_C4_CURLY] = {"c4-curly-bracket", 0, 1, {{0}}},
	[R_C4_BADWORDS] = {"c4-bad-words", 0, 1, {{"words", P_WORDS, F(c4_bad_words), 0, 0}}},
	[R_C4_SENTENCES] = {"c4-sentences", 0, 1,
			    {{"min", P_INT, F(c4_min_sentences), 0, 1e6},
			     {"min-line-words", P_INT, F(c4_min_line_words), 0, 1e6},
			     {"max-word-length", P_INT, F(c4_max_word_len), 1, 1e9},
			     {"terminal-punct", P_BOOL, F(c4_terminal_punct), 0, 1},
			     {"javascript", P_BOOL, F(c4_javascript), 0, 1},
			     {"policy", P_BOOL, F(c4_policy_lines), 0, 1}}},
	[R_FW_PUNCT] = {"fineweb-line-punct", 0, 1, {FRAC("min", fw_min_punct)}},
	[R_FW_SHORT] = {"fineweb-short-lines", 0, 1,
			{FRAC("max", fw_max_short), {"length", P_INT, F(fw_short_len), 0, 1e6}}},
	[R_FW_DUPCHARS] = {"fineweb-dup-line-chars", 0, 1, {FRAC("max", fw_max_dup_chars)}},
	[R_FW_NEWLINE] = {"fineweb-newline-ratio", 0, 1, {{"max", P_NUM, F(fw_max_newline), 0, 1e6}}},
	[R_PII_EMAIL] = {"pii-email", 0, 0, {{0}}},
	[R_PII_PHONE] = {"pii-phone", 0, 0, {{0}}},
	[R_PII_IP] = {"pii-ip", 0, 0, {{0}}},
	[R_PII_KEY] = {"pii-private-key", 0, 0, {{0}}},
	[R_PII_TOKEN] = {"pii-api-token", 0, 0, {{0}}},
};

const char *trail_rule_name_of(int id)
{
	return id >= 0 && id < R_COUNT ? rules[id].name : "?";
}

const char *trail_rule_name(size_t i)
{
	return i < R_COUNT ? rules[i].name : NULL;
}

int trail_schema_parse(const char *name)
{
	if (!name)
		return -1;
	if (!strcmp(name, "text"))
		return TRAIL_SCHEMA_TEXT;
	if (!strcmp(name, "instruct"))
		return TRAIL_SCHEMA_INSTRUCT;
	if (!strcmp(name, "chat"))
		return TRAIL_SCHEMA_CHAT;
	return -1;
}

const char *trail_schema_name(int schema)
{
	return schema == TRAIL_SCHEMA_INSTRUCT ? "instruct" : schema == TRAIL_SCHEMA_CHAT ? "chat" : "text";
}

int trail_chat_messages_check(const json_t *messages, char *why, size_t n)
{
	static const char *const roles[] = {"system", "user", "assistant"};
	size_t i, assistant = 0;
	json_t *m;
	if (!json_is_array(messages) || !json_array_size(messages)) {
		snprintf(why, n, "\"messages\" is not a non-empty list");
		return -1;
	}
	json_array_foreach(messages, i, m)
	{
		const char *role = json_string_value(json_object_get(m, "role"));
		size_t r = 0;
		if (!json_is_object(m) || !role || !json_is_string(json_object_get(m, "content")) ||
		    json_object_size(m) != 2) {
			snprintf(why, n, "messages[%zu] is not an object of a string role and a string content", i);
			return -1;
		}
		while (r < 3 && strcmp(role, roles[r]))
			r++;
		if (r == 3) {
			snprintf(why, n, "messages[%zu]: role '%.32s' is not system, user or assistant", i, role);
			return -1;
		}
		assistant += r == 2;
	}
	if (!assistant) {
		snprintf(why, n, "\"messages\" has no assistant turn to learn");
		return -1;
	}
	return 0;
}

static void words_clear(trail_words *w)
{
	for (size_t i = 0; i < w->n; i++)
		trail_free(w->v[i]);
	trail_free(w->v);
	w->v = NULL;
	w->n = 0;
}

static int words_set(trail_words *w, const char *const *list, size_t n)
{
	words_clear(w);
	if (!n)
		return TRAIL_OK;
	if (!(w->v = trail_calloc(n, sizeof *w->v)))
		return TRAIL_ENOMEM;
	for (; w->n < n; w->n++)
		if (!(w->v[w->n] = trail_strdup(list[w->n])))
			return TRAIL_ENOMEM;
	return TRAIL_OK;
}

void trail_nd_params_default(trail_nd_params *p)
{
	p->shingle = 5;
	p->bands = 14;
	p->rows = 8;
	p->threshold = 0.7;
	p->seed = 1;
}

/* Gopher's stop words (Rae et al. 2021, appendix A). */
static const char *const stop_words[] = {"the", "be", "to", "of", "and", "that", "have", "with"};

static int set_defaults(trail_policy *p, int schema)
{
	p->schema = schema;
	for (int i = 0; i < R_COUNT; i++)
		p->on[i] = !(schema != TRAIL_SCHEMA_TEXT && rules[i].quality);
	p->max_bytes = 1 << 20;
	trail_nd_params_default(&p->nd);
	/* Gopher quality filter (MassiveText). */
	p->gq_min_words = 50;
	p->gq_max_words = 100000;
	p->gq_min_wordlen = 3;
	p->gq_max_wordlen = 10;
	p->gq_max_symbol = 0.1;
	p->gq_max_bullet = 0.9;
	p->gq_max_ellipsis = 0.3;
	p->gq_min_alpha = 0.8;
	p->gq_min_stop = 2;
	/* Gopher repetition filter. */
	p->gr_line_frac = 0.3;
	p->gr_line_chars = 0.2;
	p->gr_para_frac = 0.3;
	p->gr_para_chars = 0.2;
	p->gr_top[2] = 0.20;
	p->gr_top[3] = 0.18;
	p->gr_top[4] = 0.16;
	for (int n = 5; n <= 10; n++)
		p->gr_dup[n] = 0.15 - 0.01 * (n - 5);
	/* C4 (Raffel et al. 2020) as in its reference implementation. */
	p->c4_min_sentences = 5;
	p->c4_min_line_words = 3;
	p->c4_max_word_len = 1000;
	p->c4_terminal_punct = 1;
	p->c4_javascript = 1;
	p->c4_policy_lines = 1;
	/* FineWeb's own filters (Penedo et al. 2024). */
	p->fw_min_punct = 0.12;
	p->fw_max_short = 0.67;
	p->fw_short_len = 30;
	p->fw_max_dup_chars = 0.1;
	p->fw_max_newline = 0.3;
	return words_set(&p->gq_stop_words, stop_words, sizeof stop_words / sizeof *stop_words);
}

void trail_policy_free(trail_policy *p)
{
	if (!p)
		return;
	words_clear(&p->licenses);
	words_clear(&p->gq_stop_words);
	words_clear(&p->c4_bad_words);
	trail_free(p);
}

int trail_policy_new(int schema, trail_policy **out)
{
	trail_policy *p = trail_calloc(1, sizeof *p);
	*out = NULL;
	if (!p)
		return TRAIL_ENOMEM;
	if (set_defaults(p, schema == TRAIL_SCHEMA_INSTRUCT || schema == TRAIL_SCHEMA_CHAT ? schema : TRAIL_SCHEMA_TEXT)) {
		trail_policy_free(p);
		return TRAIL_ENOMEM;
	}
	*out = p;
	return TRAIL_OK;
}

int trail_policy_schema(const trail_policy *p)
{
	return p->schema;
}

int trail_policy_redact(const trail_policy *p)
{
	return p->redact;
}

void trail_policy_set_redact(trail_policy *p, int on)
{
	p->redact = !!on;
}

int trail_policy_enabled(const trail_policy *p, const char *name)
{
	for (int i = 0; i < R_COUNT; i++)
		if (!strcmp(rules[i].name, name))
			return p->on[i];
	return -1;
}

static int set_param(trail_policy *p, const struct param *pa, const json_t *v, const char *source,
		     const char *rule, trail_error *err)
{
	char *base = (char *)p + pa->off;
	if (pa->type == P_BOOL) {
		if (!json_is_boolean(v))
			goto type;
		*(int *)base = json_is_true(v);
		return TRAIL_OK;
	}
	if (pa->type == P_WORDS) {
		size_t i, n;
		json_t *e;
		if (!json_is_array(v))
			goto type;
		n = json_array_size(v);
		const char **list = trail_calloc(n ? n : 1, sizeof *list);
		if (!list)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		json_array_foreach(v, i, e)
		{
			if (!json_is_string(e) || !json_string_length(e)) {
				trail_free(list);
				goto type;
			}
			list[i] = json_string_value(e);
		}
		int rc = words_set((trail_words *)base, list, n);
		trail_free(list);
		return rc ? trail_error_set(err, rc, "out of memory") : TRAIL_OK;
	}
	if (!json_is_number(v))
		goto type;
	double d = json_number_value(v);
	if (pa->type == P_INT && (!json_is_integer(v)))
		goto type;
	if (!(d >= pa->lo && d <= pa->hi))
		return trail_error_at(err, TRAIL_EDATA, source, 0,
				      "rules.%s.%s: %g is out of range [%g, %g]", rule, pa->name, d,
				      pa->lo, pa->hi);
	if (pa->type == P_NUM)
		*(double *)base = d;
	else if (pa->off == F(nd.seed))
		*(uint64_t *)base = (uint64_t)json_integer_value(v);
	else if (pa->off == F(nd.shingle) || pa->off == F(nd.bands) || pa->off == F(nd.rows))
		*(int *)base = (int)json_integer_value(v);
	else
		*(long long *)base = json_integer_value(v);
	return TRAIL_OK;
type:
	return trail_error_at(err, TRAIL_EDATA, source, 0, "rules.%s.%s: expected %s", rule,
			      pa->name,
			      pa->type == P_BOOL    ? "true or false"
			      : pa->type == P_WORDS ? "an array of non-empty strings"
			      : pa->type == P_INT   ? "an integer"
						    : "a number");
}

static int set_rule(trail_policy *p, int r, const json_t *v, const char *source, trail_error *err)
{
	const struct rule *ru = &rules[r];
	const char *k;
	json_t *pv;
	if (json_is_boolean(v)) {
		if (ru->fixed && !json_is_true(v))
			return trail_error_at(err, TRAIL_EDATA, source, 0,
					      "rules.%s cannot be turned off", ru->name);
		p->on[r] = json_is_true(v);
		return TRAIL_OK;
	}
	if (!json_is_object(v))
		return trail_error_at(err, TRAIL_EDATA, source, 0,
				      "rules.%s: expected true, false or an object", ru->name);
	p->on[r] = 1;
	json_object_foreach((json_t *)v, k, pv)
	{
		if (!strcmp(k, "enabled")) {
			if (!json_is_boolean(pv))
				return trail_error_at(err, TRAIL_EDATA, source, 0,
						      "rules.%s.enabled: expected true or false",
						      ru->name);
			if (ru->fixed && !json_is_true(pv))
				return trail_error_at(err, TRAIL_EDATA, source, 0,
						      "rules.%s cannot be turned off", ru->name);
			p->on[r] = json_is_true(pv);
			continue;
		}
		const struct param *pa = NULL;
		for (int i = 0; i < 7 && ru->p[i].name; i++)
			if (!strcmp(ru->p[i].name, k))
				pa = &ru->p[i];
		if (!pa)
			return trail_error_at(err, TRAIL_EDATA, source, 0, "unknown key 'rules.%s.%s'",
					      ru->name, k);
		int rc = set_param(p, pa, pv, source, ru->name, err);
		if (rc)
			return rc;
	}
	return TRAIL_OK;
}

int trail_policy_from_json(const json_t *j, const char *source, int schema, trail_policy **out,
			   trail_error *err)
{
	const char *k;
	json_t *v;
	*out = NULL;
	if (!source)
		source = "policy";
	if (!json_is_object(j))
		return trail_error_at(err, TRAIL_EDATA, source, 0, "a policy is a JSON object");
	json_t *js = json_object_get(j, "schema");
	if (schema < 0 && js) {
		schema = trail_schema_parse(json_string_value(js));
		if (schema < 0)
			return trail_error_at(err, TRAIL_EDATA, source, 0,
					      "schema: expected \"text\" or \"instruct\"");
	}
	trail_policy *p;
	if (trail_policy_new(schema < 0 ? TRAIL_SCHEMA_TEXT : schema, &p))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = TRAIL_OK;
	json_object_foreach((json_t *)j, k, v)
	{
		if (!strcmp(k, "schema")) {
			if (trail_schema_parse(json_string_value(v)) < 0)
				rc = trail_error_at(err, TRAIL_EDATA, source, 0,
						    "schema: expected \"text\" or \"instruct\"");
		} else if (!strcmp(k, "redact")) {
			if (!json_is_boolean(v))
				rc = trail_error_at(err, TRAIL_EDATA, source, 0,
						    "redact: expected true or false");
			p->redact = json_is_true(v);
		} else if (!strcmp(k, "rules")) {
			const char *rk;
			json_t *rv;
			if (!json_is_object(v)) {
				rc = trail_error_at(err, TRAIL_EDATA, source, 0,
						    "rules: expected an object");
				break;
			}
			json_object_foreach(v, rk, rv)
			{
				int r = 0;
				while (r < R_COUNT && strcmp(rules[r].name, rk))
					r++;
				if (r == R_COUNT)
					rc = trail_error_at(err, TRAIL_EDATA, source, 0,
							    "unknown key 'rules.%s'", rk);
				else
					rc = set_rule(p, r, rv, source, err);
				if (rc)
					break;
			}
		} else {
			rc = trail_error_at(err, TRAIL_EDATA, source, 0, "unknown key '%s'", k);
		}
		if (rc)
			break;
	}
	if (!rc && (long long)p->nd.bands * p->nd.rows > TRAIL_ND_MAXPERM)
		rc = trail_error_at(err, TRAIL_EDATA, source, 0,
				    "rules.near-duplicate: bands x rows is over %d", TRAIL_ND_MAXPERM);
	if (!rc && p->gq_min_words > p->gq_max_words)
		rc = trail_error_at(err, TRAIL_EDATA, source, 0,
				    "rules.gopher-word-count: min is over max");
	if (rc) {
		trail_policy_free(p);
		return rc;
	}
	*out = p;
	return TRAIL_OK;
}

/*
 * Named starting points. Each is a policy object over the defaults, in the
 * form a policy file takes; `web` is the defaults themselves.
 *   web         web pages, as Gopher, C4 and FineWeb were tuned for
 *   short-form  knowledge-base entries, glossaries, Q&A: a few words or
 *               one line is a record; the rules that need a long
 *               document (stop words, the most frequent n-gram, C4's
 *               sentences, FineWeb's line punctuation and short lines)
 *               are off, long repeats (gopher-dup-ngram) still count
 *   code        source code: no prose rules at all; duplicates, size and
 *               PII (keys and tokens above all) still apply
 */
static const struct {
	const char *name, *json;
} presets[] = {
	{"web", "{}"},
	{"short-form", "{\"rules\":{"
		       "\"gopher-word-count\":{\"min\":3},"
		       "\"gopher-stop-words\":false,"
		       "\"gopher-top-ngram\":false,"
		       "\"c4-sentences\":false,"
		       "\"fineweb-line-punct\":false,"
		       "\"fineweb-short-lines\":false}}"},
	{"code", "{\"rules\":{"
		 "\"gopher-word-count\":false,\"gopher-mean-word-length\":false,"
		 "\"gopher-symbol-ratio\":false,\"gopher-bullet-lines\":false,"
		 "\"gopher-ellipsis-lines\":false,\"gopher-alpha-words\":false,"
		 "\"gopher-stop-words\":false,\"gopher-dup-lines\":false,"
		 "\"gopher-dup-paragraphs\":false,\"gopher-top-ngram\":false,"
		 "\"gopher-dup-ngram\":false,\"c4-lorem-ipsum\":false,"
		 "\"c4-curly-bracket\":false,\"c4-bad-words\":false,\"c4-sentences\":false,"
		 "\"fineweb-line-punct\":false,\"fineweb-short-lines\":false,"
		 "\"fineweb-dup-line-chars\":false,\"fineweb-newline-ratio\":false}}"},
};

const char *trail_policy_preset_name(size_t i)
{
	return i < sizeof presets / sizeof *presets ? presets[i].name : NULL;
}

int trail_policy_preset(const char *name, int schema, trail_policy **out, trail_error *err)
{
	*out = NULL;
	for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
		if (strcmp(presets[i].name, name))
			continue;
		json_error_t je;
		json_t *j = json_loads(presets[i].json, 0, &je);
		if (!j)
			return trail_error_set(err, TRAIL_EINTERNAL, "preset %s: %s", name, je.text);
		int rc = trail_policy_from_json(j, name, schema < 0 ? TRAIL_SCHEMA_TEXT : schema, out, err);
		json_decref(j);
		/* a preset tunes rules; it turns on none the schema has off */
		for (int r = 0; !rc && r < R_COUNT; r++)
			if ((*out)->schema != TRAIL_SCHEMA_TEXT && rules[r].quality)
				(*out)->on[r] = 0;
		return rc;
	}
	return trail_error_set(err, TRAIL_EUSAGE, "no policy preset '%s' (web, short-form or code)", name);
}

int trail_policy_load(const char *path, int schema, trail_policy **out, trail_error *err)
{
	void *buf;
	size_t len;
	json_t *j;
	*out = NULL;
	int rc = trail_read_file(path, 1 << 20, &buf, &len, err);
	if (rc)
		return rc;
	rc = trail_json_parse(buf, len, path, &j, err);
	trail_free(buf);
	if (rc)
		return rc;
	rc = trail_policy_from_json(j, path, schema, out, err);
	json_decref(j);
	return rc;
}

static json_t *param_json(const trail_policy *p, const struct param *pa)
{
	const char *base = (const char *)p + pa->off;
	switch (pa->type) {
	case P_BOOL:
		return json_boolean(*(const int *)base);
	case P_NUM: {
		/* Print thresholds the way they were written: 0.15, not 0.15000000000000002. */
		double d = *(const double *)base;
		return json_real(round(d * 1e9) / 1e9);
	}
	case P_WORDS: {
		const trail_words *w = (const trail_words *)base;
		json_t *a = json_array();
		for (size_t i = 0; a && i < w->n; i++)
			json_array_append_new(a, json_string(w->v[i]));
		return a;
	}
	}
	if (pa->off == F(nd.seed))
		return json_integer((json_int_t) * (const uint64_t *)base);
	if (pa->off == F(nd.shingle) || pa->off == F(nd.bands) || pa->off == F(nd.rows))
		return json_integer(*(const int *)base);
	return json_integer(*(const long long *)base);
}

json_t *trail_policy_to_json(const trail_policy *p)
{
	json_t *j = json_object(), *rs = json_object();
	if (!j || !rs) {
		json_decref(j);
		json_decref(rs);
		return NULL;
	}
	json_object_set_new(j, "schema", json_string(trail_schema_name(p->schema)));
	json_object_set_new(j, "redact", json_boolean(p->redact));
	for (int r = 0; r < R_COUNT; r++) {
		json_t *o = json_object();
		json_object_set_new(o, "enabled", json_boolean(p->on[r]));
		for (int i = 0; i < 7 && rules[r].p[i].name; i++)
			json_object_set_new(o, rules[r].p[i].name, param_json(p, &rules[r].p[i]));
		json_object_set_new(rs, rules[r].name, o);
	}
	json_object_set_new(j, "rules", rs);
	return j;
}
