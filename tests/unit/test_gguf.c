/*
 * GGUF and sharded checkpoints: the same weights as a safetensors
 * directory, as a GGUF file (F32, F16, BF16: the same bits; Q8_0: close
 * to the directory's and to the BF16 file's, the bounds measured) and as
 * two shards give the same logits and greedy tokens through training's
 * forward and serving's step; llama.cpp's row
 * order of q and k; the metadata; the tokenizer in the file builds the same
 * tokenizer as its tokenizer.json; every truncation and a sweep of byte
 * mutations of the header are refused with a message or read within the
 * file; shards missing, twice, outside the directory or unlisted are
 * refused by name.
 *
 * With TRAIL_GGUF_TOKENIZERS="DIR..." and TRAIL_GGUF_CORPUS=FILE (one JSON
 * string per line; tests/cli/gguf.sh), each DIR's tokenizer.json goes
 * through a GGUF file and must give the same tokenizer and ids.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"
#include "tap.h"

enum { T = 10, GEN = 8 };

static char tmp[] = "/tmp/trail-gguf-XXXXXX";

static char *at(const char *name)
{
	return trail_path(tmp, name);
}

static trail_model_cfg llama_cfg(int arch)
{
	trail_model_cfg c = {.n_layer = 2, .n_head = 4, .n_embd = 32, .n_positions = 32, .vocab_size = 96, .arch = arch,
			     .n_kv_head = 2, .n_inner = 64, .head_dim = 8, .untied = arch != TRAIL_ARCH_QWEN2,
			     .qkv_bias = arch == TRAIL_ARCH_QWEN2, .norm_eps = 1e-5, .rope_theta = 10000};
	return c;
}

/* Round every weight to what F16 or BF16 holds, so that type keeps them exactly. */
static void round_to(trail_model *m, int type)
{
	size_t n;
	float *p = trail_model_params(m, &n);
	for (size_t i = 0; i < n; i++) {
		if (type == TRAIL_GGUF_F16) {
			p[i] = trail_gguf_half(trail_gguf_to_half(p[i]));
		} else if (type == TRAIL_GGUF_BF16) {
			uint32_t u = (uint32_t)trail_gguf_to_bf16(p[i]) << 16;
			memcpy(&p[i], &u, 4);
		}
	}
}

/* Prefill a prompt, then GEN greedy tokens; every row's logits into lg [(T + GEN) V]. */
static int greedy(trail_infer *im, int32_t *gen, float *lg, trail_error *e)
{
	const trail_model_cfg *c = trail_infer_config(im);
	int V = c->vocab_size, rows[T], pos[T];
	int32_t tok[T];
	trail_kvc *kv = trail_kvc_new(im, c->n_positions), *kvs[T];
	const trail_lora_w *none[T] = {0};
	for (int t = 0; t < T; t++)
		tok[t] = (t * 29 + 7) % V, pos[t] = t, rows[t] = t, kvs[t] = kv;
	int rc = trail_infer_step(im, T, tok, pos, kvs, none, T, rows, lg, e);
	for (int g = 0; !rc && g < GEN; g++) {
		const float *l = lg + (size_t)(T - 1 + g) * V;
		int32_t best = 0;
		for (int v = 1; v < V; v++)
			best = l[v] > l[best] ? v : best;
		gen[g] = best;
		int p = T + g;
		rc = trail_infer_step(im, 1, &best, &p, &kv, none, 1, rows, lg + (size_t)(T + g) * V, e);
	}
	trail_kvc_free(kv);
	return rc;
}

static void batch(int V, int32_t *tok)
{
	for (int t = 0; t < T; t++)
		tok[t] = (t * 13 + 5) % V;
}

/* Forward logits [T,V] of a model loaded from base (training's path). */
static float *forward(const char *base, size_t *n, trail_error *e)
{
	trail_model *m;
	if (trail_model_load(base, &m, e))
		return NULL;
	int32_t tok[T];
	batch(trail_model_config(m)->vocab_size, tok);
	float *out = NULL;
	if (!trail_model_forward(m, tok, NULL, 1, T, NULL, e)) {
		*n = (size_t)T * trail_model_config(m)->vocab_size;
		out = malloc(*n * sizeof *out);
		memcpy(out, trail_model_logits(m), *n * sizeof *out);
	}
	trail_model_free(m);
	return out;
}

static const char *tname(int type)
{
	return trail_gguf_type_name(type);
}

