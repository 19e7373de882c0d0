/*
 * The ledger as C2SP tlog-tiles: writing a tile directory, and reading and
 * verifying a log served from one over HTTP (ledger.h describes both).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <sodium.h>

#include "ledger/ledger.h"

#define TILE_W 256
#define CHECKPOINT_MAX 65536
#define HASHTILE_MAX ((size_t)TILE_W * 32)
#define BUNDLE_MAX ((size_t)TILE_W * (2 + TRAIL_TILE_ENTRY_MAX))

/* tile/<L>/<N>[.p/<W>], or tile/entries/<N>[.p/<W>] for level < 0. */
static void tile_path(char *out, size_t cap, int level, uint64_t n, unsigned w)
{
	unsigned g[8];
	int ng = 0;
	do {
		g[ng++] = (unsigned)(n % 1000);
		n /= 1000;
	} while (n);
	size_t len = level < 0 ? (size_t)snprintf(out, cap, "tile/entries/")
			       : (size_t)snprintf(out, cap, "tile/%d/", level);
	for (int i = ng - 1; i > 0; i--)
		len += (size_t)snprintf(out + len, cap - len, "x%03u/", g[i]);
	len += (size_t)snprintf(out + len, cap - len, "%03u", g[0]);
	if (w < TILE_W)
		snprintf(out + len, cap - len, ".p/%u", w);
}

static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

/* Hashes of the next level up: roots of each full group of 256. */
static int level_up(const trail_hash *h, uint64_t n, trail_hash **up, uint64_t *nup,
		    trail_error *err)
{
	*nup = n / TILE_W;
	*up = trail_malloc((size_t)(*nup ? *nup : 1) * sizeof(trail_hash));
	if (!*up)
		return oom(err);
	for (uint64_t i = 0; i < *nup; i++)
		trail_merkle_root_of(h + i * TILE_W, TILE_W, (*up)[i]);
	return TRAIL_OK;
}

/* ---- writing ------------------------------------------------------------ */

static int put_tile(const char *dir, const char *rel, const void *buf, size_t len, int full,
		    trail_tiles_stats *st, trail_error *err)
{
	char *path = trail_path(dir, rel);
	if (!path)
		return oom(err);
	struct stat sb;
	int rc = TRAIL_OK;
	if (full && stat(path, &sb) == 0 && (size_t)sb.st_size == len) {
		st->kept++;
		goto out;
	}
	char *slash = strrchr(path, '/');
	*slash = 0;
	rc = trail_mkdirs(path, 0755, err);
	*slash = '/';
	if (!rc && !(rc = trail_write_atomic(path, buf, len, 0644, err)))
		st->written++;
out:
	trail_free(path);
	return rc;
}

int trail_tiles_write(trail_ledger *l, const char *dir, trail_tiles_stats *stp,
		      trail_error *err)
{
	trail_tiles_stats st = {0};
	uint64_t n = trail_ledger_size(l);
	char rel[128], *note = NULL;
	trail_hash *h = trail_malloc((size_t)(n ? n : 1) * sizeof(trail_hash)), *up = NULL;
	trail_buf b = {0};
	int rc = h ? TRAIL_OK : oom(err);
	st.size = n;
	/* Entry bundles, and the leaf hashes for the hash tiles. */
	for (uint64_t t = 0; !rc && t * TILE_W < n; t++) {
		unsigned w = (unsigned)(n - t * TILE_W < TILE_W ? n - t * TILE_W : TILE_W);
		b.n = 0;
		for (unsigned i = 0; i < w && !rc; i++) {
			uint64_t idx = t * TILE_W + i;
			char *e;
			size_t elen;
			if ((rc = trail_ledger_get(l, idx, &e, &elen, err)))
				break;
			uint8_t be[2] = {(uint8_t)(elen >> 8), (uint8_t)elen};
			if (elen > TRAIL_TILE_ENTRY_MAX)
				rc = trail_error_set(err, TRAIL_ELIMIT,
						     "entry %" PRIu64 " is %zu bytes: over the %d an entry bundle holds",
						     idx, elen, TRAIL_TILE_ENTRY_MAX);
			else if (trail_buf_put(&b, be, 2) || trail_buf_put(&b, e, elen))
				rc = oom(err);
			else
				trail_merkle_leaf(e, elen, h[idx]);
			trail_free(e);
		}
		tile_path(rel, sizeof rel, -1, t, w);
		if (!rc)
			rc = put_tile(dir, rel, b.p, b.n, w == TILE_W, &st, err);
	}
	/* Hash tiles, level by level. */
	uint64_t c = n;
	for (int level = 0; !rc && c > 0; level++) {
		for (uint64_t t = 0; !rc && t * TILE_W < c; t++) {
			unsigned w = (unsigned)(c - t * TILE_W < TILE_W ? c - t * TILE_W : TILE_W);
			tile_path(rel, sizeof rel, level, t, w);
			rc = put_tile(dir, rel, h + t * TILE_W, (size_t)w * 32, w == TILE_W, &st, err);
		}
		uint64_t nup;
		if (!rc && !(rc = level_up(h, c, &up, &nup, err))) {
			trail_free(h);
			h = up;
			up = NULL;
			c = nup;
		}
	}
	if (!rc && !(rc = trail_ledger_checkpoint(l, &note, err))) {
		char *path = trail_path(dir, "checkpoint");
		rc = !path ? oom(err) : trail_mkdirs(dir, 0755, err);
		if (!rc && !(rc = trail_write_atomic(path, note, strlen(note), 0644, err)))
			st.written++;
		trail_free(path);
	}
	if (stp)
		*stp = st;
	trail_free(note);
	trail_free(h);
	trail_buf_release(&b);
	return rc;
}

