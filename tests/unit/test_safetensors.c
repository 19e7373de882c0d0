/*
 * safetensors: the writer's exact layout and determinism, reading F32, F16
 * (normal, subnormal, infinite, signed zero) and BF16, and clean TRAIL_EDATA
 * for every damaged file: each truncation, a bad header length, overlapping
 * or gapped offsets, a wrong byte count, an unknown dtype, a shape that
 * disagrees. Then GPT-2 checkpoints as Hugging Face writes them: the
 * "transformer." prefix, lm_head and the attention-mask buffers, unknown
 * tensors, and config and weights that disagree.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "tap.h"

static char dir[] = "/tmp/trail-st-XXXXXX";

static char *at(const char *name)
{
	return trail_path(dir, name);
}

/* A file from a header (padded to 8 with spaces) and raw data bytes. */
static void raw(const char *name, const char *header, const void *data, size_t n)
{
	char *p = at(name);
	size_t hl = strlen(header), pad = (8 - hl % 8) % 8;
	FILE *f = fopen(p, "wb");
	uint64_t len = hl + pad;
	uint8_t l8[8];
	for (int i = 0; i < 8; i++)
		l8[i] = (uint8_t)(len >> (8 * i));
	fwrite(l8, 1, 8, f);
	fwrite(header, 1, hl, f);
	fwrite("        ", 1, pad, f);
	fwrite(data, 1, n, f);
	fclose(f);
	trail_free(p);
}

static int open_rc(const char *name, trail_error *e)
{
	trail_st *st;
	char *p = at(name);
	int rc = trail_st_open(p, &st, e);
	trail_st_free(st);
	trail_free(p);
	return rc;
}

static void test_write(void)
{
	trail_error e = {0};
	float a[6] = {1, -2, 3.5f, 0, 1e-30f, -1e30f}, b[3] = {7, 8, 9};
	trail_st_tensor t[2] = {{.name = "z.weight", .shape = {2, 3}, .ndim = 2, .data = a},
				{.name = "a.bias", .shape = {3}, .ndim = 1, .data = b}};
	char *p1 = at("w1.safetensors"), *p2 = at("w2.safetensors");
	json_t *meta = json_pack("{s:s}", "format", "pt");
	ok(trail_st_write(p1, t, 2, meta, &e) == 0, "write two tensors: %s", e.msg);
	trail_st_tensor r[2] = {t[1], t[0]};
	trail_st_write(p2, r, 2, meta, &e);
	void *b1, *b2;
	size_t l1, l2;
	trail_read_file(p1, 0, &b1, &l1, &e);
	trail_read_file(p2, 0, &b2, &l2, &e);
	ok(l1 == l2 && !memcmp(b1, b2, l1), "the same tensors in another order give the same bytes");
	uint64_t hl = 0;
	for (int i = 7; i >= 0; i--)
		hl = hl << 8 | ((uint8_t *)b1)[i];
	const char *h = (char *)b1 + 8;
	ok(hl % 8 == 0 && l1 == 8 + hl + 9 * 4 && strstr(h, "\"a.bias\":{\"data_offsets\":[0,12],\"dtype\":\"F32\",\"shape\":[3]}") &&
	       strstr(h, "\"z.weight\":{\"data_offsets\":[12,36],\"dtype\":\"F32\",\"shape\":[2,3]}") &&
	       strstr(h, "\"__metadata__\":{\"format\":\"pt\"}"),
	   "header: names sorted, offsets contiguous, padded to 8 bytes, metadata kept");
	trail_st *st;
	float got[6];
	int64_t sh[2] = {2, 3};
	ok(trail_st_open(p1, &st, &e) == 0 && trail_st_count(st) == 2 && trail_st_has(st, "z.weight") &&
	       !trail_st_has(st, "__metadata__") && trail_st_read_f32(st, "z.weight", sh, 2, got, &e) == 0 &&
	       !memcmp(got, a, sizeof a) && !strcmp(json_string_value(json_object_get(trail_st_metadata(st), "format")), "pt"),
	   "read back: count, names, values and metadata");
	int64_t bad[2] = {3, 2};
	ok(trail_st_read_f32(st, "z.weight", bad, 2, got, &e) == TRAIL_EDATA && strstr(e.msg, "shape"),
	   "a shape that disagrees: %s", e.msg);
	ok(trail_st_read_f32(st, "nothing", sh, 2, got, &e) == TRAIL_EDATA && strstr(e.msg, "missing"), "a missing tensor: %s",
	   e.msg);
	trail_st_free(st);
	/* every truncation is refused cleanly */
	int clean = 1;
	for (size_t n = 0; n < l1; n++) {
		char *p = at("cut.safetensors");
		trail_write_atomic(p, b1, n, 0644, &e);
		trail_free(p);
		clean &= open_rc("cut.safetensors", &e) == TRAIL_EDATA;
	}
	ok(clean, "each of the %zu truncations is TRAIL_EDATA", l1);
	char *p = at("long.safetensors");
	memcpy((char *)b1 + l1, "x", 1); /* trail_read_file leaves room for a NUL */
	trail_write_atomic(p, b1, l1 + 1, 0644, &e);
	trail_free(p);
	ok(open_rc("long.safetensors", &e) == TRAIL_EDATA && strstr(e.msg, "trailing"), "a trailing byte: %s", e.msg);
	ok(open_rc("absent.safetensors", &e) == TRAIL_ENOINPUT, "a missing file is TRAIL_ENOINPUT");
	trail_free(b1), trail_free(b2), trail_free(p1), trail_free(p2);
	json_decref(meta);
}