/* One architecture: a directory and GGUF files of each type, compared. */
static void same_weights(const char *what, int arch)
{
	float *bf_logits = NULL;
	trail_model_cfg c = llama_cfg(arch);
	trail_error e = {0};
	static const int types[] = {TRAIL_GGUF_F32, TRAIL_GGUF_F16, TRAIL_GGUF_BF16, TRAIL_GGUF_Q8_0};
	for (size_t k = 0; k < 4; k++) {
		int type = types[k];
		trail_model *m;
		trail_model_init(&c, 11, &m, &e);
		size_t np;
		float *p = trail_model_params(m, &np);
		for (size_t i = 0; i < np; i++) /* away from the initialisation, so every tensor carries signal */
			p[i] += 0.1f * (float)sin((double)i * 0.61);
		round_to(m, type);
		char dn[64], fn[64];
		snprintf(dn, sizeof dn, "%s-%s", what, tname(type));
		snprintf(fn, sizeof fn, "%s-%s.gguf", what, tname(type));
		char *dir = at(dn), *file = at(fn);
		ok(trail_model_save(m, dir, &e) == 0 && trail_gguf_write(file, m, NULL, type, &e) == 0, "%s %s: written: %s", what,
		   tname(type), e.msg);
		trail_model_free(m);
		/* serving's step and greedy tokens */
		trail_infer *a = NULL, *b = NULL;
		ok(trail_infer_load(dir, &a, &e) == 0 && trail_infer_load(file, &b, &e) == 0, "%s %s: both load for serving: %s",
		   what, tname(type), e.msg);
		size_t nl = (size_t)(T + GEN) * c.vocab_size;
		float *la = calloc(nl, sizeof *la), *lb = calloc(nl, sizeof *lb);
		int32_t ga[GEN], gb[GEN];
		int ran = a && b && !greedy(a, ga, la, &e) && !greedy(b, gb, lb, &e);
		double md;
		tap_close(la, lb, nl, 0, &md);
		if (type == TRAIL_GGUF_BF16 && ran) { /* the BF16 file's prompt logits, for the Q8_0 file's below */
			free(bf_logits);
			bf_logits = malloc((size_t)T * c.vocab_size * sizeof *bf_logits);
			memcpy(bf_logits, lb, (size_t)T * c.vocab_size * sizeof *bf_logits);
		}
		if (type == TRAIL_GGUF_Q8_0) {
			/* the same weights before rounding as the BF16 file's: close to its outputs, the bound measured */
			double mb = 1;
			if (bf_logits)
				tap_close(lb, bf_logits, (size_t)T * c.vocab_size, 0, &mb);
			ok(ran && bf_logits && mb < 0.05, "%s Q8_0: prompt logits within %.2e of the BF16 file's (bound 5e-2)", what, mb);
		}
		if (type != TRAIL_GGUF_Q8_0) {
			ok(ran && !memcmp(la, lb, nl * sizeof *la) && !memcmp(ga, gb, sizeof ga),
			   "%s %s: the same logits, bit for bit, and the same %d greedy tokens (serving)", what, tname(type), GEN);
		} else {
			/* dequantised weights: close logits over the prompt, the bound measured (logits span about +-3) */
			int same = !memcmp(ga, gb, sizeof ga);
			tap_close(la, lb, (size_t)T * c.vocab_size, 0, &md);
			ok(ran && md < 0.05, "%s Q8_0: prompt logits within %.2e of the F32 directory's (bound 5e-2); greedy tokens %s",
			   what, md, same ? "the same" : "differ");
		}
		if (a && b)
			ok(trail_infer_bytes(a) == trail_infer_bytes(b), "%s %s: the same parameter count", what, tname(type));
		trail_infer_free(a);
		trail_infer_free(b);
		free(la);
		free(lb);
		/* training's forward */
		size_t n1 = 0, n2 = 0;
		float *f1 = forward(dir, &n1, &e), *f2 = forward(file, &n2, &e);
		if (type != TRAIL_GGUF_Q8_0)
			ok(f1 && f2 && n1 == n2 && !memcmp(f1, f2, n1 * sizeof *f1), "%s %s: the same logits from training's forward",
			   what, tname(type));
		free(f1);
		free(f2);
		/* the configuration read back */
		trail_model_cfg got;
		trail_gguf *g = NULL;
		int rc = trail_gguf_open(file, &g, &e) || trail_gguf_config(g, &got, &e);
		/* GGUF has no Mistral: it is architecture llama, the same computation where its sliding window does not bite */
		ok(!rc && got.arch == (c.arch == TRAIL_ARCH_MISTRAL ? TRAIL_ARCH_LLAMA : c.arch) && got.n_layer == c.n_layer && got.n_head == c.n_head && got.n_kv_head == c.n_kv_head &&
			   got.n_embd == c.n_embd && got.n_inner == c.n_inner && got.head_dim == c.head_dim &&
			   got.vocab_size == c.vocab_size && got.n_positions == c.n_positions && got.untied == c.untied &&
			   got.qkv_bias == c.qkv_bias && got.norm_eps == c.norm_eps && got.rope_theta == c.rope_theta,
		   "%s %s: the metadata gives the configuration back (%s)", what, tname(type), e.msg);
		if (!rc && k == 0) {
			/* llama.cpp's row order of q: file row h*hd + 2i + s is checkpoint row h*hd + s*hd/2 + i */
			trail_model *hm;
			trail_model_load(dir, &hm, &e);
			trail_param v[64];
			trail_arch_of(c.arch)->tensors(hm, v);
			int qi = -1;
			for (size_t i = 0; i < trail_gguf_count(g); i++) {
				const char *nm;
				int ty, nd;
				int64_t ne[4];
				trail_gguf_tensor(g, i, &nm, &ty, &nd, ne);
				qi = !strcmp(nm, "blk.1.attn_q.weight") ? (int)i : qi;
			}
			float *raw = malloc(sizeof(float) * 32 * 32);
			trail_gguf_read(g, (size_t)qi, raw);
			const float *hf = NULL;
			for (int i = 0; i < 64 && !hf; i++)
				hf = !strcmp(v[i].name, "model.layers.1.self_attn.q_proj.weight") ? v[i].data : NULL;
			int good = hf != NULL, hd = c.head_dim;
			for (int r = 0; good && r < 32; r++) {
				int h = r / hd, q = r % hd, src = arch == TRAIL_ARCH_QWEN2 ? r : h * hd + (q % 2) * (hd / 2) + q / 2;
				good = !memcmp(raw + r * 32, hf + src * 32, 32 * sizeof(float));
			}
			ok(good, "%s: q_proj rows in the file are %s", what,
			   arch == TRAIL_ARCH_QWEN2 ? "in Hugging Face's order (qwen2)" : "in llama.cpp's rotary order");
			free(raw);
			trail_model_free(hm);
		}
		trail_gguf_free(g);
		char d1[72], d2[72];
		trail_map mp;
		trail_map_file(file, &mp, NULL);
		trail_digest_str(mp.data, mp.len, d2);
		trail_unmap(&mp);
		ok(trail_base_digest(file, d1, &e) == 0 && !strcmp(d1, d2), "%s %s: the base digest is the file's", what, tname(type));
		trail_free(dir);
		trail_free(file);
	}
	free(bf_logits);
}