/* ---- reading over HTTP ---------------------------------------------------- */

struct trail_tiles {
	CURL *curl;
	char *base;
	long timeout_s;
	uint64_t size, fetched;
	trail_hash root;
	trail_hash *leaves; /* size of them */
	trail_merkle_mem *tree;
	char *origin;
};

/* GET base/rel into *out (at most max bytes). */
static int fetch(trail_tiles *t, const char *rel, size_t max, trail_buf *out, trail_error *err)
{
	size_t ul = strlen(t->base) + strlen(rel) + 2;
	char *url = trail_malloc(ul), ebuf[CURL_ERROR_SIZE] = "";
	if (!url)
		return oom(err);
	snprintf(url, ul, "%s/%s", t->base, rel);
	trail_capbuf s = {.max = max};
	CURL *c = t->curl;
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 2L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, t->timeout_s);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, t->timeout_s);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, t->timeout_s / 2 > 0 ? t->timeout_s / 2 : 1L);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, trail_capbuf_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
	curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "trail/" TRAIL_VERSION);
	CURLcode cc = curl_easy_perform(c);
	int rc = TRAIL_OK;
	if (s.over || cc == CURLE_FILESIZE_EXCEEDED)
		rc = trail_error_at(err, TRAIL_ELIMIT, url, 0, "response over %zu bytes", max);
	else if (cc != CURLE_OK)
		rc = trail_error_at(err, TRAIL_EUNAVAIL, url, 0, "%s",
				    ebuf[0] ? ebuf : curl_easy_strerror(cc));
	t->fetched += s.b.n;
	trail_free(url);
	if (rc)
		trail_buf_release(&s.b);
	else
		*out = s.b;
	return rc;
}

static int open_note(const trail_buf *b, const trail_verifier *const *vs, size_t nv,
		     char **origin, uint64_t *size, trail_hash root, trail_error *err)
{
	char *text = NULL;
	int rc = trail_note_open(b->p, b->n, vs, nv, &text, NULL, err);
	if (rc == TRAIL_EDATA)
		rc = err ? (err->code = TRAIL_EVERIFY) : TRAIL_EVERIFY;
	if (!rc && (rc = trail_checkpoint_parse(text, origin, size, root, err)) == TRAIL_EDATA)
		rc = err ? (err->code = TRAIL_EVERIFY) : TRAIL_EVERIFY;
	trail_free(text);
	return rc;
}