static void test_dtypes(void)
{
	trail_error e = {0};
	trail_st *st;
	/* F16: 1, -2, 65504, smallest subnormal, largest subnormal, -0, inf, -inf */
	uint16_t h[8] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x8000, 0x7c00, 0xfc00};
	/* BF16: the top halves of 1, -3.5, 1e-30, 3e38 */
	float src[4] = {1, -3.5f, 1e-30f, 3e38f};
	uint16_t bf[4];
	for (int i = 0; i < 4; i++) {
		uint32_t u;
		memcpy(&u, &src[i], 4);
		bf[i] = (uint16_t)(u >> 16);
	}
	uint8_t data[24];
	for (int i = 0; i < 8; i++)
		data[2 * i] = (uint8_t)h[i], data[2 * i + 1] = (uint8_t)(h[i] >> 8);
	for (int i = 0; i < 4; i++)
		data[16 + 2 * i] = (uint8_t)bf[i], data[17 + 2 * i] = (uint8_t)(bf[i] >> 8);
	raw("half.safetensors",
	    "{\"h\":{\"dtype\":\"F16\",\"shape\":[2,4],\"data_offsets\":[0,16]},"
	    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}",
	    data, 24);
	char *p = at("half.safetensors");
	float f[8], g[4];
	int64_t s8[2] = {2, 4}, s4[1] = {4};
	ok(trail_st_open(p, &st, &e) == 0 && trail_st_read_f32(st, "h", s8, 2, f, &e) == 0 &&
	       trail_st_read_f32(st, "b", s4, 1, g, &e) == 0,
	   "open and read F16 and BF16: %s", e.msg);
	ok(f[0] == 1 && f[1] == -2 && f[2] == 65504 && f[3] == ldexpf(1, -24) && f[4] == ldexpf(1023, -24) && f[5] == 0 &&
	       signbit(f[5]) && isinf(f[6]) && f[6] > 0 && isinf(f[7]) && f[7] < 0,
	   "F16: normal, subnormal, signed zero, infinities exact");
	int bok = 1;
	for (int i = 0; i < 4; i++) {
		uint32_t u;
		memcpy(&u, &g[i], 4);
		bok &= u == (uint32_t)bf[i] << 16;
	}
	ok(bok, "BF16: exact (the upper half of a float)");
	trail_st_free(st);
	trail_free(p);
	uint8_t z[8] = {0};
	raw("i64.safetensors", "{\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", z, 8);
	p = at("i64.safetensors");
	int64_t s1[1] = {1};
	ok(trail_st_open(p, &st, &e) == 0 && trail_st_read_f32(st, "i", s1, 1, f, &e) == TRAIL_EDATA &&
	       strstr(e.msg, "not supported"),
	   "an I64 tensor opens but is not read as weights: %s", e.msg);
	trail_st_free(st);
	trail_free(p);
}

