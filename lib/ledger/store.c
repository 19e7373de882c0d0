#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"
#include "ledger/ledger.h"

#define CONFIG_MAX (64u << 10)

struct trail_store {
	char *dir;
	char *origin;
	trail_verifier *operator_vkey;
	trail_signer *operator_key; /* loaded on first use */
};

const char *trail_store_home(const char *opt)
{
	if (opt && *opt)
		return opt;
	const char *env = getenv("TRAIL_HOME");
	if (env && *env)
		return env;
	return ".trail";
}

static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

int trail_store_init(const char *home, const char *origin, const char *keyfile,
		     trail_error *err)
{
	static const char *const dirs[] = {"objects/sha256", "names", "log", "keys"};
	char *cfg = trail_path(home, "config.json");
	char *kpath = trail_path(home, "keys/operator.key");
	char *skey = NULL, *vkey = NULL, *js = NULL, gen_origin[40];
	trail_signer *signer = NULL;
	json_t *conf = NULL;
	int rc = TRAIL_ENOMEM;
	if (!cfg || !kpath)
		goto out;
	if (exists(cfg)) {
		rc = trail_error_set(err, TRAIL_EDATA, "%s: a store already exists here", home);
		goto out;
	}
	if (keyfile) {
		if ((rc = trail_signer_load(keyfile, &signer, err)))
			goto out;
		if (!origin)
			origin = trail_signer_name(signer);
	}
	if (!origin) {
		uint8_t r[8];
		char hx[17];
		randombytes_buf(r, sizeof r);
		trail_hex(r, sizeof r, hx);
		snprintf(gen_origin, sizeof gen_origin, "trail/%s", hx);
		origin = gen_origin;
	}
	/* The origin names the operator key too: a valid key name. */
	const char *why = trail_key_name_problem(origin);
	if (why) {
		rc = trail_utf8_valid(origin, strlen(origin))
			     ? trail_error_set(err, TRAIL_EUSAGE, "invalid origin '%s': %s", origin, why)
			     : trail_error_set(err, TRAIL_EUSAGE, "invalid origin: %s", why);
		goto out;
	}
	for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
		char *d = trail_path(home, dirs[i]);
		rc = d ? trail_mkdirs(d, 0755, err) : TRAIL_ENOMEM;
		trail_free(d);
		if (rc)
			goto out;
	}
	if (signer) {
		skey = NULL;
		vkey = trail_strdup(trail_signer_vkey(signer));
		void *kb;
		size_t kl;
		if ((rc = trail_read_file(keyfile, 4096, &kb, &kl, err)))
			goto out;
		rc = trail_write_atomic(kpath, kb, kl, 0600, err);
		sodium_memzero(kb, kl);
		trail_free(kb);
		if (rc)
			goto out;
	} else {
		if ((rc = trail_key_generate(origin, &skey, &vkey, err)))
			goto out;
		size_t n = strlen(skey);
		skey[n] = '\n'; /* the NUL is rewritten; length is n + 1 */
		rc = trail_write_atomic(kpath, skey, n + 1, 0600, err);
		sodium_memzero(skey, n + 1);
		if (rc)
			goto out;
	}
	/* keys/operator.pub: the key that verifies this store's checkpoints offline. */
	char *pub = trail_path(home, "keys/operator.pub");
	size_t vl = strlen(vkey);
	vkey[vl] = '\n';
	rc = pub ? trail_write_atomic(pub, vkey, vl + 1, 0644, err) : TRAIL_ENOMEM;
	vkey[vl] = 0;
	trail_free(pub);
	if (rc)
		goto out;
	conf = json_pack("{s:s, s:s, s:i}", "origin", origin, "operator", vkey, "version", 1);
	size_t jl;
	if (!conf)
		rc = TRAIL_ENOMEM;
	if (!conf || (rc = trail_jcs(conf, &js, &jl, err)))
		goto out;
	js[jl] = '\n';
	/* Written last: a store exists once config.json does. */
	rc = trail_write_atomic(cfg, js, jl + 1, 0644, err);