/* Check entry bundle t (w entries) and fill their leaf hashes. */
static int check_bundle(trail_tiles *t, uint64_t tile, unsigned w, trail_error *err)
{
	char rel[128];
	trail_buf b = {0};
	tile_path(rel, sizeof rel, -1, tile, w);
	int rc = fetch(t, rel, BUNDLE_MAX, &b, err);
	size_t off = 0;
	for (unsigned i = 0; !rc && i < w; i++) {
		if (b.n - off < 2 || b.n - off - 2 < ((size_t)(uint8_t)b.p[off] << 8 | (uint8_t)b.p[off + 1])) {
			rc = trail_error_set(err, TRAIL_EVERIFY, "%s: truncated at entry %u", rel, i);
			break;
		}
		size_t el = (size_t)(uint8_t)b.p[off] << 8 | (uint8_t)b.p[off + 1];
		trail_merkle_leaf(b.p + off + 2, el, t->leaves[tile * TILE_W + i]);
		off += 2 + el;
	}
	if (!rc && off != b.n)
		rc = trail_error_set(err, TRAIL_EVERIFY, "%s: %zu bytes after %u entries", rel,
				     b.n - off, w);
	trail_buf_release(&b);
	return rc;
}

/* Check every hash tile of the tree against the hashes from the entries. */
static int check_hash_tiles(trail_tiles *t, trail_error *err)
{
	trail_hash *h = t->leaves, *up = NULL;
	uint64_t c = t->size;
	int rc = TRAIL_OK;
	char rel[128];
	for (int level = 0; !rc && c > 0; level++) {
		for (uint64_t i = 0; !rc && i * TILE_W < c; i++) {
			unsigned w = (unsigned)(c - i * TILE_W < TILE_W ? c - i * TILE_W : TILE_W);
			trail_buf b = {0};
			tile_path(rel, sizeof rel, level, i, w);
			if ((rc = fetch(t, rel, HASHTILE_MAX, &b, err)))
				break;
			if (b.n != (size_t)w * 32)
				rc = trail_error_set(err, TRAIL_EVERIFY, "%s: %zu bytes, not %u hashes",
						     rel, b.n, w);
			else if (sodium_memcmp(b.p, h + i * TILE_W, b.n))
				rc = trail_error_set(err, TRAIL_EVERIFY,
						     level ? "%s: hashes other than the tree's"
							   : "%s: hashes other than the entries'", rel);
			trail_buf_release(&b);
		}
		uint64_t nup;
		if (!rc && !(rc = level_up(h, c, &up, &nup, err))) {
			if (h != t->leaves)
				trail_free(h);
			h = up;
			c = nup;
		}
	}
	if (h != t->leaves)
		trail_free(h);
	return rc;
}

int trail_tiles_open(const char *url, const trail_verifier *const *vs, size_t nv,
		     const char *origin, const trail_tiles_opts *o, trail_tiles **out,
		     trail_error *err)
{
	static int inited;
	if (!inited && curl_global_init(CURL_GLOBAL_DEFAULT))
		return trail_error_set(err, TRAIL_EINTERNAL, "libcurl did not initialise");
	inited = 1;
	trail_tiles *t = trail_calloc(1, sizeof *t);
	if (!t || !(t->curl = curl_easy_init()) || !(t->base = trail_strdup(url))) {
		trail_tiles_free(t);
		return oom(err);
	}
	size_t bl = strlen(t->base);
	while (bl && t->base[bl - 1] == '/')
		t->base[--bl] = 0;
	t->timeout_s = o && o->timeout_s > 0 ? o->timeout_s : 30;
	trail_buf cp = {0};
	int rc = fetch(t, "checkpoint", CHECKPOINT_MAX, &cp, err);
	trail_error e = {0};
	if (!rc && (rc = open_note(&cp, vs, nv, &t->origin, &t->size, t->root, &e)))
		trail_error_at(err, rc, "checkpoint", 0, "%s", e.msg);
	trail_buf_release(&cp);
	if (!rc && origin && strcmp(origin, t->origin))
		rc = trail_error_set(err, TRAIL_EVERIFY, "checkpoint: the log is '%s', not '%s'",
				     t->origin, origin);
	if (!rc && t->size > ((uint64_t)1 << 40))
		rc = trail_error_set(err, TRAIL_ELIMIT, "checkpoint: tree size %" PRIu64 " too large",
				     t->size);
	if (!rc && !(t->leaves = trail_malloc((size_t)(t->size ? t->size : 1) * sizeof(trail_hash))))
		rc = oom(err);
	for (uint64_t i = 0; !rc && i * TILE_W < t->size; i++)
		rc = check_bundle(t, i, (unsigned)(t->size - i * TILE_W < TILE_W ? t->size - i * TILE_W : TILE_W), err);
	if (!rc)
		rc = check_hash_tiles(t, err);
	trail_hash r;
	if (!rc && (rc = trail_merkle_root_of((const trail_hash *)t->leaves, (size_t)t->size, r)) == 0 &&
	    sodium_memcmp(r, t->root, 32))
		rc = trail_error_set(err, TRAIL_EVERIFY,
				     "the tiles' tree root is not the checkpoint's");
	if (!rc && !(t->tree = trail_merkle_mem_new((const trail_hash *)t->leaves, (size_t)t->size)))
		rc = oom(err);
	if (rc) {
		trail_tiles_free(t);
		return rc;
	}
	*out = t;
	return TRAIL_OK;
}

