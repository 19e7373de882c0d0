#include <unistd.h>
#include <string.h>

#include <sodium.h>

#include "core/core.h"
#include "ledger/ledger.h"

#define ALG_ED25519 0x01
#define NAME_MAX_LEN 256
#define MAX_SIGS 64

struct trail_signer {
	char *name;
	char *vkey;
	uint32_t id;
	uint8_t sk[crypto_sign_SECRETKEYBYTES];
};

struct trail_verifier {
	char *name;
	char *str;
	uint32_t id;
	uint8_t pk[crypto_sign_PUBLICKEYBYTES];
};

/* The next code point of valid UTF-8 s[*i..n) (validity checked by the caller). */
static uint32_t next_cp(const unsigned char *s, size_t n, size_t *i)
{
	uint32_t c = s[(*i)++];
	int more = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
	c &= more == 3 ? 0x07 : more == 2 ? 0x0F : more == 1 ? 0x1F : 0x7F;
	while (more-- && *i < n)
		c = c << 6 | (s[(*i)++] & 0x3F);
	return c;
}

/* Unicode White_Space (what Go's unicode.IsSpace tests, which C2SP names mean). */
static int uc_space(uint32_t c)
{
	return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
	       c == 0x205F || c == 0x3000;
}

/*
 * What is wrong with a key name, or NULL. C2SP signed-note: non-empty, no
 * Unicode spaces and no '+'; a note is UTF-8 without C0 controls, so names
 * are too. strict (names trail creates) also refuses DEL and C1 controls.
 */
static const char *name_problem(const char *s, size_t n, int strict)
{
	const unsigned char *u = (const unsigned char *)s;
	if (n == 0)
		return "it is empty";
	if (n > NAME_MAX_LEN)
		return "it is longer than 256 bytes";
	if (!trail_utf8_valid(s, n))
		return "it is not valid UTF-8";
	for (size_t i = 0; i < n;) {
		uint32_t c = next_cp(u, n, &i);
		if (uc_space(c))
			return "it holds a space";
		if (c == '+')
			return "it holds a '+'";
		if (c < 0x20 || (strict && (c == 0x7f || (c >= 0x80 && c <= 0x9f))))
			return "it holds a control character";
	}
	return NULL;
}

static int valid_name(const char *s, size_t n)
{
	return name_problem(s, n, 0) == NULL;
}

const char *trail_key_name_problem(const char *name)
{
	return name_problem(name, strlen(name), 1);
}

static uint32_t key_id(const char *name, size_t n, const uint8_t pk[32])
{
	crypto_hash_sha256_state st;
	uint8_t h[32], tag[2] = {'\n', ALG_ED25519};
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, (const uint8_t *)name, n);
	crypto_hash_sha256_update(&st, tag, 2);
	crypto_hash_sha256_update(&st, pk, 32);
	crypto_hash_sha256_final(&st, h);
	return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

/* Format "<name>+<id>+<base64(0x01 || key)>" (plus an optional prefix). */
static char *format_key(const char *prefix, const char *name, uint32_t id, const uint8_t key[32])
{
	uint8_t raw[33];
	raw[0] = ALG_ED25519;
	memcpy(raw + 1, key, 32);
	char b64[64];
	trail_base64(raw, 33, b64);
	size_t n = strlen(prefix) + strlen(name) + 8 + strlen(b64) + 4;
	char *s = trail_malloc(n);
	if (s)
		snprintf(s, n, "%s%s+%08x+%s", prefix, name, id, b64);
	sodium_memzero(raw, sizeof raw);
	return s;
}

/*
 * Split "<name>+<8 lowercase hex>+<base64(0x01 || 32 bytes)>" into its parts.
 * Names hold no '+', so the name ends at the first one (base64 may hold '+').
 */
static int split_key(const char *s, size_t len, size_t *namelen, uint32_t *id, uint8_t key[32])
{
	const char *prev = memchr(s, '+', len);
	if (!prev || (size_t)(prev - s) + 10 > len || prev[9] != '+')
		return TRAIL_EDATA;
	const char *last = prev + 9;
	*namelen = (size_t)(prev - s);
	if (!valid_name(s, *namelen))
		return TRAIL_EDATA;
	uint8_t idb[4];
	for (int i = 1; i <= 8; i++)
		if (!((prev[i] >= '0' && prev[i] <= '9') || (prev[i] >= 'a' && prev[i] <= 'f')))
			return TRAIL_EDATA;
	if (trail_unhex(prev + 1, 8, idb, 4))
		return TRAIL_EDATA;
	*id = (uint32_t)idb[0] << 24 | (uint32_t)idb[1] << 16 | (uint32_t)idb[2] << 8 | idb[3];
	uint8_t raw[64];
	size_t n;
	const char *b = last + 1;
	if (trail_unbase64(b, len - (size_t)(b - s), raw, sizeof raw, &n) || n != 33 ||
	    raw[0] != ALG_ED25519)
		return TRAIL_EDATA;
	memcpy(key, raw + 1, 32);
	sodium_memzero(raw, sizeof raw);
	return TRAIL_OK;
}

