/*
 * Witnesses: C2SP tlog-cosignature (Ed25519, cosignature/v1, key type 0x04)
 * and the witness side of C2SP tlog-witness (add-checkpoint), with its state.
 *
 * A cosignature is a note signature line
 *
 *   "— " <name> " " base64(key id [4] || timestamp [8, big-endian] || sig [64]) "\n"
 *
 * where sig is Ed25519 over "cosignature/v1\ntime <timestamp>\n" followed by
 * the whole checkpoint body, and key id is the first 4 bytes of
 * SHA-256(name || 0x0A || 0x04 || public key). The message does not hold the
 * witness's name, so a witness key serves one name only.
 *
 * The witness's state is one file per log in its directory,
 * <hex SHA-256 of the origin>.json, holding the latest checkpoint it
 * cosigned (canonical JSON: origin, size, root, time, the signed note),
 * replaced atomically under <same>.lock (flock) before the cosignature is
 * returned: checking the old size and recording the new one are one step,
 * so no two requests can roll the state back.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"
#include "ledger/ledger.h"

#define ALG_COSIG 0x04
#define STATE_MAX (64u << 10)

static const char DASH[] = "\xe2\x80\x94 "; /* U+2014 EM DASH, space */

struct trail_cosigner {
	char *name;
	char *str;
	uint32_t id;
	uint8_t pk[32];
};

static uint32_t cosig_id(const char *name, size_t n, const uint8_t pk[32])
{
	crypto_hash_sha256_state st;
	uint8_t h[32], tag[2] = {'\n', ALG_COSIG};
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, (const uint8_t *)name, n);
	crypto_hash_sha256_update(&st, tag, 2);
	crypto_hash_sha256_update(&st, pk, 32);
	crypto_hash_sha256_final(&st, h);
	return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

static uint32_t be32(const uint8_t *b)
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* The public key of a signer, from its verifier key "<name>+<id>+<base64(0x01 || pk)>". */
static int signer_pk(const trail_signer *s, uint8_t pk[32])
{
	const char *v = trail_signer_vkey(s);
	size_t nl = strlen(trail_signer_name(s)), vl = strlen(v);
	uint8_t raw[40];
	size_t n;
	/* base64 may hold '+': the key follows the name, '+', 8 hex digits and '+' */
	if (vl < nl + 10 || trail_unbase64(v + nl + 10, vl - nl - 10, raw, sizeof raw, &n) || n != 33)
		return TRAIL_EINTERNAL;
	memcpy(pk, raw + 1, 32);
	return TRAIL_OK;
}

static char *format_vkey(const char *name, uint32_t id, const uint8_t pk[32])
{
	uint8_t raw[33];
	char b64[64];
	raw[0] = ALG_COSIG;
	memcpy(raw + 1, pk, 32);
	trail_base64(raw, 33, b64);
	size_t n = strlen(name) + 8 + strlen(b64) + 4;
	char *s = trail_malloc(n);
	if (s)
		snprintf(s, n, "%s+%08x+%s", name, id, b64);
	return s;
}