void trail_tiles_free(trail_tiles *t)
{
	if (!t)
		return;
	if (t->curl)
		curl_easy_cleanup(t->curl);
	trail_merkle_mem_free(t->tree);
	trail_free(t->leaves);
	trail_free(t->base);
	trail_free(t->origin);
	trail_free(t);
}

uint64_t trail_tiles_size(const trail_tiles *t) { return t->size; }
void trail_tiles_root(const trail_tiles *t, trail_hash out) { memcpy(out, t->root, 32); }
uint64_t trail_tiles_fetched(const trail_tiles *t) { return t->fetched; }

/* The earlier tree (m, root1) is a prefix of the served one. */
static int check_consistent(trail_tiles *t, uint64_t m, const trail_hash root1,
			    trail_error *err)
{
	trail_hash proof[TRAIL_MERKLE_MAXPROOF];
	size_t np = 0;
	if (m > t->size)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "the checkpoint (size %" PRIu64 ") is ahead of the served log (size %" PRIu64 ")",
				       m, t->size);
	if (m == 0)
		return TRAIL_OK;
	int rc = trail_merkle_prove_consistency(trail_merkle_mem_get, t->tree, m, t->size, proof,
						&np, err);
	trail_error e = {0};
	if (!rc && (rc = trail_merkle_verify_consistency(m, t->size, root1, t->root,
							 (const trail_hash *)proof, np, &e)))
		trail_error_set(err, rc, "the checkpoint of size %" PRIu64
				" is not consistent with the served log: %s", m, e.msg);
	return rc;
}

int trail_tiles_check_checkpoint(trail_tiles *t, const char *buf, size_t len,
				 const trail_verifier *const *vs, size_t nv, trail_error *err)
{
	trail_buf b = {.p = (char *)buf, .n = len};
	char *origin = NULL;
	uint64_t m;
	trail_hash root;
	int rc = open_note(&b, vs, nv, &origin, &m, root, err);
	if (!rc && strcmp(origin, t->origin))
		rc = trail_error_set(err, TRAIL_EVERIFY, "the checkpoint is for log '%s', not '%s'",
				     origin, t->origin);
	trail_free(origin);
	return rc ? rc : check_consistent(t, m, root, err);
}

int trail_tiles_check_receipt(trail_tiles *t, const char *buf, size_t len,
			      const trail_verifier *const *vs, size_t nv, trail_error *err)
{
	uint64_t idx;
	trail_hash leaf, proof[TRAIL_MERKLE_MAXPROOF];
	size_t np;
	int rc = trail_receipt_verify(buf, len, vs, nv, t->origin, &idx, leaf, err);
	if (rc)
		return rc;
	if (idx >= t->size)
		return trail_error_set(err, TRAIL_EVERIFY,
				       "entry %" PRIu64 " is not in the served log (size %" PRIu64 ")",
				       idx, t->size);
	if ((rc = trail_merkle_prove_inclusion(trail_merkle_mem_get, t->tree, idx, t->size, proof,
					       &np, err)) ||
	    (rc = trail_merkle_verify_inclusion(idx, t->size, leaf, (const trail_hash *)proof, np,
						t->root, err)))
		return rc == TRAIL_EVERIFY
			       ? trail_error_set(err, rc, "entry %" PRIu64 " of the served log is not the receipt's", idx)
			       : rc;
	/* The receipt's own checkpoint: after the blank line ending the proof. */
	const char *p = buf, *end = buf + len, *cp = NULL;
	for (; p + 1 < end; p++)
		if (p[0] == '\n' && p[1] == '\n') {
			cp = p + 2;
			break;
		}
	if (!cp)
		return trail_error_set(err, TRAIL_EDATA, "tlog-proof: no checkpoint");
	return trail_tiles_check_checkpoint(t, cp, (size_t)(end - cp), vs, nv, err);
}