int trail_key_generate(const char *name, char **skey, char **vkey, trail_error *err)
{
	const char *why = trail_key_name_problem(name);
	if (why && !trail_utf8_valid(name, strlen(name))) /* not echoed */
		return trail_error_set(err, TRAIL_EUSAGE, "invalid key name: %s", why);
	if (why)
		return trail_error_set(err, TRAIL_EUSAGE, "invalid key name '%s': %s", name, why);
	uint8_t seed[32], pk[32], sk[64];
	randombytes_buf(seed, sizeof seed);
	crypto_sign_seed_keypair(pk, sk, seed);
	uint32_t id = key_id(name, strlen(name), pk);
	*skey = format_key("PRIVATE+KEY+", name, id, seed);
	*vkey = format_key("", name, id, pk);
	sodium_memzero(seed, sizeof seed);
	sodium_memzero(sk, sizeof sk);
	if (!*skey || !*vkey) {
		trail_free(*skey);
		trail_free(*vkey);
		*skey = *vkey = NULL;
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	return TRAIL_OK;
}

int trail_signer_parse(const char *skey, size_t len, trail_signer **out, trail_error *err)
{
	static const char pfx[] = "PRIVATE+KEY+";
	size_t namelen;
	uint32_t id;
	uint8_t seed[32], pk[32];
	*out = NULL;
	if (len < sizeof pfx - 1 || memcmp(skey, pfx, sizeof pfx - 1) ||
	    split_key(skey + sizeof pfx - 1, len - (sizeof pfx - 1), &namelen, &id, seed))
		return trail_error_set(err, TRAIL_EDATA, "malformed signer key");
	trail_signer *s = trail_calloc(1, sizeof *s);
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	crypto_sign_seed_keypair(pk, s->sk, seed);
	sodium_memzero(seed, sizeof seed);
	const char *name = skey + sizeof pfx - 1;
	if (key_id(name, namelen, pk) != id) {
		trail_signer_free(s);
		return trail_error_set(err, TRAIL_EDATA, "signer key id does not match its key");
	}
	s->id = id;
	s->name = trail_strndup(name, namelen);
	s->vkey = s->name ? format_key("", s->name, id, pk) : NULL;
	if (!s->vkey) {
		trail_signer_free(s);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	*out = s;
	return TRAIL_OK;
}

int trail_verifier_parse(const char *vkey, size_t len, trail_verifier **out, trail_error *err)
{
	size_t namelen;
	uint32_t id;
	uint8_t pk[32];
	*out = NULL;
	if (split_key(vkey, len, &namelen, &id, pk))
		return trail_error_set(err, TRAIL_EDATA, "malformed verifier key");
	if (key_id(vkey, namelen, pk) != id)
		return trail_error_set(err, TRAIL_EDATA, "verifier key id does not match its key");
	trail_verifier *v = trail_calloc(1, sizeof *v);
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	v->id = id;
	memcpy(v->pk, pk, 32);
	v->name = trail_strndup(vkey, namelen);
	v->str = trail_strndup(vkey, len);
	if (!v->name || !v->str) {
		trail_verifier_free(v);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	*out = v;
	return TRAIL_OK;
}

/* Read a one-line key file, without its trailing newline. */
static int read_key_file(const char *path, char **buf, size_t *len, trail_error *err)
{
	int rc = trail_read_file(path, 4096, (void **)buf, len, err);
	if (rc)
		return rc;
	while (*len && ((*buf)[*len - 1] == '\n' || (*buf)[*len - 1] == '\r'))
		(*buf)[--*len] = 0;
	return TRAIL_OK;
}

int trail_signer_load(const char *path, trail_signer **out, trail_error *err)
{
	char *buf;
	size_t len;
	int rc = read_key_file(path, &buf, &len, err);
	if (rc)
		return rc;
	rc = trail_signer_parse(buf, len, out, err);
	sodium_memzero(buf, len);
	trail_free(buf);
	if (rc)
		trail_error_at(err, rc, path, 0, "malformed signer key");
	return rc;
}

int trail_verifier_load(const char *path_or_key, trail_verifier **out, trail_error *err)
{
	size_t n = strlen(path_or_key);
	if (trail_verifier_parse(path_or_key, n, out, NULL) == TRAIL_OK)
		return TRAIL_OK;
	char *buf;
	size_t len;
	int rc = read_key_file(path_or_key, &buf, &len, err);
	if (rc)
		return rc;
	rc = trail_verifier_parse(buf, len, out, err);
	trail_free(buf);
	if (rc)
		trail_error_at(err, rc, path_or_key, 0, "malformed verifier key");
	return rc;
}

void trail_signer_free(trail_signer *s)
{
	if (!s)
		return;
	sodium_memzero(s->sk, sizeof s->sk);
	trail_free(s->name);
	trail_free(s->vkey);
	trail_free(s);
}

void trail_verifier_free(trail_verifier *v)
{
	if (!v)
		return;
	trail_free(v->name);
	trail_free(v->str);
	trail_free(v);
}

const char *trail_signer_name(const trail_signer *s) { return s->name; }
const char *trail_signer_vkey(const trail_signer *s) { return s->vkey; }
const char *trail_verifier_name(const trail_verifier *v) { return v->name; }
const char *trail_verifier_str(const trail_verifier *v) { return v->str; }
uint32_t trail_verifier_id(const trail_verifier *v) { return v->id; }

void trail_sign(const trail_signer *s, const void *msg, size_t len, uint8_t sig[TRAIL_SIG_LEN])
{
	crypto_sign_detached(sig, NULL, msg, len, s->sk);
}

int trail_verify(const trail_verifier *v, const void *msg, size_t len,
		 const uint8_t sig[TRAIL_SIG_LEN])
{
	return crypto_sign_verify_detached(sig, msg, len, v->pk) == 0 ? TRAIL_OK : TRAIL_EVERIFY;
}

/* ---- signed notes ------------------------------------------------------ */

static const char DASH[] = "\xe2\x80\x94 "; /* U+2014 EM DASH, space */

/*
 * What is wrong with note text, or NULL: C2SP signed-note text is UTF-8,
 * ends in a newline and holds no ASCII control character below U+0020 but
 * newline (U+007F is allowed).
 */
static const char *text_problem(const char *t, size_t n)
{
	if (n == 0)
		return "the text is empty";
	if (t[n - 1] != '\n')
		return "the text does not end with a newline";
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] < 0x20 && t[i] != '\n')
			return "the text holds a control character";
	return trail_utf8_valid(t, n) ? NULL : "the text is not valid UTF-8";
}

int trail_note_sign(const char *text, size_t len, const trail_signer *const *signers,
		    size_t nsigners, char **note, size_t *notelen, trail_error *err)
{
	const char *why = text_problem(text, len);
	if (why)
		return trail_error_set(err, TRAIL_EDATA,
				       "cannot sign: %s (note text is UTF-8 ending in a newline, "
				       "without control characters)", why);
	if (nsigners == 0 || nsigners > MAX_SIGS)
		return trail_error_set(err, TRAIL_EUSAGE, "a note needs 1 to %d signers", MAX_SIGS);
	size_t cap = len + 1 + nsigners * (NAME_MAX_LEN + 128) + 1;
	char *o = trail_malloc(cap);
	if (!o)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	memcpy(o, text, len);
	size_t n = len;
	o[n++] = '\n';
	for (size_t i = 0; i < nsigners; i++) {
		const trail_signer *s = signers[i];
		uint8_t blob[4 + TRAIL_SIG_LEN];
		blob[0] = (uint8_t)(s->id >> 24);
		blob[1] = (uint8_t)(s->id >> 16);
		blob[2] = (uint8_t)(s->id >> 8);
		blob[3] = (uint8_t)s->id;
		trail_sign(s, text, len, blob + 4);
		char b64[128];
		trail_base64(blob, sizeof blob, b64);
		n += (size_t)snprintf(o + n, cap - n, "%s%s %s\n", DASH, s->name, b64);
	}
	o[n] = 0;
	*note = o;
	if (notelen)
		*notelen = n;
	return TRAIL_OK;
}

/* Decode a signature's base64; *blob is buf, or trail_malloc'd when longer. */
static int sig_decode(const char *b64, size_t n, uint8_t *buf, size_t cap, uint8_t **blob,
		      size_t *len)
{
	size_t need = n / 4 * 3 + 3;
	*blob = need <= cap ? buf : trail_malloc(need);
	if (!*blob)
		return TRAIL_ENOMEM;
	if (trail_unbase64(b64, n, *blob, need <= cap ? cap : need, len)) {
		if (*blob != buf)
			trail_free(*blob);
		*blob = NULL;
		return TRAIL_EDATA;
	}
	return TRAIL_OK;
}

int trail_note_open(const char *note, size_t len, const trail_verifier *const *vs, size_t nv,
		    char **text, size_t *textlen, trail_error *err)
{
	if (len == 0)
		return trail_error_set(err, TRAIL_EDATA, "malformed note: empty");
	if (note[len - 1] != '\n')
		return trail_error_set(err, TRAIL_EDATA, "malformed note: it does not end with a newline");
	/*
	 * A note ends with a signature line, never a blank line, so one extra
	 * newline (as `jq -r` or `echo "$note"` add) is unambiguous: drop it.
	 */
	if (len >= 2 && note[len - 2] == '\n')
		len--;
	if (len >= 2 && note[len - 2] == '\n')
		return trail_error_set(err, TRAIL_EDATA, "malformed note: it ends with blank lines");
	/* The signature block follows the last blank line. */
	const char *sep = NULL;
	for (size_t i = len; i >= 2; i--)
		if (note[i - 1] == '\n' && note[i - 2] == '\n') {
			sep = note + i - 2;
			break;
		}
	if (!sep)
		return trail_error_set(err, TRAIL_EDATA,
				       "malformed note: no blank line between the text and the signatures");
	size_t tlen = (size_t)(sep - note) + 1;
	const char *why = text_problem(note, tlen);
	if (why)
		return trail_error_set(err, TRAIL_EDATA, "malformed note: %s", why);
	const char *p = sep + 2, *end = note + len, *first = NULL;
	int nsig = 0, verified = 0, firstlen = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (++nsig > MAX_SIGS)
			return trail_error_set(err, TRAIL_EDATA, "malformed note: more than %d signatures",
					       MAX_SIGS);
		if ((size_t)(nl - p) < sizeof DASH || memcmp(p, DASH, sizeof DASH - 1))
			return trail_error_set(err, TRAIL_EDATA,
					       "malformed note: signature line %d does not start "
					       "with an em dash (U+2014) and a space", nsig);
		const char *name = p + sizeof DASH - 1;
		const char *sp = memchr(name, ' ', (size_t)(nl - name));
		if (!sp)
			return trail_error_set(err, TRAIL_EDATA,
					       "malformed note: signature line %d has no space "
					       "after the key name", nsig);
		size_t namelen = (size_t)(sp - name);
		if ((why = name_problem(name, namelen, 0)))
			return trail_error_set(err, TRAIL_EDATA, "malformed note: signature line %d: bad key name (%s)",
					       nsig, why);
		/* Signatures of other algorithms (ML-DSA, ECDSA, ...) may be far longer. */
		uint8_t buf[4 + TRAIL_SIG_LEN + 8], *blob;
		size_t bl;
		int rc = sig_decode(sp + 1, (size_t)(nl - sp - 1), buf, sizeof buf, &blob, &bl);
		if (rc == TRAIL_ENOMEM)
			return trail_error_set(err, rc, "out of memory");
		if (rc || bl < 5) {
			if (blob != buf)
				trail_free(blob);
			return trail_error_set(err, TRAIL_EDATA,
					       "malformed note: signature line %d: %s", nsig,
					       rc ? "the signature is not base64" :
						    "the signature is shorter than 5 bytes");
		}
		uint32_t id = (uint32_t)blob[0] << 24 | (uint32_t)blob[1] << 16 |
			      (uint32_t)blob[2] << 8 | blob[3];
		if (!first)
			first = name, firstlen = (int)namelen;
		for (size_t i = 0; i < nv && !rc; i++) {
			const trail_verifier *v = vs[i];
			if (v->id != id || strlen(v->name) != namelen || memcmp(v->name, name, namelen))
				continue;
			if (bl != 4 + TRAIL_SIG_LEN || trail_verify(v, note, tlen, blob + 4))
				rc = trail_error_set(err, TRAIL_EVERIFY, "bad signature by key '%s'",
						     v->name);
			verified = 1;
		}
		if (blob != buf)
			trail_free(blob);
		if (rc)
			return rc;
		p = nl + 1;
	}
	if (!verified)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "note not signed by any known key (%d signature%s, the first "
				       "by '%.*s')", nsig, nsig == 1 ? "" : "s", firstlen, first);
	if (text) {
		*text = trail_strndup(note, tlen);
		if (!*text)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		if (textlen)
			*textlen = tlen;
	}
	return TRAIL_OK;
}

