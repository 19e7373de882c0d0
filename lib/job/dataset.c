/*
 * A training set from records: each record's tokens, the token where its
 * loss starts (and, for chat records, which tokens count), its id (the snapshot's, else the digest of the record) and
 * contributor, and the RFC 9162 root over the ids that ties an index and a
 * training run to exactly these records.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "data/data.h"
#include "ledger/ledger.h"
#include "model/model.h"
#include "attr/attr.h"
#include "job/job.h"

static const char *str(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

/* s[0..n) encoded with special tokens as tokens, appended to *t (*n, room *cap), each flagged m */
static int put_tokens(const trail_tokenizer *tk, const char *s, size_t n, uint8_t m, int32_t **t, uint8_t **f,
		      size_t *len, size_t *cap, trail_error *err)
{
	int32_t *ids;
	size_t k;
	int rc = trail_tokenizer_encode_ex(tk, s, n, TRAIL_TOKENIZE_SPECIAL, &ids, &k, err);
	if (rc)
		return rc;
	if (*len + k + 1 > *cap) {
		size_t c = (*len + k + 1) * 2;
		int32_t *nt = trail_realloc(*t, c * sizeof *nt);
		if (nt)
			*t = nt;
		uint8_t *nf = nt ? trail_realloc(*f, c) : NULL;
		if (!nf) {
			trail_free(ids);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		*f = nf;
		*cap = c;
	}
	memcpy(*t + *len, ids, k * sizeof *ids);
	memset(*f + *len, m, k);
	*len += k;
	trail_free(ids);
	return TRAIL_OK;
}

static int render(const char *tmpl, const json_t *msgs, size_t upto, int gen, const json_t *vars, char **out,
		  trail_error *err)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < upto; i++)
		json_array_append(a, json_array_get(msgs, i));
	int rc = a ? trail_chat_render(tmpl, a, gen, vars, out, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_decref(a);
	return rc;
}

/*
 * Where a template renders a turn otherwise once later turns follow (Qwen3
 * writes an empty thinking block into the last assistant turn only), the
 * turn's span in the whole rendering all[0, n): its content, found at or
 * after done, and the closing text that follows the content where the turn
 * is rendered last (q, qn bytes long, ends with content and closing), which
 * must follow it in the whole rendering too. 0 and the span in *a, *b; -1
 * when the turn cannot be found so.
 */
static int locate_turn(const char *all, size_t n, size_t done, const char *q, size_t qn, const char *content,
		       size_t *a, size_t *b)
{
	size_t cl = strlen(content), at = 0, close;
	const char *c;
	if (!cl || !(c = strstr(all + done, content)))
		return -1;
	for (const char *x = q; (x = strstr(x, content)); x++) /* the content's last place in q */
		at = (size_t)(x - q) + cl;
	if (!at)
		return -1;
	close = qn - at;
	size_t e = (size_t)(c - all) + cl;
	if (e + close > n || memcmp(all + e, q + at, close))
		return -1;
	*a = (size_t)(c - all);
	*b = e + close;
	return 0;
}

/*
 * A chat record: the conversation rendered with the tokenizer's chat
 * template, and the loss on the assistant's turns only. Turn k's span runs
 * from the end of the conversation before it rendered with the generation
 * prompt to the end of the conversation up to it: what lora-serve would be
 * given and what it should answer. Both must start the whole rendering
 * (templates that render earlier turns differently once later ones exist
 * are refused); each span is encoded on its own, as a served prompt and
 * its answer are.
 */
static int chat_record(const trail_tokenizer *tk, const char *tmpl, const json_t *vars, const json_t *msgs, long line,
		       int32_t **tok, uint8_t **flag, size_t *len, int32_t *first, trail_error *err)
{
	size_t i, cap = 0, done = 0, turns = 0;
	json_t *m;
	char *all = NULL, *p = NULL, *q = NULL;
	int rc;
	*tok = NULL, *flag = NULL, *len = 0;
	if (!json_is_array(msgs) || !json_array_size(msgs))
		return trail_error_at(err, TRAIL_EDATA, "records", line, "\"messages\" is a non-empty list");
	json_array_foreach(msgs, i, m)
		if (!json_is_string(json_object_get(m, "role")) || !json_is_string(json_object_get(m, "content")))
			return trail_error_at(err, TRAIL_EDATA, "records", line, "messages[%zu] has no string role and content", i);
	if ((rc = render(tmpl, msgs, json_array_size(msgs), 0, vars, &all, err)))
		goto out;
	size_t n = strlen(all);
	json_array_foreach(msgs, i, m) {
		if (strcmp(json_string_value(json_object_get(m, "role")), "assistant"))
			continue;
		if ((rc = render(tmpl, msgs, i, 1, vars, &p, err)) || (rc = render(tmpl, msgs, i + 1, 0, vars, &q, err)))
			goto out;
		size_t a = strlen(p), b = strlen(q);
		if ((a < done || a > b || b > n || memcmp(all, q, b) || memcmp(q, p, a)) &&
		    locate_turn(all, n, done, q, b, json_string_value(json_object_get(m, "content")), &a, &b)) {
			rc = trail_error_at(err, TRAIL_EDATA, "records", line,
					    "the chat template renders messages[%zu] differently once later turns follow; its "
					    "assistant tokens cannot be told apart", i);
			goto out;
		}
		if (!turns++)
			*first = -1;
		if ((rc = put_tokens(tk, all + done, a - done, 0, tok, flag, len, &cap, err)))
			goto out;
		if (*first < 0)
			*first = (int32_t)*len;
		if ((rc = put_tokens(tk, all + a, b - a, 1, tok, flag, len, &cap, err)))
			goto out;
		done = b;
		trail_free(p), trail_free(q);
		p = q = NULL;
	}
	if (!turns) {
		rc = trail_error_at(err, TRAIL_EDATA, "records", line, "a chat record has no assistant message to learn");
		goto out;
	}
	rc = put_tokens(tk, all + done, n - done, 0, tok, flag, len, &cap, err);
	if (!rc) { /* end-of-text, as every record ends, outside the loss: the turn's own end token is in it */
		(*tok)[*len] = trail_tokenizer_eot(tk);
		(*flag)[(*len)++] = 0;
	}
out:
	trail_free(all), trail_free(p), trail_free(q);
	if (rc) {
		trail_free(*tok), trail_free(*flag);
		*tok = NULL, *flag = NULL;
	}
	return rc;
}