/* ---- refusals ---------------------------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t *n)
{
	trail_map mp;
	if (trail_map_file(path, &mp, NULL))
		return NULL;
	uint8_t *b = malloc(mp.len);
	memcpy(b, mp.data, mp.len);
	*n = mp.len;
	trail_unmap(&mp);
	return b;
}

/* Parse, and if it parses read every tensor (an out-of-bounds read is ASan's to catch). */
static int try_gguf(const uint8_t *b, size_t n, trail_error *e)
{
	trail_gguf *g;
	uint8_t *copy = malloc(n ? n : 1); /* exactly n bytes: a read past them is a heap overflow */
	memcpy(copy, b, n);
	int rc = trail_gguf_parse(copy, n, "m.gguf", &g, e);
	if (!rc) {
		for (size_t i = 0; i < trail_gguf_count(g); i++) {
			const char *nm;
			int ty, nd;
			int64_t ne[4];
			trail_gguf_tensor(g, i, &nm, &ty, &nd, ne);
			float *d = malloc(sizeof(float) * (size_t)(ne[0] * ne[1] * ne[2] * ne[3]));
			trail_gguf_read(g, i, d);
			free(d);
		}
		trail_model_cfg c;
		trail_tokenizer *tk = NULL;
		if (!trail_gguf_config(g, &c, NULL) && !trail_gguf_tokenizer(g, &tk, NULL))
			trail_tokenizer_free(tk);
		trail_gguf_free(g);
	}
	free(copy);
	return rc;
}

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The byte where tensor info `name` starts its n_dims in b (after its name). */
static size_t info_of(const uint8_t *b, size_t n, const char *name)
{
	size_t l = strlen(name);
	for (size_t i = 8; i + 8 + l + 4 < n; i++)
		if (le64(b + i - 8) == l && !memcmp(b + i, name, l))
			return i + l;
	return 0;
}