/* ---- signed JSON objects ---------------------------------------------- */

static int signing_bytes(const json_t *obj, char **out, size_t *len, trail_error *err)
{
	json_t *c = json_copy((json_t *)obj);
	if (!c)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_object_del(c, "sig");
	int rc = trail_jcs(c, out, len, err);
	json_decref(c);
	return rc;
}

int trail_json_sign(json_t *obj, const trail_signer *s, trail_error *err)
{
	if (!json_is_object(obj))
		return trail_error_set(err, TRAIL_EDATA, "only objects can be signed");
	if (json_object_set_new(obj, "signer", json_string(s->vkey)))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	char *b;
	size_t n;
	int rc = signing_bytes(obj, &b, &n, err);
	if (rc)
		return rc;
	uint8_t sig[TRAIL_SIG_LEN];
	char b64[128];
	trail_sign(s, b, n, sig);
	trail_free(b);
	trail_base64(sig, sizeof sig, b64);
	if (json_object_set_new(obj, "sig", json_string(b64)))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	return TRAIL_OK;
}

int trail_json_verify(const json_t *obj, trail_error *err)
{
	const char *signer = json_string_value(json_object_get(obj, "signer"));
	const char *sig = json_string_value(json_object_get(obj, "sig"));
	if (!signer || !sig)
		return trail_error_set(err, TRAIL_EVERIFY, "object is not signed");
	trail_verifier *v;
	int rc = trail_verifier_parse(signer, strlen(signer), &v, err);
	if (rc)
		return trail_error_set(err, TRAIL_EVERIFY, "bad signer key");
	uint8_t raw[TRAIL_SIG_LEN + 8];
	size_t rl;
	char *b = NULL;
	size_t n;
	if (trail_unbase64(sig, strlen(sig), raw, sizeof raw, &rl) || rl != TRAIL_SIG_LEN) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "malformed signature");
	} else if (!(rc = signing_bytes(obj, &b, &n, err)) && trail_verify(v, b, n, raw)) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "signature by '%s' does not verify",
				     trail_verifier_name(v));
	}
	trail_free(b);
	trail_verifier_free(v);
	return rc;
}