static void test_damaged(void)
{
	trail_error e = {0};
	uint8_t z[64] = {0};
	static const struct {
		const char *header, *want;
		size_t n;
	} c[] = {
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", "overlaps", 12},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", "gap", 12},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "do not hold", 8},
		{"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", "bad entry", 8},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "bad entry", 8},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "bad entry", 8},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "truncated", 8},
		{"{\"__metadata__\":{\"n\":1}}", "__metadata__", 0},
		{"[1,2]", "not a JSON object", 0},
		{"{\"a\":", "", 0},
	};
	int all = 1;
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		raw("bad.safetensors", c[i].header, z, c[i].n);
		int rc = open_rc("bad.safetensors", &e);
		if (rc != TRAIL_EDATA || !strstr(e.msg, c[i].want)) {
			diag("case %zu: rc %d: %s", i, rc, e.msg);
			all = 0;
		}
	}
	ok(all, "overlap, gap, wrong byte count, unknown dtype, negative shape, bad offsets, truncation, bad metadata, "
		"a header that is no object or no JSON: each TRAIL_EDATA with its reason");
	/* a header length beyond the file */
	char *p = at("hl.safetensors");
	uint8_t b[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
	trail_write_atomic(p, b, 16, 0644, &e);
	trail_free(p);
	ok(open_rc("hl.safetensors", &e) == TRAIL_EDATA && strstr(e.msg, "header length"), "a header length beyond the file: %s",
	   e.msg);
}

