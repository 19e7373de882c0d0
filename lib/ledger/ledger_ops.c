/*
 * What trail-log's subcommands do beyond one library call: collecting
 * witnesses' cosignatures, and checking proofs and checkpoints, locally or
 * against a log served as tiles.
 */
#include <inttypes.h>
#include <string.h>

#include "core/core.h"
#include "ledger/ledger.h"

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

/* The keys of a verification, loaded. */
typedef struct pkeys {
	const trail_verifier *const *vs;
	size_t nv;
	const char *origin;
	const trail_cosigner *const *cs;
	size_t nc, quorum;
	const char *url;
	long timeout_s;
} pkeys;

/* The checkpoint served at o->url (and its cosignatures, with cosigners): one line to out. */
static int served(const pkeys *o, trail_tiles *t, FILE *out, trail_error *err)
{
	trail_hash root;
	char b64[64], cos[48] = "";
	size_t got = 0;
	int rc = TRAIL_OK;
	if (o->nc)
		rc = trail_witness_check_url(t, o->url, o->vs, o->nv, o->origin, o->cs, o->nc, o->quorum,
					     o->timeout_s, &got, err);
	if (!rc && o->nc)
		snprintf(cos, sizeof cos, "\"cosigned\":%zu,", got);
	trail_tiles_root(t, root);
	trail_base64(root, 32, b64);
	if (!rc)
		fprintf(out, "{%s\"fetched\":%" PRIu64 ",\"ok\":true,\"root\":\"%s\",\"size\":%" PRIu64 "}\n", cos,
			trail_tiles_fetched(t), b64, trail_tiles_size(t));
	return rc;
}

static int verify_files(const pkeys *o, const char *const *files, size_t n, FILE *out, int *bad, trail_error *err)
{
	trail_tiles *t = NULL;
	int rc = TRAIL_OK;
	*bad = 0;
	if (o->url) {
		trail_tiles_opts to = {.timeout_s = o->timeout_s};
		if (!(rc = trail_tiles_open(o->url, o->vs, o->nv, o->origin, &to, &t, err)) && !n)
			rc = served(o, t, out, err);
	}
	for (size_t i = 0; i < n && !rc; i++) {
		void *b;
		size_t len, got = 0;
		trail_error e = {0};
		if ((rc = trail_read_file(files[i], 1 << 20, &b, &len, err)))
			break;
		/* with cosigners: a cosigned checkpoint or receipt, then as without */
		int r = o->nc ? trail_checkpoint_check_quorum(b, len, o->vs, o->nv, o->origin, o->cs, o->nc, o->quorum,
							      &got, &e)
			      : TRAIL_OK;
		if (!r && (t || !o->nc))
			r = !t ? trail_proof_check(b, len, o->vs, o->nv, o->origin, &e)
			    : len > 6 && !memcmp(b, "c2sp.org/tlog-proof@", 20)
				? trail_tiles_check_receipt(t, b, len, o->vs, o->nv, &e)
				: trail_tiles_check_checkpoint(t, b, len, o->vs, o->nv, &e);
		trail_free(b);
		if (r && r != TRAIL_EVERIFY && r != TRAIL_EDATA) {
			*err = e;
			rc = r;
			break;
		}
		json_t *j = json_pack("{s:s, s:b}", "file", files[i], "ok", !r);
		if (j && o->nc)
			json_object_set_new(j, "cosigned", json_integer((json_int_t)got));
		if (j && r)
			json_object_set_new(j, "reason", json_string(e.msg));
		*bad |= r != 0;
		rc = put_json(out, j, err);
	}
	trail_tiles_free(t);
	return rc;
}

int trail_proofs_verify(const trail_proofs_opts *o, const char *const *files, size_t n, FILE *out, int *bad,
			trail_error *err)
{
	trail_verifier *v[17];
	trail_cosigner *cs[16];
	trail_store *s = NULL;
	size_t nv = 0, nc = 0;
	int rc = TRAIL_OK;
	*bad = 0;
	if (o->nkeys > 16 || o->nwit > 16)
		return trail_error_set(err, TRAIL_EUSAGE, "at most 16 keys and 16 cosigners");
	for (size_t i = 0; i < o->nkeys && !rc; i++)
		if (!(rc = trail_verifier_load(o->keys[i], &v[nv], err)))
			nv++;
	for (size_t i = 0; i < o->nwit && !rc; i++)
		if (!(rc = trail_cosigner_load(o->wits[i], &cs[nc], err)))
			nc++;
	/* Against the store: its key and, unless told otherwise, its origin. */
	const char *origin = o->origin;
	if (!rc && !o->nkeys && trail_store_open(o->home, &s, NULL) == TRAIL_OK &&
	    !(rc = trail_verifier_load(trail_verifier_str(trail_store_operator_vkey(s)), &v[nv], err))) {
		nv++;
		origin = origin ? origin : trail_store_origin(s);
	}
	pkeys k = {(const trail_verifier *const *)v, nv, origin, (const trail_cosigner *const *)cs, nc,
		   o->quorum ? o->quorum : nc, o->url, o->timeout_s};
	if (!rc)
		rc = verify_files(&k, files, n, out, bad, err);
	for (size_t i = 0; i < nv; i++)
		trail_verifier_free(v[i]);
	for (size_t i = 0; i < nc; i++)
		trail_cosigner_free(cs[i]);
	trail_store_free(s);
	return rc;
}