int trail_key_files_put(const char *dir, const char *stem, char *skey, char *pub, trail_error *err)
{
	char *kp = NULL, *pp = NULL;
	size_t n = strlen(stem) + 8;
	char *kn = trail_malloc(n), *pn = trail_malloc(n);
	int rc = TRAIL_ENOMEM;
	if (!kn || !pn)
		goto out;
	snprintf(kn, n, "%s.key", stem);
	snprintf(pn, n, "%s.pub", stem);
	if (!(kp = trail_path(dir, kn)) || !(pp = trail_path(dir, pn)))
		goto out;
	if (!access(kp, F_OK) || !access(pp, F_OK)) {
		rc = trail_error_set(err, TRAIL_EDATA, "%s or %s already exists: not overwriting", kn, pn);
		goto out;
	}
	size_t sl = strlen(skey), vl = strlen(pub);
	skey[sl] = '\n';
	pub[vl] = '\n';
	rc = trail_write_atomic(kp, skey, sl + 1, 0600, err);
	if (!rc)
		rc = trail_write_atomic(pp, pub, vl + 1, 0644, err);
	sodium_memzero(skey, sl + 1);
	pub[vl] = 0;
out:
	if (rc == TRAIL_ENOMEM && err && !err->msg[0])
		trail_error_set(err, rc, "out of memory");
	trail_free(kn);
	trail_free(pn);
	trail_free(kp);
	trail_free(pp);
	return rc;
}

int trail_key_create_files(const char *dir, const char *name, char **vkey_out, trail_error *err)
{
	char *skey = NULL, *vkey = NULL;
	int rc = trail_key_generate(name, &skey, &vkey, err);
	if (!rc)
		rc = trail_key_files_put(dir, name, skey, vkey, err);
	if (!rc && vkey_out) {
		*vkey_out = vkey;
		vkey = NULL;
	}
	trail_free(skey);
	trail_free(vkey);
	return rc;
}