out:
	if (rc == TRAIL_ENOMEM && err && !err->msg[0])
		trail_error_set(err, rc, "out of memory");
	json_decref(conf);
	trail_free(js);
	trail_free(skey);
	trail_free(vkey);
	trail_signer_free(signer);
	trail_free(cfg);
	trail_free(kpath);
	return rc;
}

int trail_store_open(const char *home, trail_store **out, trail_error *err)
{
	*out = NULL;
	char *cfg = trail_path(home, "config.json");
	void *buf = NULL;
	size_t len;
	json_t *conf = NULL;
	trail_store *s = NULL;
	int rc;
	if (!cfg)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!exists(cfg)) {
		rc = trail_error_set(err, TRAIL_ENOINPUT,
				     "%s: no store here (create one with 'trail-log init')", home);
		goto out;
	}
	if ((rc = trail_read_file(cfg, CONFIG_MAX, &buf, &len, err)) ||
	    (rc = trail_json_parse(buf, len, cfg, &conf, err)))
		goto out;
	const char *origin = json_string_value(json_object_get(conf, "origin"));
	const char *op = json_string_value(json_object_get(conf, "operator"));
	if (!origin || !op) {
		rc = trail_error_at(err, TRAIL_EDATA, cfg, 0, "missing origin or operator");
		goto out;
	}
	s = trail_calloc(1, sizeof *s);
	if (!s || !(s->dir = trail_strdup(home)) || !(s->origin = trail_strdup(origin))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = trail_verifier_parse(op, strlen(op), &s->operator_vkey, err))) {
		trail_error_at(err, rc, cfg, 0, "bad operator key");
		goto out;
	}
	*out = s;
	s = NULL;
out:
	trail_store_free(s);
	json_decref(conf);
	trail_free(buf);
	trail_free(cfg);
	return rc;
}

void trail_store_free(trail_store *s)
{
	if (!s)
		return;
	trail_free(s->dir);
	trail_free(s->origin);
	trail_verifier_free(s->operator_vkey);
	trail_signer_free(s->operator_key);
	trail_free(s);
}

const char *trail_store_dir(const trail_store *s) { return s->dir; }
const char *trail_store_origin(const trail_store *s) { return s->origin; }
const trail_verifier *trail_store_operator_vkey(const trail_store *s) { return s->operator_vkey; }

int trail_store_operator(trail_store *s, const trail_signer **out, trail_error *err)
{
	if (!s->operator_key) {
		char *p = trail_path(s->dir, "keys/operator.key");
		if (!p)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		int rc = trail_signer_load(p, &s->operator_key, err);
		trail_free(p);
		if (rc)
			return rc;
		if (strcmp(trail_signer_vkey(s->operator_key), trail_verifier_str(s->operator_vkey))) {
			trail_signer_free(s->operator_key);
			s->operator_key = NULL;
			return trail_error_set(err, TRAIL_EDATA,
					       "operator key does not match config.json");
		}
	}
	*out = s->operator_key;
	return TRAIL_OK;
}

char *trail_store_object_path(const trail_store *s, const char *digest)
{
	size_t n = strlen(s->dir) + 100;
	char *p = trail_malloc(n);
	if (p)
		snprintf(p, n, "%s/objects/sha256/%.2s/%.62s", s->dir, digest + 7, digest + 9);
	return p;
}

int trail_store_put(trail_store *s, const void *buf, size_t len, char digest[72],
		    trail_error *err)
{
	trail_digest_str(buf, len, digest);
	char *p = trail_store_object_path(s, digest);
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = TRAIL_OK;
	if (!exists(p)) {
		char *slash = strrchr(p, '/');
		*slash = 0;
		rc = trail_mkdirs(p, 0755, err);
		*slash = '/';
		if (!rc)
			rc = trail_write_atomic(p, buf, len, 0444, err);
	}
	trail_free(p);
	return rc;
}

int trail_store_put_file(trail_store *s, const char *path, char digest[72], trail_error *err)
{
	trail_map m;
	int rc = trail_map_file(path, &m, err);
	if (rc)
		return rc;
	rc = trail_store_put(s, m.data ? m.data : "", m.len, digest, err);
	trail_unmap(&m);
	return rc;
}