static void refusals(void)
{
	trail_error e = {0};
	char *file = at("llama-Q8_0.gguf");
	size_t n = 0;
	uint8_t *b = slurp(file, &n);
	ok(b != NULL, "a Q8_0 file to damage (%zu bytes)", n);
	if (!b)
		return;
	ok(try_gguf(b, n, &e) == 0, "it reads as it is");
	/* where the data section starts: the first tensor's data follows the header */
	trail_gguf *g;
	trail_gguf_parse(b, n, "m.gguf", &g, &e);
	size_t hdr = 0;
	for (size_t i = 0; g && i < trail_gguf_count(g); i++) {
		const char *nm;
		int ty, nd;
		int64_t ne[4];
		trail_gguf_tensor(g, i, &nm, &ty, &nd, ne);
		size_t o = info_of(b, n, nm);
		hdr = o + 4 + 8 * (size_t)nd + 12 > hdr ? o + 4 + 8 * (size_t)nd + 12 : hdr;
	}
	trail_gguf_free(g);
	/* truncated at every byte of the header, and in the data */
	int all = 1, msgs = 1;
	for (size_t k = 0; k < hdr + 64 && k < n; k++) {
		trail_error_clear(&e);
		int rc = try_gguf(b, k, &e);
		all &= rc == TRAIL_EDATA;
		msgs &= e.msg[0] != 0;
	}
	trail_error_clear(&e);
	int last = try_gguf(b, n - 1, &e);
	ok(all && msgs && last == TRAIL_EDATA && strstr(e.msg, "past end of file"),
	   "truncated at each of the %zu header bytes and in the data: refused with a message (%s)", hdr + 64, e.msg);
	/* every byte of the header changed three ways: refused with a message, or read within the file */
	long refused = 0, read = 0, silent = 0;
	uint8_t *m = malloc(n);
	for (size_t k = 0; k < hdr; k++)
		for (int f = 0; f < 3; f++) {
			memcpy(m, b, n);
			m[k] = f == 0 ? (uint8_t)~m[k] : f == 1 ? (uint8_t)(m[k] + 1) : 0x7f;
			trail_error_clear(&e);
			if (try_gguf(m, n, &e))
				refused++, silent += !e.msg[0];
			else
				read++;
		}
	ok(silent == 0 && refused > 0, "%ld mutations of the header: %ld refused with a message, %ld read within bounds",
	   refused + read, refused, read);
	/* named fields */
	size_t q = info_of(b, n, "blk.0.attn_q.weight");
	struct {
		const char *what;
		size_t off;
		int w;
		uint64_t v;
		const char *msg;
		size_t off2; /* a second field, when not 0 */
		uint64_t v2;
	} cases[] = {
		{"version 1", 4, 4, 1, "version 1", 0, 0},
		{"version 4", 4, 4, 4, "version 4", 0, 0},
		{"a huge tensor count", 8, 8, 1ull << 40, "do not fit", 0, 0},
		{"a huge key count", 16, 8, 1ull << 62, "do not fit", 0, 0},
		{"the first key's length", 24, 8, 1ull << 60, "truncated", 0, 0},
		{"a q8_0 tensor retyped Q4_K", q + 4 + 16, 4, 12, "type Q4_K is not supported", 0, 0},
		{"an unknown ggml type", q + 4 + 16, 4, 99, "ggml type 99 is not known", 0, 0},
		{"a tensor retyped F32 (four times the bytes: into the next tensor)", q + 4 + 16, 4, 0, "overlap", 0, 0},
		{"n_dims 5", q, 4, 5, "5 dimensions", 0, 0},
		{"n_dims 0", q, 4, 0, "0 dimensions", 0, 0},
		{"a dimension of 0", q + 4, 8, 0, "dimension 0 is 0", 0, 0},
		{"a dimension past 2^40", q + 4 + 8, 8, 1ull << 41, "dimension 1 is", 0, 0},
		{"a shape product past 2^50", q + 4, 8, 1ull << 40, "shape product past 2^50", q + 4 + 8, 1ull << 20},
		{"a shape product past the file", q + 4, 8, 1ull << 40, "past end of file", 0, 0},
		{"a row not of whole Q8_0 blocks", q + 4, 8, 31, "blocks of 32", 0, 0},
		{"an offset off the alignment", q + 4 + 20, 8, 8, "not a multiple of the alignment", 0, 0},
		{"an offset past the end", q + 4 + 20, 8, 1ull << 62, "past end of file", 0, 0},
		{"an offset that overlaps another tensor", q + 4 + 20, 8, 0, "overlap", 0, 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		memcpy(m, b, n);
		for (int k = 0; k < cases[i].w; k++)
			m[cases[i].off + (size_t)k] = (uint8_t)(cases[i].v >> (8 * k));
		if (cases[i].off2)
			put64(m + cases[i].off2, cases[i].v2);
		trail_error_clear(&e);
		int rc = try_gguf(m, n, &e);
		ok(rc == TRAIL_EDATA && strstr(e.msg, cases[i].msg), "%s: refused (%s)", cases[i].what, e.msg);
	}
	free(m);
	free(b);
	trail_free(file);
	/* keys: a value type, a bool, an alignment, arrays nested too deep, a big-endian file */
	static const uint8_t head[] = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
	uint8_t kvb[256];
	size_t o;
#define KEY(k) (memcpy(kvb, head, sizeof head), o = sizeof head, put64(kvb + o, strlen(k)), o += 8, memcpy(kvb + o, k, strlen(k)), o += strlen(k))
#define U32(v) (kvb[o] = (uint8_t)(v), kvb[o + 1] = (uint8_t)((v) >> 8), kvb[o + 2] = (uint8_t)((v) >> 16), kvb[o + 3] = (uint8_t)((v) >> 24), o += 4)
	KEY("x"), U32(13), U32(0);
	trail_error_clear(&e);
	ok(try_gguf(kvb, o, &e) == TRAIL_EDATA && strstr(e.msg, "not a GGUF type"), "value type 13: %s", e.msg);
	KEY("x"), U32(7), kvb[o++] = 2;
	ok(try_gguf(kvb, o, &e) == TRAIL_EDATA && strstr(e.msg, "a bool of 2"), "a bool of 2: %s", e.msg);
	KEY("general.alignment"), U32(4), U32(24);
	ok(try_gguf(kvb, o, &e) == TRAIL_EDATA && strstr(e.msg, "power of two"), "general.alignment 24: %s", e.msg);
	KEY("x"), U32(9);
	for (int d = 0; d < 2; d++)
		U32(9), U32(1), U32(0);
	U32(4), U32(2), U32(0), U32(7), U32(8);
	trail_error_clear(&e);
	ok(try_gguf(kvb, o, &e) == 0, "an array of arrays of arrays of u32 is read: %s", e.msg);
	KEY("x"), U32(9);
	for (int d = 0; d < 4; d++)
		U32(9), U32(1), U32(0);
	U32(4), U32(0), U32(0);
	ok(try_gguf(kvb, o, &e) == TRAIL_EDATA && strstr(e.msg, "nested deeper"), "arrays nested five deep: %s", e.msg);
	KEY("x"), U32(9), U32(4), U32(0xffffffffu), U32(0xf);
	ok(try_gguf(kvb, o, &e) == TRAIL_EDATA && strstr(e.msg, "past end of file"), "an array longer than the file: %s", e.msg);
	KEY("x"), U32(8), U32(0xfffffff0u), U32(0xffffffffu);
	ok(try_gguf(kvb, o, &e) == TRAIL_EDATA && strstr(e.msg, "truncated"), "a string longer than the file: %s", e.msg);
	memcpy(kvb, head, sizeof head);
	kvb[4] = 0, kvb[7] = 3;
	ok(try_gguf(kvb, sizeof head, &e) == TRAIL_EDATA && strstr(e.msg, "big-endian"), "a big-endian file: %s", e.msg);
#undef KEY
#undef U32
}

/* Parse a safetensors file from exactly n bytes; if it parses, read every tensor at its header's shape. */
static int try_st(const uint8_t *b, size_t n, trail_error *e)
{
	uint8_t *copy = malloc(n ? n : 1);
	memcpy(copy, b, n);
	trail_st *st;
	int rc = trail_st_parse(copy, n, "model.safetensors", &st, e);
	if (!rc) {
		uint64_t hl = le64(copy);
		json_t *h = json_loadb((const char *)copy + 8, (size_t)hl, 0, NULL);
		for (size_t i = 0; i < trail_st_count(st); i++) {
			const char *nm = trail_st_name(st, i);
			json_t *sh = json_object_get(json_object_get(h, nm), "shape");
			int64_t shape[8];
			size_t cnt = 1, nd = json_array_size(sh);
			for (size_t d = 0; d < nd && d < 8; d++)
				cnt *= (size_t)(shape[d] = json_integer_value(json_array_get(sh, d)));
			if (nd > 8 || cnt > ((size_t)1 << 24))
				continue;
			float *d = malloc((cnt ? cnt : 1) * sizeof *d);
			trail_error re = {0};
			if (trail_st_read_f32(st, nm, shape, (int)nd, d, &re) && !re.msg[0])
				e->msg[0] = 0, rc = -1; /* a refusal without a message */
			free(d);
		}
		json_decref(h);
		trail_st_free(st);
	}
	free(copy);
	return rc;
}

static void st_refusals(void)
{
	trail_error e = {0};
	char *file = at("llama-F32/model.safetensors");
	size_t n = 0;
	uint8_t *b = slurp(file, &n);
	ok(b && try_st(b, n, &e) == 0, "a safetensors file to damage (%zu bytes)", n);
	if (!b)
		return;
	size_t hdr = 8 + (size_t)le64(b);
	int all = 1, msgs = 1;
	for (size_t k = 0; k < hdr + 64; k++) {
		trail_error_clear(&e);
		all &= try_st(b, k, &e) == TRAIL_EDATA;
		msgs &= e.msg[0] != 0;
	}
	trail_error_clear(&e);
	int last = try_st(b, n - 4, &e);
	ok(all && msgs && last == TRAIL_EDATA && strstr(e.msg, "truncated"),
	   "truncated at each of the %zu header bytes and in the data: refused with a message (%s)", hdr + 64, e.msg);
	long refused = 0, read = 0, silent = 0;
	uint8_t *m = malloc(n);
	for (size_t k = 0; k < hdr; k++)
		for (int f = 0; f < 3; f++) {
			memcpy(m, b, n);
			m[k] = f == 0 ? (uint8_t)~m[k] : f == 1 ? (uint8_t)(m[k] + 1) : (uint8_t)'9';
			trail_error_clear(&e);
			if (try_st(m, n, &e))
				refused++, silent += !e.msg[0];
			else
				read++;
		}
	ok(silent == 0 && refused > 0, "%ld mutations of the header: %ld refused with a message, %ld read within bounds",
	   refused + read, refused, read);
	/* named fields: the header length, a dtype, a shape, the offsets */
	struct {
		const char *what, *from, *to, *msg;
	} cases[] = {
		{"a dtype F16 for F32 data", "\"dtype\":\"F32\"", "\"dtype\":\"F16\"", "do not hold its shape"},
		{"an unknown dtype", "\"dtype\":\"F32\"", "\"dtype\":\"F31\"", "bad entry"},
		{"a shape with a larger product", "\"shape\":[96,32]", "\"shape\":[96,33]", "do not hold its shape"},
		{"a negative dimension", "\"shape\":[96,32]", "\"shape\":[-96,32]", "bad entry"},
		{"a shape product past 2^50", "\"shape\":[96,32]", "\"shape\":[1099511627775,1099511627]", "bad entry"},
		{"offsets that start past 0", "\"data_offsets\":[0,", "\"data_offsets\":[4,", "data_offsets"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char *h = malloc(hdr + 64), *p;
		memcpy(h, b + 8, hdr - 8);
		h[hdr - 8] = 0;
		if (!(p = strstr(h, cases[i].from))) {
			ok(0, "%s: %s not in the header", cases[i].what, cases[i].from);
			free(h);
			continue;
		}
		trail_buf o = {0};
		uint8_t len8[8];
		size_t nl = hdr - 8 - strlen(cases[i].from) + strlen(cases[i].to);
		put64(len8, nl);
		trail_buf_put(&o, len8, 8);
		trail_buf_put(&o, h, (size_t)(p - h));
		trail_buf_put(&o, cases[i].to, strlen(cases[i].to));
		trail_buf_put(&o, p + strlen(cases[i].from), hdr - 8 - (size_t)(p - h) - strlen(cases[i].from));
		trail_buf_put(&o, b + hdr, n - hdr);
		trail_error_clear(&e);
		int rc = try_st((const uint8_t *)o.p, o.n, &e);
		ok(rc == TRAIL_EDATA && strstr(e.msg, cases[i].msg), "%s: refused (%s)", cases[i].what, e.msg);
		trail_buf_release(&o);
		free(h);
	}
	memcpy(m, b, n);
	put64(m, 0);
	ok(try_st(m, n, &e) == TRAIL_EDATA && strstr(e.msg, "header length 0"), "a header length of 0: %s", e.msg);
	put64(m, n);
	ok(try_st(m, n, &e) == TRAIL_EDATA && strstr(e.msg, "header length"), "a header length past the file: %s", e.msg);
	put64(m, ~0ull);
	ok(try_st(m, n, &e) == TRAIL_EDATA && strstr(e.msg, "header length"), "a header length of 2^64-1: %s", e.msg);
	/* GGUF version 2 has version 3's layout */
	char *gf = at("qwen2-BF16.gguf");
	size_t gn = 0;
	uint8_t *g = slurp(gf, &gn);
	trail_gguf *g2 = NULL;
	if (g)
		g[4] = 2;
	trail_error_clear(&e);
	ok(g && trail_gguf_parse(g, gn, "v2.gguf", &g2, &e) == 0 && trail_gguf_version(g2) == 2, "a version 2 file reads: %s", e.msg);
	trail_gguf_free(g2);
	free(g);
	trail_free(gf);
	free(m);
	free(b);
	trail_free(file);
}

/* ---- shards ------------------------------------------------------------------------- */

static void write_index(const char *dir, const char *json)
{
	char *p = trail_path(dir, "model.safetensors.index.json");
	trail_write_atomic(p, json, strlen(json), 0644, NULL);
	trail_free(p);
}

static void shards(void)
{
	trail_error e = {0};
	trail_model_cfg c = llama_cfg(TRAIL_ARCH_LLAMA);
	trail_model *m;
	trail_model_init(&c, 5, &m, &e);
	char *one = at("one"), *two = at("two");
	trail_model_save(m, one, &e);
	trail_mkdirs(two, 0755, &e);
	char *cs = trail_path(one, "config.json"), *cd = trail_path(two, "config.json");
	void *cb;
	size_t cl;
	trail_read_file(cs, 1 << 20, &cb, &cl, &e);
	trail_write_atomic(cd, cb, cl, 0644, &e);
	trail_free(cb);
	/* the tensors split in two shards, halves by the order of the arena */
	trail_param v[64];
	size_t n = trail_arch_of(c.arch)->tensors(m, v);
	trail_st_tensor t[64];
	trail_buf ix = {0};
	static const char open[] = "{\"metadata\":{},\"weight_map\":{";
	trail_buf_put(&ix, open, strlen(open));
	for (size_t i = 0; i < n; i++) {
		t[i] = (trail_st_tensor){.name = v[i].name, .data = v[i].data, .ndim = v[i].ndim, .shape = {v[i].shape[0], v[i].shape[1]}};
		char line[160];
		int l = snprintf(line, sizeof line, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"", i ? "," : "", v[i].name,
				 i < n / 2 ? 1 : 2);
		trail_buf_put(&ix, line, (size_t)l);
	}
	trail_buf_put(&ix, "}}", 3);
	char *s1 = trail_path(two, "model-00001-of-00002.safetensors"), *s2 = trail_path(two, "model-00002-of-00002.safetensors");
	ok(trail_st_write(s1, t, n / 2, NULL, &e) == 0 && trail_st_write(s2, t + n / 2, n - n / 2, NULL, &e) == 0,
	   "%zu tensors in two shards", n);
	write_index(two, ix.p);
	size_t n1 = 0, n2 = 0;
	float *f1 = forward(one, &n1, &e), *f2 = forward(two, &n2, &e);
	ok(f1 && f2 && n1 == n2 && !memcmp(f1, f2, n1 * sizeof *f1), "the shards give the one file's logits: %s", e.msg);
	free(f1);
	free(f2);
	trail_infer *im = NULL;
	ok(trail_infer_load(two, &im, &e) == 0, "and load for serving: %s", e.msg);
	trail_infer_free(im);
	char d[72];
	ok(trail_base_digest(two, d, &e) == 0 && !strncmp(d, "sha256:", 7), "their base digest: %s", d);
	/* damaged indexes */
	char *bad = trail_strdup(ix.p), *p;
	struct {
		const char *what, *from, *to, *msg;
	} cases[] = {
		{"a shard outside the directory", "\"model-00002-of-00002.safetensors\"}", "\"../model-00002-of-00002.safetensors\"}",
		 "not a file name in this directory"},
		{"an absolute shard path", "\"model-00002-of-00002.safetensors\"}", "\"/etc/passwd\"}", "not a file name"},
		{"a shard that is not there", "\"model-00002-of-00002.safetensors\"}", "\"model-00003-of-00002.safetensors\"}",
		 "model-00003-of-00002.safetensors"},
		{"a tensor listed for the wrong shard (so in neither or in two)", "\"model-00002-of-00002.safetensors\"}",
		 "\"model-00001-of-00002.safetensors\"}", "is not in its shard"},
		{"a shard name that is not a string", "\"model-00002-of-00002.safetensors\"}", "7}", "not a string"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		strcpy(bad, ix.p);
		p = strstr(bad, cases[i].from);
		char buf[8192];
		snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - bad), bad, cases[i].to, p + strlen(cases[i].from));
		write_index(two, buf);
		trail_model *x = NULL;
		trail_error_clear(&e);
		ok(trail_model_load(two, &x, &e) == TRAIL_EDATA || (e.code == TRAIL_ENOINPUT && strstr(e.msg, cases[i].msg)),
		   "%s: refused (%s)", cases[i].what, e.msg);
		ok(strstr(e.msg, cases[i].msg) != NULL, "and the message says so");
		trail_model_free(x);
	}
	/* a tensor in both shards, and one in a shard the weight_map does not list */
	trail_st_write(s1, t, n / 2 + 1, NULL, &e);
	write_index(two, ix.p);
	trail_model *x = NULL;
	ok(trail_model_load(two, &x, &e) == TRAIL_EDATA && strstr(e.msg, "is in shard model-00002-of-00002.safetensors and in shard model-00001"),
	   "a tensor in both shards: refused (%s)", e.msg);
	strcpy(bad, ix.p);
	p = strstr(bad, "\"model.norm.weight\"");
	memcpy(p, "\"model.norm.weighX\"", 19);
	write_index(two, bad);
	trail_st_write(s1, t, n / 2, NULL, &e);
	ok(trail_model_load(two, &x, &e) == TRAIL_EDATA && strstr(e.msg, "is not in its shard"), "a tensor the shards lack: %s", e.msg);
	strcpy(bad, ix.p);
	p = strstr(bad, ",\"lm_head.weight\"");
	memmove(p, p + strlen(",\"lm_head.weight\":\"model-00002-of-00002.safetensors\""),
		strlen(p + strlen(",\"lm_head.weight\":\"model-00002-of-00002.safetensors\"")) + 1);
	write_index(two, bad);
	ok(trail_model_load(two, &x, &e) == TRAIL_EDATA && strstr(e.msg, "lm_head.weight of shard model-00002-of-00002.safetensors is not in the weight_map"),
	   "a tensor the weight_map does not list: %s", e.msg);
	trail_free(bad);
	trail_buf_release(&ix);
	trail_free(s1);
	trail_free(s2);
	trail_free(cs);
	trail_free(cd);
	trail_free(one);
	trail_free(two);
	trail_model_free(m);
}

/* ---- tokenizers ----------------------------------------------------------------------- */

/* The same tokenizer: every token's bytes and flags, the merges, the pipeline, the ids of the specials. */
static int same_tokenizer(const trail_tokenizer *a, const trail_tokenizer *b, char *why, size_t wn)
{
#define DIFF(cond, ...) do { if (cond) { snprintf(why, wn, __VA_ARGS__); return 0; } } while (0)
	DIFF(a->kind != b->kind || a->n_vocab != b->n_vocab, "kind %d/%d, %zu/%zu tokens", a->kind, b->kind, a->n_vocab, b->n_vocab);
	for (size_t i = 0; i < a->n_vocab; i++)
		DIFF(a->flags[i] != b->flags[i] || a->off[i + 1] - a->off[i] != b->off[i + 1] - b->off[i] ||
			     memcmp(a->text + a->off[i], b->text + b->off[i], a->off[i + 1] - a->off[i]),
		     "token %zu differs", i);
	DIFF(a->n_merges != b->n_merges, "%zu/%zu merges", a->n_merges, b->n_merges);
	for (size_t i = 0; i < a->n_merges; i++)
		DIFF(a->merges[i][0] != b->merges[i][0] || a->merges[i][1] != b->merges[i][1], "merge %zu differs", i);
	DIFF(a->pre != b->pre || a->nfc != b->nfc || a->metaspace != b->metaspace || a->strip_space != b->strip_space ||
		     a->byte_fallback != b->byte_fallback || a->fuse_unk != b->fuse_unk || a->ignore_merges != b->ignore_merges,
	     "the pipeline differs");
	DIFF(a->bos != b->bos || a->eos != b->eos || a->unk != b->unk || a->add_first != b->add_first ||
		     a->add_last != b->add_last || a->eot != b->eot,
	     "bos %d/%d eos %d/%d unk %d/%d add %d,%d/%d,%d", a->bos, b->bos, a->eos, b->eos, a->unk, b->unk, a->add_first,
	     a->add_last, b->add_first, b->add_last);
	DIFF(a->n_added != b->n_added, "%zu/%zu added tokens", a->n_added, b->n_added);
#undef DIFF
	return 1;
}

/* Through a GGUF file of a small Llama model with vocab_size V and back. */
static void tokenizer_route(const char *what, const char *spec, const char *corpus)
{
	trail_error e = {0};
	trail_tokenizer *a = NULL, *b = NULL;
	if (trail_tokenizer_load(spec, &a, &e)) {
		ok(0, "%s: load %s: %s", what, spec, e.msg);
		return;
	}
	trail_model_cfg c = llama_cfg(TRAIL_ARCH_LLAMA);
	c.vocab_size = (int)trail_tokenizer_vocab_size(a) + 3; /* room for llama.cpp's padding tokens */
	c.n_layer = 1, c.untied = 0;
	trail_model *m;
	trail_model_init(&c, 1, &m, &e);
	char fn[96];
	snprintf(fn, sizeof fn, "tok-%s.gguf", what);
	char *file = at(fn);
	int w = trail_gguf_write(file, m, a, TRAIL_GGUF_BF16, &e);
	ok(w == 0, "%s: written with its tokenizer: %s", what, e.msg);
	trail_model_free(m);
	if (w) {
		trail_tokenizer_free(a);
		trail_free(file);
		return;
	}
	char why[160] = "";
	ok(trail_tokenizer_load(file, &b, &e) == 0 && same_tokenizer(a, b, why, sizeof why),
	   "%s: the GGUF file's tokenizer is the tokenizer.json's (%s%s)", what, why, e.msg);
	if (!b) {
		trail_tokenizer_free(a);
		trail_free(file);
		return;
	}
	FILE *f = corpus ? fopen(corpus, "r") : NULL;
	static const char *const own[] = {"Hello world", " leading space", "tabs\tand\nnewlines\r\n", "日本語のテキスト",
					  "<s>special</s> <|begin_of_text|>x<|im_start|>", "naïve café — ok?", ""};
	char line[65536];
	long strings = 0, same = 0;
	size_t k = 0;
	for (;;) {
		const char *s;
		size_t sl;
		json_t *j = NULL;
		if (f) {
			if (!fgets(line, sizeof line, f))
				break;
			j = json_loads(line, JSON_DECODE_ANY, NULL);
			if (!json_is_string(j)) {
				json_decref(j);
				continue;
			}
			s = json_string_value(j), sl = json_string_length(j);
		} else {
			if (k == sizeof own / sizeof *own)
				break;
			s = own[k++], sl = strlen(s);
		}
		for (unsigned fl = 0; fl < 4; fl++) {
			int32_t *ia = NULL, *ib = NULL;
			size_t na = 0, nb = 0;
			int ra = trail_tokenizer_encode_ex(a, s, sl, fl, &ia, &na, NULL),
			    rb = trail_tokenizer_encode_ex(b, s, sl, fl, &ib, &nb, NULL);
			strings++;
			same += ra == rb && na == nb && (!na || !memcmp(ia, ib, na * sizeof *ia));
			trail_free(ia);
			trail_free(ib);
		}
		json_decref(j);
	}
	if (f)
		fclose(f);
	ok(strings > 0 && same == strings, "%s: %ld of %ld encodings (with and without special tokens and BOS/EOS) the same", what,
	   same, strings);
	trail_tokenizer_free(a);
	trail_tokenizer_free(b);
	trail_free(file);
}

/* A Llama-2 GGUF as llama.cpp writes it from tokenizer.model: scores, no merges. */
static void sp_from_scores(void)
{
	trail_error e = {0};
	trail_tok_arrays a = {0};
	static const char *const toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab",
					   "\xe2\x96\x81" "ab", "<0x41>"};
	static const int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1, 6};
	static const float scores[] = {0, 0, 0, -1, -2, -3, -5, -4, -6, 0};
	a.sp = 1, a.n = 10;
	a.tok = trail_calloc(11, sizeof *a.tok), a.type = trail_malloc(sizeof types), a.score = trail_malloc(sizeof scores);
	for (size_t i = 0; i < 10; i++)
		a.tok[i] = trail_strdup(toks[i]);
	memcpy(a.type, types, sizeof types);
	memcpy(a.score, scores, sizeof scores);
	a.bos = 1, a.eos = 2, a.unk = 0, a.add_bos = 1;
	trail_tokenizer *t = NULL;
	int rc = trail_hf_from_arrays(&a, "scores", &t, &e);
	ok(rc == 0 && t->n_merges == 4, "SentencePiece merges from the scores: %zu (%s)", t ? t->n_merges : 0, e.msg);
	/* by score: "ab" (-4) then "▁a" (-5), then "▁ab" (-6) twice: ▁ + ab, ▁a + b */
	if (!rc && t->n_merges == 4)
		ok(t->merges[0][0] == 4 && t->merges[0][1] == 5 && t->merges[1][0] == 3 && t->merges[1][1] == 4 &&
			   t->merges[2][0] == 3 && t->merges[2][1] == 7 && t->merges[3][0] == 6 && t->merges[3][1] == 5,
		   "in Hugging Face's order (by score, then by the pieces' ids)");
	int32_t *ids = NULL;
	size_t n = 0;
	if (!rc && !trail_tokenizer_encode_ex(t, "ab A", 4, TRAIL_TOKENIZE_ADD, &ids, &n, &e))
		ok(n == 4 && ids[0] == 1 && ids[1] == 8 && ids[2] == 3 && ids[3] == 9, "\"ab A\" is <s> ▁ab ▁ <0x41> (%zu ids)", n);
	trail_free(ids);
	trail_tokenizer_free(t);
	trail_tok_arrays_release(&a);
}

