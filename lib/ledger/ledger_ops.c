/*
 * What trail-log's subcommands do beyond one library call: key arguments
 * of the form LEFT=KEY, and collecting witnesses' cosignatures.
 */
#include <string.h>

#include "core/core.h"
#include "ledger/ledger.h"

/* Split at the '=' after which a key parses (origins and URLs may hold '='). */
static int split(const char *arg, int cosigner, char **left, void **key, trail_error *err)
{
	for (const char *e = strchr(arg, '='); e; e = strchr(e + 1, '=')) {
		int rc = cosigner ? trail_cosigner_load(e + 1, (trail_cosigner **)key, NULL)
				  : trail_verifier_load(e + 1, (trail_verifier **)key, NULL);
		if (rc == TRAIL_OK) {
			if ((*left = trail_strndup(arg, (size_t)(e - arg))))
				return TRAIL_OK;
			if (cosigner)
				trail_cosigner_free(*key);
			else
				trail_verifier_free(*key);
			*key = NULL;
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
	}
	return trail_error_set(err, TRAIL_EUSAGE, "%s: want %s=VKEY with a %s key", arg,
			       cosigner ? "URL" : "ORIGIN", cosigner ? "cosigner (type 0x04)" : "log");
}

int trail_log_key_split(const char *arg, char **origin, trail_verifier **key, trail_error *err)
{
	return split(arg, 0, origin, (void **)key, err);
}

int trail_cosigner_split(const char *arg, char **url, trail_cosigner **key, trail_error *err)
{
	return split(arg, 1, url, (void **)key, err);
}

static int put_json(FILE *out, json_t *j, trail_error *err)
{
	char *s;
	int rc = j ? trail_jcs(j, &s, NULL, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_decref(j);
	if (!rc) {
		fputs(s, out);
		fputc('\n', out);
		trail_free(s);
	}
	return rc;
}

int trail_ledger_cosign(trail_ledger *l, trail_store *s, const char *const *wits, size_t nwit, long timeout_s,
			FILE *out, trail_witness_log_fn refusal, void *ctx, trail_error *err)
{
	char *note = NULL, *cur = NULL;
	size_t nl, curlen;
	int rc, refused = 0, down = 0, got = 0;
	if (!nwit)
		return trail_error_set(err, TRAIL_EUSAGE, "cosign needs --witness URL=VKEY");
	if ((rc = trail_ledger_checkpoint(l, &note, err)))
		return rc;
	nl = strlen(note);
	/* Cosignatures already collected for this very checkpoint are kept. */
	if ((rc = trail_cosigned_attach(s, note, nl, &cur, &curlen, err)))
		goto out;
	for (size_t i = 0; i < nwit && !rc; i++) {
		char *url = NULL, *next;
		trail_cosigner *cs = NULL;
		trail_witness_result res;
		trail_error e = {0};
		if ((rc = trail_cosigner_split(wits[i], &url, &cs, err)))
			break;
		int r = trail_witness_submit(l, note, nl, url, cs, timeout_s, &res, &e);
		json_t *o = json_pack("{s:s, s:s, s:b, s:I, s:I}", "witness", trail_cosigner_name(cs), "url", url,
				      "ok", !r, "size", (json_int_t)res.size, "old", (json_int_t)res.old);
		if (o && res.status)
			json_object_set_new(o, "status", json_integer(res.status));
		if (o && r)
			json_object_set_new(o, "body", json_string(res.body));
		if (r == TRAIL_OK && !(rc = trail_cosigned_merge(cur, curlen, res.lines, &next, &curlen, err))) {
			trail_free(cur);
			cur = next;
			got++;
		} else if (r == TRAIL_EVERIFY || r == TRAIL_EUNAVAIL || r == TRAIL_ELIMIT) {
			if (refusal)
				refusal(ctx, e.msg);
			refused += r == TRAIL_EVERIFY;
			down += r != TRAIL_EVERIFY;
		} else if (r) {
			*err = e;
			rc = r;
		}
		trail_free(res.lines);
		trail_cosigner_free(cs);
		trail_free(url);
		if (!rc)
			rc = put_json(out, o, err);
		else
			json_decref(o);
	}
	if (!rc && got)
		rc = trail_cosigned_write(s, cur, curlen, err);
	if (!rc && (refused || down))
		rc = trail_error_set(err, refused ? TRAIL_EVERIFY : TRAIL_EUNAVAIL, "%d of %zu witnesses %s the checkpoint",
				     refused + down, nwit, refused ? "refused" : "did not cosign");
out:
	trail_free(note);
	trail_free(cur);
	return rc;
}
