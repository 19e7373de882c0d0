/*
 * The adapter registry: every PEFT directory under --adapters, by name
 * (a hash table, so thousands cost a probe each), and the engine's cache of
 * loaded weights — an LRU list bounded by cache_bytes. An adapter is read
 * on first use (the safetensors file is mapped, checked, converted) and
 * stays until evicted; adapters in use by running sequences are never
 * evicted, and one that cannot fit beside them waits in the queue.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "serve/serve_int.h"

static int valid_name(const char *n)
{
	if (!n || !*n || n[0] == '.' || strlen(n) > 255)
		return 0;
	for (const char *p = n; *p; p++)
		if (*p == '/' || *p == '\\' || (unsigned char)*p < 0x20)
			return 0;
	return 1;
}

static size_t slot_of(const registry *r, const char *name)
{
	size_t i = (size_t)XXH3_64bits(name, strlen(name)) & (r->nslot - 1);
	while (r->slot[i] && strcmp(r->slot[i]->name, name))
		i = (i + 1) & (r->nslot - 1);
	return i;
}

static int grow(registry *r)
{
	size_t ns = r->nslot ? r->nslot * 2 : 1024;
	adapter **old = r->slot, **nw = trail_calloc(ns, sizeof *nw);
	if (!nw)
		return TRAIL_ENOMEM;
	size_t on = r->nslot;
	r->slot = nw;
	r->nslot = ns;
	for (size_t i = 0; i < on; i++)
		if (old[i])
			r->slot[slot_of(r, old[i]->name)] = old[i];
	trail_free(old);
	return TRAIL_OK;
}

/* A new entry for dir/name when it holds an adapter file; NULL if not (or out of memory). */
static adapter *add(trail_server *s, const char *name)
{
	registry *r = &s->reg;
	char *dir = trail_path(s->o.adapters, name), *w = dir ? trail_path(dir, "adapter_model.safetensors") : NULL;
	struct stat st;
	adapter *a = NULL;
	if (!w || stat(w, &st) || !S_ISREG(st.st_mode))
		goto out;
	if (((r->n + 1) * 2 > r->nslot && grow(r)) ||
	    (r->nall == r->capall && !(r->all = trail_realloc(r->all, (r->capall = r->capall ? 2 * r->capall : 256) * sizeof *r->all))))
		goto out;
	if (!(a = trail_calloc(1, sizeof *a)) || !(a->name = trail_strdup(name))) {
		trail_free(a);
		a = NULL;
		goto out;
	}
	a->dir = dir;
	dir = NULL;
	a->est = (size_t)st.st_size;
	r->slot[slot_of(r, name)] = a;
	r->n++;
	r->all[r->nall++] = a;
out:
	trail_free(dir);
	trail_free(w);
	return a;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int reg_scan(trail_server *s, trail_error *err)
{
	if (grow(&s->reg))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!s->o.adapters)
		return TRAIL_OK;
	DIR *d = opendir(s->o.adapters);
	if (!d)
		return trail_error_errno(err, errno == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, errno, "%s", s->o.adapters);
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = TRAIL_OK;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!valid_name(e->d_name))
			continue;
		if (n == cap) {
			char **nn = trail_realloc(names, (cap = cap ? 2 * cap : 256) * sizeof *nn);
			if (!nn) {
				rc = TRAIL_ENOMEM;
				break;
			}
			names = nn;
		}
		if (!(names[n] = trail_strdup(e->d_name))) {
			rc = TRAIL_ENOMEM;
			break;
		}
		n++;
	}
	closedir(d);
	if (!rc) { /* sorted, so /v1/models lists them the same way every time */
		qsort(names, n, sizeof *names, by_name);
		for (size_t i = 0; i < n && !rc; i++)
			if (strcmp(names[i], s->base.name) && strcmp(names[i], "base"))
				add(s, names[i]);
	}
	for (size_t i = 0; i < n; i++)
		trail_free(names[i]);
	trail_free(names);
	return rc ? trail_error_set(err, rc, "out of memory") : TRAIL_OK;
}

static int file_digest(const adapter *a, char out[72])
{
	trail_map mp;
	char *p = trail_path(a->dir, "adapter_model.safetensors");
	int ok = p && !trail_map_file(p, &mp, NULL);
	if (ok) {
		trail_digest_str(mp.data ? mp.data : "", mp.len, out);
		trail_unmap(&mp);
	}
	trail_free(p);
	return ok;
}