int trail_store_get(trail_store *s, const char *digest, void **out, size_t *len,
		    trail_error *err)
{
	uint8_t want[32], got[32];
	if (trail_digest_parse(digest, want))
		return trail_error_set(err, TRAIL_EDATA, "'%s' is not a sha256 digest", digest);
	char *p = trail_store_object_path(s, digest);
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = trail_read_file(p, 0, out, len, err);
	trail_free(p);
	if (rc)
		return trail_error_set(err, rc == TRAIL_ENOINPUT ? TRAIL_ENOINPUT : rc,
				       "object %s: %s", digest,
				       rc == TRAIL_ENOINPUT ? "not in the store" : "unreadable");
	trail_sha256(*out, *len, got);
	if (sodium_memcmp(want, got, 32)) {
		trail_free(*out);
		*out = NULL;
		return trail_error_set(err, TRAIL_EVERIFY, "object %s is corrupt (digest mismatch)",
				       digest);
	}
	return TRAIL_OK;
}

int trail_store_has(trail_store *s, const char *digest)
{
	uint8_t d[32];
	if (trail_digest_parse(digest, d))
		return 0;
	char *p = trail_store_object_path(s, digest);
	int r = p && exists(p);
	trail_free(p);
	return r;
}

static int valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 200 || s[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == '/' || s[i] == '@' || s[i] == 0x7f)
			return 0;
	return 1;
}

static char *name_path(const trail_store *s, const char *kind, const char *name)
{
	size_t n = strlen(s->dir) + strlen(kind) + strlen(name) + 16;
	char *p = trail_malloc(n);
	if (p)
		snprintf(p, n, "%s/names/%s/%s", s->dir, kind, name);
	return p;
}

int trail_store_name_set(trail_store *s, const char *kind, const char *name,
			 const char *digest, trail_error *err)
{
	uint8_t d[32];
	if (!valid_name(kind) || !valid_name(name))
		return trail_error_set(err, TRAIL_EUSAGE, "invalid name '%s'", name);
	if (trail_digest_parse(digest, d))
		return trail_error_set(err, TRAIL_EDATA, "'%s' is not a sha256 digest", digest);
	char *p = name_path(s, kind, name);
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	char *slash = strrchr(p, '/');
	*slash = 0;
	int rc = trail_mkdirs(p, 0755, err);
	*slash = '/';
	if (!rc) {
		char line[80];
		int n = snprintf(line, sizeof line, "%s\n", digest);
		rc = trail_write_atomic(p, line, (size_t)n, 0644, err);
	}
	trail_free(p);
	return rc;
}

int trail_store_name_get(trail_store *s, const char *kind, const char *name, char digest[72],
			 trail_error *err)
{
	if (!valid_name(kind) || !valid_name(name))
		return trail_error_set(err, TRAIL_ENOINPUT, "no %s named '%s'", kind, name);
	char *p = name_path(s, kind, name);
	void *buf;
	size_t len;
	uint8_t d[32];
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = trail_read_file(p, 256, &buf, &len, NULL);
	trail_free(p);
	if (rc)
		return trail_error_set(err, TRAIL_ENOINPUT, "no %s named '%s'", kind, name);
	char *b = buf;
	while (len && (b[len - 1] == '\n' || b[len - 1] == '\r'))
		b[--len] = 0;
	if (trail_digest_parse(b, d)) {
		trail_free(buf);
		return trail_error_set(err, TRAIL_EDATA, "name %s/%s holds no digest", kind, name);
	}
	memcpy(digest, b, 72);
	trail_free(buf);
	return TRAIL_OK;
}

int trail_store_resolve(trail_store *s, const char *kind, const char *arg, char digest[72],
			trail_error *err)
{
	uint8_t d[32];
	if (trail_digest_parse(arg, d) == TRAIL_OK) {
		if (!trail_store_has(s, arg))
			return trail_error_set(err, TRAIL_ENOINPUT, "object %s: not in the store", arg);
		memcpy(digest, arg, 72);
		return TRAIL_OK;
	}
	return trail_store_name_get(s, kind, arg, digest, err);
}