int trail_cosigner_vkey(const trail_signer *s, char **vkey, trail_error *err)
{
	uint8_t pk[32];
	if (signer_pk(s, pk))
		return trail_error_set(err, TRAIL_EINTERNAL, "cannot read the signer's public key");
	const char *name = trail_signer_name(s);
	*vkey = format_vkey(name, cosig_id(name, strlen(name), pk), pk);
	return *vkey ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

int trail_cosigner_parse(const char *vkey, size_t len, trail_cosigner **out, trail_error *err)
{
	*out = NULL;
	/* <name>+<8 lowercase hex>+<base64(0x04 || 32 bytes)>; names hold no '+'. */
	const char *p = memchr(vkey, '+', len);
	if (!p || (size_t)(p - vkey) + 10 > len || p[9] != '+')
		return trail_error_set(err, TRAIL_EDATA, "malformed cosigner key");
	size_t namelen = (size_t)(p - vkey);
	char *name = trail_strndup(vkey, namelen);
	if (!name)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	/* Names from elsewhere: what C2SP asks (no spaces, '+' or controls). */
	const char *why = namelen ? trail_key_name_problem(name) : "it is empty";
	int hexok = 1;
	for (int i = 1; i <= 8; i++)
		hexok &= (p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f');
	uint8_t idb[4], raw[48];
	size_t n;
	if (why || !hexok || trail_unhex(p + 1, 8, idb, 4) ||
	    trail_unbase64(p + 10, len - namelen - 10, raw, sizeof raw, &n) || n != 33) {
		trail_free(name);
		return trail_error_set(err, TRAIL_EDATA, "malformed cosigner key");
	}
	if (raw[0] != ALG_COSIG) {
		trail_free(name);
		return trail_error_set(err, TRAIL_EDATA,
				       "not a cosigner key: key type 0x%02x, a cosigner's is 0x04 "
				       "(trail-key public --witness prints it)", raw[0]);
	}
	uint32_t id = be32(idb);
	if (cosig_id(name, namelen, raw + 1) != id) {
		trail_free(name);
		return trail_error_set(err, TRAIL_EDATA, "cosigner key id does not match its key");
	}
	trail_cosigner *c = trail_calloc(1, sizeof *c);
	if (!c || !(c->str = trail_strndup(vkey, len))) {
		trail_free(c);
		trail_free(name);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	c->name = name;
	c->id = id;
	memcpy(c->pk, raw + 1, 32);
	*out = c;
	return TRAIL_OK;
}

int trail_cosigner_load(const char *path_or_key, trail_cosigner **out, trail_error *err)
{
	size_t n = strlen(path_or_key);
	trail_error e = {0};
	int rc = trail_cosigner_parse(path_or_key, n, out, &e);
	if (rc == TRAIL_OK || (rc == TRAIL_EDATA && strstr(e.msg, "key type"))) {
		if (err && rc)
			*err = e;
		return rc;
	}
	char *buf;
	size_t len;
	if ((rc = trail_read_file(path_or_key, 4096, (void **)&buf, &len, err)))
		return rc;
	while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		buf[--len] = 0;
	rc = trail_cosigner_parse(buf, len, out, &e);
	trail_free(buf);
	if (rc)
		trail_error_at(err, rc, path_or_key, 0, "%s", e.msg);
	return rc;
}

void trail_cosigner_free(trail_cosigner *c)
{
	if (!c)
		return;
	trail_free(c->name);
	trail_free(c->str);
	trail_free(c);
}

const char *trail_cosigner_name(const trail_cosigner *c) { return c->name; }
const char *trail_cosigner_str(const trail_cosigner *c) { return c->str; }
uint32_t trail_cosigner_id(const trail_cosigner *c) { return c->id; }

int trail_witness_key_create_files(const char *dir, const char *name, char **vkey_out,
				   trail_error *err)
{
	char *skey = NULL, *vkey = NULL, *cvkey = NULL, *stem = trail_strdup(name);
	trail_signer *s = NULL;
	int rc = TRAIL_ENOMEM;
	if (!stem)
		goto out;
	/* Witness names are often URLs without a scheme (witness.example/w1). */
	for (char *c = stem; *c; c++)
		*c = *c == '/' ? '_' : *c;
	if ((rc = trail_key_generate(name, &skey, &vkey, err)) ||
	    (rc = trail_signer_parse(skey, strlen(skey), &s, err)) || (rc = trail_cosigner_vkey(s, &cvkey, err)) ||
	    (rc = trail_key_files_put(dir, stem, skey, cvkey, err)))
		goto out;
	if (vkey_out) {
		*vkey_out = cvkey;
		cvkey = NULL;
	}
out:
	if (rc == TRAIL_ENOMEM && err && !err->msg[0])
		trail_error_set(err, rc, "out of memory");
	trail_signer_free(s);
	if (skey)
		sodium_memzero(skey, strlen(skey));
	trail_free(skey);
	trail_free(vkey);
	trail_free(cvkey);
	trail_free(stem);
	return rc;
}

/* ---- cosignatures ------------------------------------------------------ */

/* "cosignature/v1\ntime <t>\n" || text, trail_malloc'd. */
static char *cosig_message(const char *text, size_t len, uint64_t t, size_t *mlen)
{
	char hdr[64];
	int hl = snprintf(hdr, sizeof hdr, "cosignature/v1\ntime %" PRIu64 "\n", t);
	char *m = trail_malloc((size_t)hl + len + 1);
	if (!m)
		return NULL;
	memcpy(m, hdr, (size_t)hl);
	memcpy(m + hl, text, len);
	m[(size_t)hl + len] = 0;
	*mlen = (size_t)hl + len;
	return m;
}

int trail_cosign(const trail_signer *s, const char *text, size_t len, uint64_t t, char **line,
		 trail_error *err)
{
	uint8_t pk[32], blob[TRAIL_COSIG_LEN];
	if (t > INT64_MAX)
		return trail_error_set(err, TRAIL_EUSAGE, "a cosignature's time is below 2^63");
	if (len == 0 || text[len - 1] != '\n')
		return trail_error_set(err, TRAIL_EDATA, "cannot cosign: the text does not end with a newline");
	if (signer_pk(s, pk))
		return trail_error_set(err, TRAIL_EINTERNAL, "cannot read the signer's public key");
	const char *name = trail_signer_name(s);
	uint32_t id = cosig_id(name, strlen(name), pk);
	size_t ml;
	char *m = cosig_message(text, len, t, &ml);
	if (!m)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (int i = 0; i < 4; i++)
		blob[i] = (uint8_t)(id >> (24 - 8 * i));
	for (int i = 0; i < 8; i++)
		blob[4 + i] = (uint8_t)(t >> (56 - 8 * i));
	trail_sign(s, m, ml, blob + 12);
	trail_free(m);
	char b64[160];
	trail_base64(blob, sizeof blob, b64);
	size_t n = strlen(name) + strlen(b64) + 8;
	if (!(*line = trail_malloc(n)))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	snprintf(*line, n, "%s%s %s\n", DASH, name, b64);
	return TRAIL_OK;
}

/*
 * Is line[0..n) (without its newline) a signature line by c? 0 not c's,
 * 1 c's, with the decoded blob in blob (TRAIL_COSIG_LEN bytes); -1 it names
 * c but the blob is not a cosignature's length.
 */
static int line_by(const trail_cosigner *c, const char *line, size_t n, uint8_t blob[TRAIL_COSIG_LEN])
{
	size_t dl = sizeof DASH - 1, nl = strlen(c->name);
	if (n < dl + nl + 1 || memcmp(line, DASH, dl) || memcmp(line + dl, c->name, nl) ||
	    line[dl + nl] != ' ')
		return 0;
	uint8_t raw[3072]; /* room for other algorithms' signatures (ML-DSA-44: 2432) */
	size_t got;
	const char *b = line + dl + nl + 1;
	if (trail_unbase64(b, n - (size_t)(b - line), raw, sizeof raw, &got))
		return -1;
	/* Another key of the same name is not this cosigner's: key ids differ. */
	if (got < 4 || be32(raw) != c->id)
		return 0;
	if (got != TRAIL_COSIG_LEN)
		return -1;
	memcpy(blob, raw, TRAIL_COSIG_LEN);
	return 1;
}

int trail_cosignature_verify(const trail_cosigner *c, const char *text, size_t len,
			     const char *line, size_t linelen, uint64_t *t, trail_error *err)
{
	uint8_t blob[TRAIL_COSIG_LEN];
	if (linelen && line[linelen - 1] == '\n')
		linelen--;
	int by = line_by(c, line, linelen, blob);
	if (by <= 0)
		return trail_error_set(err, TRAIL_EVERIFY, by ? "malformed cosignature by '%s'"
							     : "not a cosignature by '%s'", c->name);
	uint64_t ts = 0;
	for (int i = 0; i < 8; i++)
		ts = ts << 8 | blob[4 + i];
	if (ts > INT64_MAX)
		return trail_error_set(err, TRAIL_EVERIFY, "cosignature by '%s': time beyond 2^63 - 1", c->name);
	size_t ml;
	char *m = cosig_message(text, len, ts, &ml);
	if (!m)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int bad = crypto_sign_verify_detached(blob + 12, (const uint8_t *)m, ml, c->pk);
	trail_free(m);
	if (bad)
		return trail_error_set(err, TRAIL_EVERIFY, "bad cosignature by '%s'", c->name);
	if (t)
		*t = ts;
	return TRAIL_OK;
}

/* Split a note at its last blank line: text [0, *tlen), signature lines [*sig, len). */
static int note_split(const char *note, size_t len, size_t *tlen, size_t *sig, trail_error *err)
{
	if (len >= 2 && note[len - 1] == '\n' && note[len - 2] == '\n')
		len--; /* the one extra newline trail_note_open also accepts */
	for (size_t i = len; i >= 2; i--)
		if (note[i - 1] == '\n' && note[i - 2] == '\n') {
			*tlen = i - 1;
			*sig = i;
			return TRAIL_OK;
		}
	return trail_error_set(err, TRAIL_EDATA, "malformed note: no blank line before the signatures");
}

int trail_cosignatures_count(const char *note, size_t len, const trail_cosigner *const *cs,
			     size_t nc, size_t *nvalid, trail_error *err)
{
	size_t tlen = 0, p = 0, end = len;
	int rc = note_split(note, len, &tlen, &p, err);
	*nvalid = 0;
	if (rc)
		return rc;
	if (end >= 2 && note[end - 1] == '\n' && note[end - 2] == '\n')
		end--;
	for (size_t i = 0; i < nc; i++) {
		/* A cosigner given twice counts once. */
		int dup = 0;
		for (size_t j = 0; j < i; j++)
			dup |= cs[j]->id == cs[i]->id && !strcmp(cs[j]->name, cs[i]->name) &&
			       !memcmp(cs[j]->pk, cs[i]->pk, 32);
		if (dup)
			continue;
		int good = 0;
		for (size_t q = p; q < end;) {
			const char *nl = memchr(note + q, '\n', end - q);
			size_t ll = nl ? (size_t)(nl - note) - q : end - q;
			uint8_t blob[TRAIL_COSIG_LEN];
			int by = line_by(cs[i], note + q, ll, blob);
			if (by) {
				trail_error e = {0};
				if ((rc = trail_cosignature_verify(cs[i], note, tlen, note + q, ll, NULL, &e)))
					return trail_error_set(err, rc, "%s", e.msg);
				good = 1;
			}
			q += ll + 1;
		}
		*nvalid += (size_t)good;
	}
	return TRAIL_OK;
}

int trail_checkpoint_check_quorum(const char *buf, size_t len, const trail_verifier *const *vs,
				  size_t nv, const char *origin, const trail_cosigner *const *cs,
				  size_t nc, size_t quorum, size_t *nvalid, trail_error *err)
{
	static const char hdr[] = "c2sp.org/tlog-proof@v1\n";
	size_t got = 0;
	int rc;
	if (nvalid)
		*nvalid = 0;
	if (len >= sizeof hdr - 1 && !memcmp(buf, hdr, sizeof hdr - 1)) {
		/* A receipt: the proof first, then the cosignatures on its checkpoint. */
		uint64_t idx;
		trail_hash leaf;
		if ((rc = trail_receipt_verify(buf, len, vs, nv, origin, &idx, leaf, err)))
			return rc;
		const char *bl = NULL;
		for (size_t i = 1; i < len; i++)
			if (buf[i] == '\n' && buf[i - 1] == '\n') {
				bl = buf + i + 1;
				break;
			}
		if (!bl)
			return trail_error_set(err, TRAIL_EDATA, "tlog-proof: no checkpoint");
		len -= (size_t)(bl - buf);
		buf = bl;
	} else {
		char *text = NULL, *corigin = NULL;
		uint64_t size;
		trail_hash root;
		if ((rc = trail_note_open(buf, len, vs, nv, &text, NULL, err)) ||
		    (rc = trail_checkpoint_parse(text, &corigin, &size, root, err))) {
			trail_free(text);
			return rc;
		}
		trail_free(text);
		if (origin && strcmp(origin, corigin))
			rc = trail_error_set(err, TRAIL_EVERIFY, "the checkpoint is for log '%s', not '%s'",
					     corigin, origin);
		trail_free(corigin);
		if (rc)
			return rc;
	}
	if ((rc = trail_cosignatures_count(buf, len, cs, nc, &got, err)))
		return rc;
	if (nvalid)
		*nvalid = got;
	if (got < quorum)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "%zu valid cosignature%s from the %zu given witness%s; the quorum is %zu",
				       got, got == 1 ? "" : "s", nc, nc == 1 ? "" : "es", quorum);
	return TRAIL_OK;
}

/* ---- the witness: add-checkpoint and its state ------------------------- */

struct trail_witness {
	char *dir;
	const trail_signer *key;
	size_t nlogs;
	const trail_verifier **logs;
	char **origins;
	int owns; /* trail_witness_load's: key and logs are freed with the witness */
};

int trail_witness_open(const char *dir, const trail_signer *key, const trail_verifier *const *logs,
		       const char *const *origins, size_t nlogs, trail_witness **out, trail_error *err)
{
	*out = NULL;
	if (nlogs == 0)
		return trail_error_set(err, TRAIL_EUSAGE, "a witness needs at least one log key");
	int rc = trail_mkdirs(dir, 0755, err);
	if (rc)
		return rc;
	trail_witness *w = trail_calloc(1, sizeof *w);
	if (!w || !(w->dir = trail_strdup(dir)) || !(w->logs = trail_calloc(nlogs, sizeof *w->logs)) ||
	    !(w->origins = trail_calloc(nlogs, sizeof *w->origins))) {
		trail_witness_free(w);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	w->key = key;
	w->nlogs = nlogs;
	for (size_t i = 0; i < nlogs; i++) {
		w->logs[i] = logs[i];
		const char *o = origins && origins[i] ? origins[i] : trail_verifier_name(logs[i]);
		if (!(w->origins[i] = trail_strdup(o))) {
			trail_witness_free(w);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
	}
	*out = w;
	return TRAIL_OK;
}

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

int trail_witness_load(const char *dir, const char *keyfile, const char *const *logs, size_t nlogs,
		       trail_witness **out, char **cosigner, trail_error *err)
{
	trail_signer *key = NULL;
	trail_verifier **v = trail_calloc(nlogs ? nlogs : 1, sizeof *v);
	char **origins = trail_calloc(nlogs ? nlogs : 1, sizeof *origins);
	int rc = v && origins ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	*out = NULL;
	*cosigner = NULL;
	for (size_t i = 0; i < nlogs && !rc; i++)
		if (trail_verifier_load(logs[i], &v[i], NULL))
			rc = trail_log_key_split(logs[i], &origins[i], &v[i], err);
	if (!rc && !(rc = trail_signer_load(keyfile, &key, err)) && !(rc = trail_cosigner_vkey(key, cosigner, err)) &&
	    !(rc = trail_witness_open(dir, key, (const trail_verifier *const *)v, (const char *const *)origins, nlogs,
				      out, err)))
		(*out)->owns = 1;
	for (size_t i = 0; origins && i < nlogs; i++)
		trail_free(origins[i]);
	if (rc) {
		for (size_t i = 0; v && i < nlogs; i++)
			trail_verifier_free(v[i]);
		trail_signer_free(key);
		trail_free(*cosigner);
		*cosigner = NULL;
	}
	trail_free(origins);
	trail_free(v);
	return rc;
}

void trail_witness_free(trail_witness *w)
{
	if (!w)
		return;
	for (size_t i = 0; w->origins && i < w->nlogs; i++)
		trail_free(w->origins[i]);
	for (size_t i = 0; w->owns && w->logs && i < w->nlogs; i++)
		trail_verifier_free((trail_verifier *)w->logs[i]);
	if (w->owns)
		trail_signer_free((trail_signer *)w->key);
	trail_free(w->origins);
	trail_free(w->logs);
	trail_free(w->dir);
	trail_free(w);
}

void trail_witness_reply_release(trail_witness_reply *r)
{
	trail_free(r->body);
	r->body = NULL;
	r->len = 0;
}

/* Set the reply and the error detail; returns code. */
__attribute__((format(printf, 5, 6))) static int reply(trail_witness_reply *r, int status,
							 int code, trail_error *err, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	r->status = status;
	r->type = "text/plain; charset=utf-8";
	trail_free(r->body);
	r->len = strlen(msg) + 1;
	if ((r->body = trail_malloc(r->len + 1)))
		snprintf(r->body, r->len + 1, "%s\n", msg);
	else
		r->len = 0;
	return trail_error_set(err, code, "%s", msg);
}

/* A decimal without leading zeros ("0" alone), at most 2^63 - 1. */
static int parse_size(const char *s, size_t n, uint64_t *v)
{
	if (n == 0 || n > 19 || (s[0] == '0' && n > 1))
		return -1;
	*v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		*v = *v * 10 + (uint64_t)(s[i] - '0');
	}
	return *v > INT64_MAX ? -1 : 0;
}

typedef struct wstate {
	int have;
	uint64_t size;
	trail_hash root;
} wstate;

static char *state_path(const trail_witness *w, const char *origin, const char *ext)
{
	uint8_t h[32];
	char hx[65], name[80];
	trail_sha256(origin, strlen(origin), h);
	trail_hex(h, 32, hx);
	snprintf(name, sizeof name, "%s%s", hx, ext);
	return trail_path(w->dir, name);
}

static int state_read(const char *path, const char *origin, wstate *st, trail_error *err)
{
	void *buf;
	size_t len;
	json_t *j = NULL;
	memset(st, 0, sizeof *st);
	int rc = trail_read_file(path, STATE_MAX, &buf, &len, err);
	if (rc == TRAIL_ENOINPUT && access(path, F_OK) && errno == ENOENT)
		return TRAIL_OK; /* never cosigned for this log */
	if (rc)
		return rc;
	rc = trail_json_parse(buf, len, path, &j, err);
	trail_free(buf);
	if (rc)
		return rc;
	const char *o = json_string_value(json_object_get(j, "origin"));
	const char *r = json_string_value(json_object_get(j, "root"));
	json_t *sz = json_object_get(j, "size");
	size_t rl;
	if (!o || strcmp(o, origin) || !r || !json_is_integer(sz) || json_integer_value(sz) < 0 ||
	    trail_unbase64(r, strlen(r), st->root, 32, &rl) || rl != 32)
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "malformed witness state");
	st->size = (uint64_t)json_integer_value(sz);
	st->have = !rc;
	json_decref(j);
	return rc;
}

static int state_write(const char *path, const char *origin, uint64_t size, const trail_hash root,
		       uint64_t now, const char *note, size_t notelen, trail_error *err)
{
	char b64[64], *s = NULL;
	size_t n;
	trail_base64(root, 32, b64);
	json_t *j = json_pack("{s:s, s:I, s:s, s:I, s:s%}", "origin", origin, "size", (json_int_t)size,
			      "root", b64, "time", (json_int_t)now, "checkpoint", note, notelen);
	int rc = j ? trail_jcs(j, &s, &n, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_decref(j);
	if (rc)
		return rc;
	s[n] = '\n'; /* the NUL is rewritten: length n + 1 */
	rc = trail_write_atomic(path, s, n + 1, 0644, err);
	trail_free(s);
	return rc;
}

/*
 * A checkpoint its log signed but the witness refused (a fork, a proof that
 * does not verify) is evidence against the log: keep the request as it
 * came, once per content. Best effort: the refusal stands either way.
 */
static void keep_evidence(const trail_witness *w, const char *origin, const char *req, size_t len)
{
	uint8_t h[32];
	char hx[17], ext[40];
	trail_sha256(req, len, h);
	trail_hex(h, 8, hx);
	snprintf(ext, sizeof ext, ".refused-%s", hx);
	char *p = state_path(w, origin, ext);
	if (p && access(p, F_OK))
		trail_write_atomic(p, req, len, 0644, NULL);
	trail_free(p);
}

int trail_witness_add_checkpoint(trail_witness *w, const char *req, size_t len, uint64_t now,
				 trail_witness_reply *r, trail_error *err)
{
	trail_hash proof[TRAIL_MERKLE_MAXPROOF], root;
	size_t np = 0;
	uint64_t old, size;
	const char *p = req, *end = req + len, *nl;
	char *text = NULL, *origin = NULL, *spath = NULL, *lpath = NULL;
	const trail_verifier *vs[64];
	size_t nv = 0;
	int rc, lfd = -1;
	memset(r, 0, sizeof *r);
	if (len > 6 && !memcmp(p, "old ", 4) && (nl = memchr(p, '\n', len)) &&
	    !parse_size(p + 4, (size_t)(nl - p - 4), &old)) {
		p = nl + 1;
	} else {
		return reply(r, 400, TRAIL_EDATA, err, "malformed request: the first line is not \"old <size>\"");
	}
	r->old = old;
	for (;;) {
		if (!(nl = memchr(p, '\n', (size_t)(end - p))))
			return reply(r, 400, TRAIL_EDATA, err, "malformed request: no empty line before the checkpoint");
		if (nl == p)
			break;
		size_t hl;
		if (np == 63)
			return reply(r, 400, TRAIL_EDATA, err, "malformed request: more than 63 consistency proof lines");
		if (trail_unbase64(p, (size_t)(nl - p), proof[np], 32, &hl) || hl != 32)
			return reply(r, 400, TRAIL_EDATA, err,
				     "malformed request: proof line %zu is not a base64 hash", np + 1);
		np++;
		p = nl + 1;
	}
	p = nl + 1;
	/* The origin picks the keys; the signature is checked with them alone. */
	if (!(nl = memchr(p, '\n', (size_t)(end - p))) || nl == p)
		return reply(r, 400, TRAIL_EDATA, err, "malformed request: no checkpoint");
	size_t ol = (size_t)(nl - p);
	for (size_t i = 0; i < w->nlogs && nv < 64; i++)
		if (strlen(w->origins[i]) == ol && !memcmp(w->origins[i], p, ol))
			vs[nv++] = w->logs[i];
	if (!nv)
		return reply(r, 404, TRAIL_EVERIFY, err, "unknown log: %.*s", (int)(ol > 200 ? 200 : ol), p);
	snprintf(r->origin, sizeof r->origin, "%.*s", (int)ol, p);
	trail_error e = {0};
	rc = trail_note_open(p, (size_t)(end - p), vs, nv, &text, NULL, &e);
	if (rc == TRAIL_ENOMEM)
		return reply(r, 500, rc, err, "out of memory");
	if (rc == TRAIL_EVERIFY)
		return reply(r, 403, rc, err, "%s: the checkpoint is not signed by a known log key: %s",
			     r->origin, e.msg);
	if (rc)
		return reply(r, 400, TRAIL_EDATA, err, "%s: %s", r->origin, e.msg);
	if ((rc = trail_checkpoint_parse(text, &origin, &size, root, &e))) {
		rc = reply(r, 400, TRAIL_EDATA, err, "%s: %s", r->origin, e.msg);
		goto out;
	}
	r->size = size;
	if (old > size) {
		rc = reply(r, 400, TRAIL_EDATA, err,
			   "%s: old size %" PRIu64 " is larger than the checkpoint's %" PRIu64, origin, old, size);
		goto out;
	}
	if (np && (old == 0 || old == size)) {
		rc = reply(r, 400, TRAIL_EDATA, err, "%s: the consistency proof from size %" PRIu64
			   " to %" PRIu64 " must be empty", origin, old, size);
		goto out;
	}
	if (!(spath = state_path(w, origin, ".json")) || !(lpath = state_path(w, origin, ".lock"))) {
		rc = reply(r, 500, TRAIL_ENOMEM, err, "out of memory");
		goto out;
	}
	/* From here to the state's rename: one request per log at a time. */
	lfd = open(lpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (lfd < 0 || flock(lfd, LOCK_EX) < 0) {
		rc = reply(r, 500, TRAIL_EIO, err, "%s: lock %s: %s", origin, lpath, strerror(errno));
		goto out;
	}
	wstate st;
	if ((rc = state_read(spath, origin, &st, &e))) {
		rc = reply(r, 500, rc, err, "%s: %s", origin, e.msg);
		goto out;
	}
	if (old != st.size) {
		rc = reply(r, 409, TRAIL_EVERIFY, err, "%s: old size %" PRIu64 ", but the latest checkpoint "
			   "cosigned has size %" PRIu64, origin, old, st.size);
		/* The body the protocol asks for: the size alone. */
		r->type = "text/x.tlog.size";
		if (r->body)
			r->len = (size_t)snprintf(r->body, r->len + 1, "%" PRIu64 "\n", st.size);
		goto out;
	}
	if (old == size) {
		trail_hash empty;
		trail_sha256("", 0, empty);
		if (st.have ? sodium_memcmp(st.root, root, 32) != 0 : sodium_memcmp(empty, root, 32) != 0) {
			rc = reply(r, 409, TRAIL_EVERIFY, err, "%s: refused: a fork: size %" PRIu64
				   " was cosigned with another root hash", origin, size);
			keep_evidence(w, origin, req, len);
			goto out;
		}
	} else if (old > 0 &&
		   (rc = trail_merkle_verify_consistency(old, size, st.root, root, (const trail_hash *)proof,
							 np, &e))) {
		rc = reply(r, 422, TRAIL_EVERIFY, err, "%s: refused: the consistency proof from size %" PRIu64
			   " to %" PRIu64 " does not verify: %s", origin, old, size, e.msg);
		keep_evidence(w, origin, req, len);
		goto out;
	}
	size_t tl = strlen(text);
	if ((rc = state_write(spath, origin, size, root, now, p, (size_t)(end - p), &e))) {
		rc = reply(r, 500, rc, err, "%s: cannot record the checkpoint: %s", origin, e.msg);
		goto out;
	}
	char *line;
	if ((rc = trail_cosign(w->key, text, tl, now, &line, &e))) {
		rc = reply(r, 500, rc, err, "%s: %s", origin, e.msg);
		goto out;
	}
	r->status = 200;
	r->type = "text/plain; charset=utf-8";
	trail_free(r->body);
	r->body = line;
	r->len = strlen(line);
	trail_error_clear(err);
out:
	if (lfd >= 0)
		close(lfd);
	trail_free(text);
	trail_free(origin);
	trail_free(spath);
	trail_free(lpath);
	return rc;
}

/* ---- the store's cosigned checkpoint ----------------------------------- */

static char *cosigned_path(const trail_store *s)
{
	return trail_path(trail_store_dir(s), "log/checkpoint.cosigned");
}

int trail_cosigned_read(trail_store *s, char **note, size_t *len, trail_error *err)
{
	char *p = cosigned_path(s);
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = trail_read_file(p, STATE_MAX, (void **)note, len, err);
	trail_free(p);
	return rc;
}

int trail_cosigned_write(trail_store *s, const char *note, size_t len, trail_error *err)
{
	char *p = cosigned_path(s);
	int rc = p ? trail_write_atomic(p, note, len, 0644, err)
		   : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	trail_free(p);
	return rc;
}

/* The name and key id of a signature line, or -1 if it is not one. */
static int line_key(const char *l, size_t n, const char **name, size_t *namelen, uint32_t *id)
{
	size_t dl = sizeof DASH - 1;
	if (n < dl || memcmp(l, DASH, dl))
		return -1;
	const char *sp = memchr(l + dl, ' ', n - dl);
	uint8_t raw[3072];
	size_t got;
	if (!sp || trail_unbase64(sp + 1, n - (size_t)(sp + 1 - l), raw, sizeof raw, &got) || got < 4)
		return -1;
	*name = l + dl;
	*namelen = (size_t)(sp - *name);
	*id = be32(raw);
	return 0;
}

int trail_cosigned_merge(const char *note, size_t len, const char *lines, char **out,
			 size_t *outlen, trail_error *err)
{
	size_t tlen, p;
	int rc = note_split(note, len, &tlen, &p, err);
	if (rc)
		return rc;
	if (len >= 2 && note[len - 1] == '\n' && note[len - 2] == '\n')
		len--;
	trail_buf b = {0};
	size_t nl_new = strlen(lines);
	int bad = trail_buf_put(&b, note, p);
	/* The note's lines, but those by a key that signs anew. */
	for (size_t q = p; !bad && q < len;) {
		const char *e = memchr(note + q, '\n', len - q);
		size_t ll = e ? (size_t)(e - note) - q : len - q, an, bn;
		const char *a, *bname;
		uint32_t aid, bid;
		int replaced = 0;
		if (!line_key(note + q, ll, &a, &an, &aid))
			for (size_t r = 0; r < nl_new && !replaced;) {
				const char *f = memchr(lines + r, '\n', nl_new - r);
				size_t fl = f ? (size_t)(f - lines) - r : nl_new - r;
				replaced = !line_key(lines + r, fl, &bname, &bn, &bid) && bid == aid && bn == an &&
					   !memcmp(a, bname, an);
				r += fl + 1;
			}
		if (!replaced)
			bad = trail_buf_put(&b, note + q, ll) || trail_buf_put(&b, "\n", 1);
		q += ll + 1;
	}
	if (!bad)
		bad = trail_buf_put(&b, lines, nl_new);
	if (!bad && b.n && b.p[b.n - 1] != '\n')
		bad = trail_buf_put(&b, "\n", 1);
	if (bad) {
		trail_buf_release(&b);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	*out = b.p;
	*outlen = b.n;
	return TRAIL_OK;
}

int trail_cosigned_attach(trail_store *s, const char *doc, size_t len, char **out, size_t *outlen,
			  trail_error *err)
{
	static const char hdr[] = "c2sp.org/tlog-proof@v1\n";
	size_t at = 0, ctl, csig, dtl, dsig, cl;
	char *c = NULL;
	if (len >= sizeof hdr - 1 && !memcmp(doc, hdr, sizeof hdr - 1)) {
		/* A receipt: its checkpoint follows the first blank line. */
		for (size_t i = 1; i < len && !at; i++)
			if (doc[i] == '\n' && doc[i - 1] == '\n')
				at = i + 1;
	}
	int rc = trail_cosigned_read(s, &c, &cl, NULL);
	int same = !rc && !note_split(c, cl, &ctl, &csig, NULL) &&
		   !note_split(doc + at, len - at, &dtl, &dsig, NULL) && ctl == dtl &&
		   !memcmp(c, doc + at, ctl);
	size_t n = same ? at + cl : len;
	if (!(*out = trail_malloc(n + 1))) {
		trail_free(c);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	memcpy(*out, doc, same ? at : len);
	if (same)
		memcpy(*out + at, c, cl);
	(*out)[n] = 0;
	*outlen = n;
	trail_free(c);
	return TRAIL_OK;
}

int trail_cosigned_publish(trail_store *s, const char *dir, trail_error *err)
{
	char *p = trail_path(dir, "checkpoint"), *doc = NULL, *out = NULL;
	size_t len, olen;
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = trail_read_file(p, STATE_MAX, (void **)&doc, &len, err);
	if (!rc)
		rc = trail_cosigned_attach(s, doc, len, &out, &olen, err);
	if (!rc && (olen != len || memcmp(out, doc, len)))
		rc = trail_write_atomic(p, out, olen, 0644, err);
	trail_free(p);
	trail_free(doc);
	trail_free(out);
	return rc;
}