int main(void)
{
	trail_init();
	if (!mkdtemp(tmp))
		return 1;
	same_weights("llama", TRAIL_ARCH_LLAMA);
	same_weights("qwen2", TRAIL_ARCH_QWEN2);
	same_weights("mistral", TRAIL_ARCH_MISTRAL);
	refusals();
	st_refusals();
	shards();
	char top[4096];
	const char *tt = getenv("TRAIL_TOP");
	snprintf(top, sizeof top, "%s/tests/data/hf-sp", tt ? tt : ".");
	tokenizer_route("small-sp", top, NULL);
	/* NFC with Llama-3's regex has no GGUF spelling: refused, not lost */
	snprintf(top, sizeof top, "%s/tests/data/hf-bpe", tt ? tt : ".");
	trail_tokenizer *tk;
	trail_error e = {0};
	trail_tok_arrays a;
	ok(trail_tokenizer_load(top, &tk, &e) == 0 && trail_hf_to_arrays(tk, 512, &a, &e) == TRAIL_EUSAGE &&
		   strstr(e.msg, "NFC"),
	   "a tokenizer GGUF cannot hold is refused: %s", e.msg);
	trail_tokenizer_free(tk);
	sp_from_scores();
	const char *list = getenv("TRAIL_GGUF_TOKENIZERS");
	if (list) {
		char *l = trail_strdup(list), *save = NULL;
		for (char *d = strtok_r(l, " ", &save); d; d = strtok_r(NULL, " ", &save)) {
			const char *base = strrchr(d, '/');
			tokenizer_route(base ? base + 1 : d, d, getenv("TRAIL_GGUF_CORPUS"));
		}
		trail_free(l);
	}
	char cmd[128];
	snprintf(cmd, sizeof cmd, "%s %s", getenv("TRAIL_GGUF_KEEP") ? "echo" : "rm -rf", tmp);
	if (system(cmd))
		diag("could not remove %s", tmp);
	return tap_done();
}