adapter *reg_find(trail_server *s, const char *name)
{
	registry *r = &s->reg;
	if (!strncmp(name, "sha256:", 7)) { /* by the digest of its weights file: hashed on first such look-up */
		uint8_t d[TRAIL_DIGEST_LEN];
		if (trail_digest_parse(name, d))
			return NULL;
		for (size_t i = 0; i < r->nall; i++) {
			adapter *a = r->all[i];
			if (!a->digest[0] && !file_digest(a, a->digest))
				continue;
			if (!strcmp(a->digest, name))
				return a;
		}
		return NULL;
	}
	if (!valid_name(name))
		return NULL;
	adapter *a = r->slot[slot_of(r, name)];
	if (a || !s->o.adapters)
		return a;
	return add(s, name);
}

void reg_free(trail_server *s)
{
	registry *r = &s->reg;
	for (size_t i = 0; i < r->nall; i++) {
		trail_lora_w_free(r->all[i]->w);
		trail_free(r->all[i]->name);
		trail_free(r->all[i]->dir);
		trail_free(r->all[i]);
	}
	trail_free(r->all);
	trail_free(r->slot);
	memset(r, 0, sizeof *r);
}

/* ---- the cache (engine thread) ------------------------------------------------------- */

static void lru_unlink(trail_server *s, adapter *a)
{
	if (a->prev)
		a->prev->next = a->next;
	else
		s->lru_head = a->next;
	if (a->next)
		a->next->prev = a->prev;
	else
		s->lru_tail = a->prev;
	a->prev = a->next = NULL;
}

static void lru_front(trail_server *s, adapter *a)
{
	a->next = s->lru_head;
	a->prev = NULL;
	if (s->lru_head)
		s->lru_head->prev = a;
	s->lru_head = a;
	if (!s->lru_tail)
		s->lru_tail = a;
}

/* Evict from the cold end until `need` more bytes fit (or nothing unused is left). */
static void evict(trail_server *s, size_t need)
{
	adapter *a = s->lru_tail;
	while (a && s->cache_used + need > s->o.cache_bytes) {
		adapter *p = a->prev;
		if (!a->refs) {
			lru_unlink(s, a);
			s->cache_used -= trail_lora_w_bytes(a->w);
			trail_lora_w_free(a->w);
			a->w = NULL;
			pthread_mutex_lock(&s->mu);
			s->st.adapter_evictions++;
			s->st.cache_bytes = s->cache_used;
			pthread_mutex_unlock(&s->mu);
		}
		a = p;
	}
}

void cache_pin(trail_server *s, adapter *a)
{
	if (a->refs++ == 0)
		s->pinned += trail_lora_w_bytes(a->w);
	lru_unlink(s, a);
	lru_front(s, a);
}

int cache_acquire(trail_server *s, adapter *a, trail_error *err)
{
	if (a->w) {
		cache_pin(s, a);
		return TRAIL_OK;
	}
	a->pending = 0;
	evict(s, a->est);
	double t0 = serve_now();
	trail_lora_w *w;
	int rc = trail_lora_w_load(s->m, a->dir, &w, err);
	if (rc)
		return rc;
	char dg[72];
	if (file_digest(a, dg)) { /* the digest of what was loaded, for the events */
		pthread_mutex_lock(&s->mu);
		memcpy(a->digest, dg, sizeof dg);
		pthread_mutex_unlock(&s->mu);
	}
	double ms = (serve_now() - t0) * 1e3;
	a->w = w;
	a->est = trail_lora_w_bytes(w);
	evict(s, a->est); /* the file's size was an estimate (an F16 file doubles) */
	s->cache_used += a->est;
	lru_front(s, a);
	cache_pin(s, a);
	pthread_mutex_lock(&s->mu);
	s->st.cache_bytes = s->cache_used;
	if (s->cache_used > s->st.cache_peak)
		s->st.cache_peak = s->cache_used;
	s->st.adapter_loads++;
	s->load_ms[s->nload++ % (sizeof s->load_ms / sizeof *s->load_ms)] = ms;
	pthread_mutex_unlock(&s->mu);
	return TRAIL_OK;
}

void cache_release(trail_server *s, adapter *a)
{
	if (a && a->refs > 0 && --a->refs == 0)
		s->pinned -= trail_lora_w_bytes(a->w);
	if (s->cache_used > s->o.cache_bytes)
		evict(s, 0);
}