int trail_dataset_from_records(const json_t *records, const trail_tokenizer *tk,
			       trail_dataset **out, trail_error *err)
{
	char *tmpl = NULL;
	json_t *vars = NULL;
	size_t n = json_array_size(records);
	trail_dataset *d = trail_calloc(1, sizeof *d);
	trail_hash *leaves = trail_malloc((n ? n : 1) * sizeof *leaves);
	trail_buf order = {0};
	int rc = TRAIL_OK;
	*out = NULL;
	if (!d || !leaves || !(d->tok = trail_calloc(n ? n : 1, sizeof *d->tok)) ||
	    !(d->len = trail_calloc(n ? n : 1, sizeof *d->len)) || !(d->first = trail_calloc(n ? n : 1, sizeof *d->first)) ||
	    !(d->id = trail_calloc(n ? n : 1, sizeof *d->id)) ||
	    !(d->contributor = trail_calloc(n ? n : 1, sizeof *d->contributor))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	d->n = n;
	if (!n) {
		rc = trail_error_set(err, TRAIL_EDATA, "no training records");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *r = json_array_get(records, i);
		const char *text = str(r, "text"), *pr = str(r, "prompt"), *co = str(r, "completion");
		json_t *msgs = text || pr ? NULL : json_object_get(r, "messages");
		if (!text && !(pr && co) && !msgs) {
			rc = trail_error_at(err, TRAIL_EDATA, "records", (long)i + 1,
					    "a training record has \"text\", \"prompt\" and \"completion\", or \"messages\"");
			goto out;
		}
		/* the record id: given by a snapshot, else the digest of the record itself */
		if (str(r, "record") && !trail_digest_parse(str(r, "record"), (uint8_t[32]){0}))
			snprintf(d->id[i], 72, "%s", str(r, "record"));
		else if ((rc = trail_record_id(r, d->id[i], err)))
			goto out;
		if (str(r, "contributor") && !(d->contributor[i] = trail_strdup(str(r, "contributor")))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		if (msgs) {
			trail_error e = {0};
			if (!tmpl && (rc = trail_tokenizer_chat(tk, &tmpl, &vars, &e))) {
				rc = rc == TRAIL_ENOMEM ? trail_error_set(err, rc, "out of memory")
					: trail_error_at(err, TRAIL_EDATA, "records", (long)i + 1,
							 "a chat record needs the tokenizer's chat template: %s", e.msg);
				goto out;
			}
			if (!d->mask && !(d->mask = trail_calloc(n, sizeof *d->mask))) {
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				goto out;
			}
			if ((rc = chat_record(tk, tmpl, vars, msgs, (long)i + 1, &d->tok[i], &d->mask[i], &d->len[i],
					      &d->first[i], err)))
				goto out;
			goto leaf;
		}
		int32_t *a = NULL, *b = NULL;
		size_t na = 0, nb = 0;
		if ((rc = trail_tokenizer_encode(tk, text ? text : pr, strlen(text ? text : pr), &a, &na, err)) ||
		    (!text && (rc = trail_tokenizer_encode(tk, co, strlen(co), &b, &nb, err)))) {
			trail_free(a);
			goto out;
		}
		d->tok[i] = trail_malloc((na + nb + 1) * sizeof **d->tok);
		if (!d->tok[i]) {
			trail_free(a), trail_free(b);
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		memcpy(d->tok[i], a, na * sizeof *a);
		if (nb)
			memcpy(d->tok[i] + na, b, nb * sizeof *b);
		d->tok[i][na + nb] = trail_tokenizer_eot(tk);
		d->len[i] = na + nb + 1;
		d->first[i] = text ? 0 : (int32_t)na;
		trail_free(a), trail_free(b);
	leaf:;
		uint8_t dg[32];
		trail_digest_parse(d->id[i], dg);
		trail_merkle_leaf(dg, 32, leaves[i]);
		if (trail_buf_put(&order, d->id[i], 71) || trail_buf_put(&order, "\n", 1)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
	}
	trail_hash root;
	trail_merkle_root_of((const trail_hash *)leaves, n, root);
	trail_base64(root, 32, d->root);
	trail_digest_str(order.p, order.n, d->order);
	*out = d;
	d = NULL;
out:
	trail_free(tmpl);
	json_decref(vars);
	trail_buf_release(&order);
	trail_free(leaves);
	trail_dataset_free(d);
	return rc;
}