/* Write the model of `c` under HF's names: prefixed, with lm_head and mask buffers. */
static void test_hf_names(void)
{
	trail_error e = {0};
	trail_model_cfg c = {.n_layer = 2, .n_head = 2, .n_embd = 8, .n_positions = 6, .vocab_size = 20};
	trail_model *m, *m2;
	trail_model_init(&c, 5, &m, &e);
	char *md = at("plain");
	trail_model_save(m, md, &e);
	/* rewrite with "transformer." names plus the extras */
	char *wp = trail_path(md, "model.safetensors");
	trail_st *st;
	trail_st_open(wp, &st, &e);
	size_t n = trail_st_count(st);
	trail_st_tensor *t = calloc(n + 4, sizeof *t);
	char (*names)[80] = calloc(n + 4, sizeof *names);
	float **bufs = calloc(n + 4, sizeof *bufs);
	size_t wte = 0;
	for (size_t i = 0; i < n; i++) {
		const char *nm = trail_st_name(st, i);
		snprintf(names[i], sizeof names[i], "transformer.%s", nm);
		int64_t sh[2] = {1, 1};
		int nd = 1;
		size_t cnt = 1;
		/* shapes from the config */
		if (!strcmp(nm, "wte.weight"))
			sh[0] = 20, sh[1] = 8, nd = 2, wte = i;
		else if (!strcmp(nm, "wpe.weight"))
			sh[0] = 6, sh[1] = 8, nd = 2;
		else if (strstr(nm, "c_attn.weight"))
			sh[0] = 8, sh[1] = 24, nd = 2;
		else if (strstr(nm, "attn.c_proj.weight"))
			sh[0] = 8, sh[1] = 8, nd = 2;
		else if (strstr(nm, "c_fc.weight"))
			sh[0] = 8, sh[1] = 32, nd = 2;
		else if (strstr(nm, "mlp.c_proj.weight"))
			sh[0] = 32, sh[1] = 8, nd = 2;
		else if (strstr(nm, "c_attn.bias"))
			sh[0] = 24;
		else if (strstr(nm, "c_fc.bias"))
			sh[0] = 32;
		else
			sh[0] = 8;
		cnt = (size_t)sh[0] * (nd == 2 ? (size_t)sh[1] : 1);
		bufs[i] = malloc(cnt * sizeof(float));
		trail_st_read_f32(st, nm, sh, nd, bufs[i], &e);
		t[i] = (trail_st_tensor){.name = names[i], .ndim = nd, .shape = {sh[0], sh[1]}, .data = bufs[i]};
	}
	static float mask[36];
	snprintf(names[n], 80, "transformer.h.0.attn.bias");
	t[n] = (trail_st_tensor){.name = names[n], .ndim = 2, .shape = {6, 6}, .data = mask};
	snprintf(names[n + 1], 80, "transformer.h.1.attn.masked_bias");
	t[n + 1] = (trail_st_tensor){.name = names[n + 1], .ndim = 1, .shape = {1}, .data = mask};
	snprintf(names[n + 2], 80, "lm_head.weight");
	t[n + 2] = (trail_st_tensor){.name = names[n + 2], .ndim = 2, .shape = {20, 8}, .data = bufs[wte]};
	trail_st_free(st);
	char *hd = at("hf");
	trail_mkdirs(hd, 0755, &e);
	char *hw = trail_path(hd, "model.safetensors"), *hc = trail_path(hd, "config.json");
	trail_st_write(hw, t, n + 3, NULL, &e);
	json_t *cj = json_pack("{s:i, s:i, s:i, s:i, s:i, s:s}", "n_layer", 2, "n_head", 2, "n_embd", 8, "n_ctx", 6, "vocab_size",
			       20, "activation_function", "gelu_new");
	json_dump_file(cj, hc, 0);
	int32_t tok[6] = {1, 5, 19, 0, 3, 3};
	float l1, l2;
	ok(trail_model_load(hd, &m2, &e) == 0, "Hugging Face names (transformer., lm_head, attention-mask buffers, n_ctx): %s",
	   e.msg);
	trail_model_forward(m, tok, NULL, 1, 6, &l1, &e);
	trail_model_forward(m2, tok, NULL, 1, 6, &l2, &e);
	ok(!memcmp(trail_model_logits(m), trail_model_logits(m2), 6 * 20 * sizeof(float)), "and the same logits");
	trail_model_free(m2);
	ok(trail_model_load(hw, &m2, &e) == 0, "the weights file path loads too (config.json beside it)");
	trail_model_free(m2);
	/* an unknown tensor */
	snprintf(names[n + 3], 80, "transformer.h.0.mlp.gate.weight");
	t[n + 3] = (trail_st_tensor){.name = names[n + 3], .ndim = 1, .shape = {1}, .data = mask};
	trail_st_write(hw, t, n + 4, NULL, &e);
	ok(trail_model_load(hd, &m2, &e) == TRAIL_EDATA && strstr(e.msg, "unknown tensor transformer.h.0.mlp.gate.weight"),
	   "an unknown tensor: %s", e.msg);
	/* config and weights that disagree */
	trail_st_write(hw, t, n + 3, NULL, &e);
	json_object_set_new(cj, "n_embd", json_integer(16));
	json_dump_file(cj, hc, 0);
	ok(trail_model_load(hd, &m2, &e) == TRAIL_EDATA && strstr(e.msg, "shape"), "config and weights that disagree: %s",
	   e.msg);
	json_object_set_new(cj, "n_embd", json_integer(7));
	json_dump_file(cj, hc, 0);
	ok(trail_model_load(hd, &m2, &e) == TRAIL_EDATA && strstr(e.msg, "multiple"), "n_embd not a multiple of n_head: %s",
	   e.msg);
	json_object_set_new(cj, "n_embd", json_integer(8));
	json_object_set_new(cj, "activation_function", json_string("relu"));
	json_dump_file(cj, hc, 0);
	ok(trail_model_load(hd, &m2, &e) == TRAIL_EDATA && strstr(e.msg, "activation"), "another activation: %s", e.msg);
	char *nd = at("nowhere");
	ok(trail_model_load(nd, &m2, &e) == TRAIL_ENOINPUT, "a missing model is TRAIL_ENOINPUT");
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
	free(bufs), free(t), free(names);
	json_decref(cj);
	trail_free(nd), trail_free(md), trail_free(wp), trail_free(hd), trail_free(hw), trail_free(hc);
	trail_model_free(m);
}

int main(void)
{
	trail_init();
	if (!mkdtemp(dir))
		return 70;
	test_write();
	test_dtypes();
	test_damaged();
	test_hf_names();
	char cmd[64];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	return tap_done();
}
