/*
 * Writing GGUF (see gguf.c for the layout): a Llama-family base with its
 * tokenizer arrays, or a LoRA adapter as llama.cpp reads one.
 *
 * A base: the metadata llama.cpp's converter writes for architectures
 * "llama" and "qwen2", the tensors under its names, the rows of q and k
 * reordered for its rotary embedding (architecture "llama"); with llama3
 * rope scaling, rope_freqs.weight [head_dim/2] holds the divisor of each
 * rotary frequency, as llama.cpp computes it, and trail.rope.* the
 * rope_scaling parameters it came from, so that reading gives them back.
 *
 * An adapter: general.type "adapter", adapter.type "lora",
 * adapter.lora.alpha (llama.cpp scales by alpha / r, so rsLoRA's
 * alpha / sqrt r is written as alpha sqrt r), the base's architecture
 * metadata, and for each adapted weight W its ".lora_a" (PEFT's lora_A
 * [r,in], ne [in,r]) and ".lora_b" (lora_B [out,r], ne [r,out]); the rows
 * of lora_b for q and k reordered as the base's rows are, since
 * P (B A) = (P B) A.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

/* GGUF's value types (the ones written) */
enum { VT_U32 = 4, VT_I32 = 5, VT_F32 = 6, VT_BOOL = 7, VT_STR = 8, VT_ARR = 9 };

typedef struct wr {
	trail_buf b;
	int oom;
	uint64_t nkv;
} wr;

static void put(wr *w, const void *p, size_t n)
{
	if (!w->oom && trail_buf_put(&w->b, p, n))
		w->oom = 1;
}

static void put_le(wr *w, uint64_t v, unsigned n)
{
	uint8_t b[8];
	for (unsigned i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, n);
}

static void put_str(wr *w, const char *s, size_t n)
{
	put_le(w, n, 8);
	put(w, s, n);
}

static void key(wr *w, const char *k, uint32_t type)
{
	put_str(w, k, strlen(k));
	put_le(w, type, 4);
	w->nkv++;
}

static void kv_u32(wr *w, const char *k, uint32_t v)
{
	key(w, k, VT_U32);
	put_le(w, v, 4);
}

static void kv_f32(wr *w, const char *k, double v)
{
	float f = (float)v;
	uint32_t u;
	memcpy(&u, &f, 4);
	key(w, k, VT_F32);
	put_le(w, u, 4);
}

static void kv_s(wr *w, const char *k, const char *v)
{
	key(w, k, VT_STR);
	put_str(w, v, strlen(v));
}

static void kv_b(wr *w, const char *k, int v)
{
	key(w, k, VT_BOOL);
	put_le(w, v ? 1 : 0, 1);
}

static void kv_arr(wr *w, const char *k, uint32_t at, size_t n)
{
	key(w, k, VT_ARR);
	put_le(w, at, 4);
	put_le(w, n, 8);
}

typedef struct wten {
	char name[112];
	const float *src;
	uint64_t ne[2];
	uint32_t nd, type;
	int qk_heads; /* > 0: reorder rows for llama.cpp's rotary embedding, heads of ne[1] / qk_heads */
	uint64_t off, size;
} wten;

static uint64_t tensor_bytes(const wten *t)
{
	uint64_t n = t->ne[0] * (t->nd > 1 ? t->ne[1] : 1);
	return t->type == TRAIL_GGUF_F32 ? 4 * n : t->type == TRAIL_GGUF_Q8_0 ? n / 32 * 34 : 2 * n;
}

static void put_row(wr *w, const float *x, uint64_t n, uint32_t type)
{
	if (type == TRAIL_GGUF_F32) {
		for (uint64_t i = 0; i < n; i++) {
			uint32_t u;
			memcpy(&u, &x[i], 4);
			put_le(w, u, 4);
		}
	} else if (type == TRAIL_GGUF_F16 || type == TRAIL_GGUF_BF16) {
		for (uint64_t i = 0; i < n; i++)
			put_le(w, type == TRAIL_GGUF_F16 ? trail_gguf_to_half(x[i]) : trail_gguf_to_bf16(x[i]), 2);
	} else { /* Q8_0: d = max |x| / 127, q = round(x / d), as llama.cpp's reference quantiser */
		for (uint64_t b = 0; b < n / 32; b++) {
			const float *v = x + 32 * b;
			float amax = 0;
			for (int j = 0; j < 32; j++)
				amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax;
			float d = amax / 127, id = d ? 1 / d : 0;
			uint8_t q[34];
			uint16_t dh = trail_gguf_to_half(d);
			q[0] = (uint8_t)dh, q[1] = (uint8_t)(dh >> 8);
			for (int j = 0; j < 32; j++)
				q[2 + j] = (uint8_t)(int8_t)roundf(v[j] * id);
			put(w, q, 34);
		}
	}
}

/* A matrix or vector of type (norms and biases stay F32, as llama.cpp keeps them; Q8_0 needs rows of whole blocks). */
static void set_tensor(wten *x, const float *src, uint64_t rows, uint64_t cols, int nd, int type, int qk_heads)
{
	x->src = src;
	x->nd = (uint32_t)nd;
	x->ne[0] = cols;
	x->ne[1] = nd > 1 ? rows : 1;
	x->type = nd == 1 ? TRAIL_GGUF_F32 : (uint32_t)type;
	if (x->type == TRAIL_GGUF_Q8_0 && x->ne[0] % 32)
		x->type = TRAIL_GGUF_F16;
	x->qk_heads = qk_heads;
}

/* The heads whose rows llama.cpp reorders for the GGUF tensor name (attn_q, attn_k and their lora_b), else 0. */
static int qk_heads_of(const trail_model_cfg *c, const char *name)
{
	if (c->arch == TRAIL_ARCH_QWEN2)
		return 0;
	const char *p = strstr(name, ".attn_q.weight");
	if (p && (!strcmp(p, ".attn_q.weight") || !strcmp(p, ".attn_q.weight.lora_b")))
		return c->n_head;
	p = strstr(name, ".attn_k.weight");
	if (p && (!strcmp(p, ".attn_k.weight") || !strcmp(p, ".attn_k.weight.lora_b")))
		return c->n_kv_head;
	return 0;
}

static int check_cfg(const trail_model_cfg *c, int type, trail_error *err)
{
	if (type != TRAIL_GGUF_F32 && type != TRAIL_GGUF_F16 && type != TRAIL_GGUF_BF16 && type != TRAIL_GGUF_Q8_0)
		return trail_error_set(err, TRAIL_EUSAGE, "GGUF tensor type %d (F32, F16, BF16 or Q8_0)", type);
	if (c->arch == TRAIL_ARCH_GPT2)
		return trail_error_set(err, TRAIL_EUSAGE, "GGUF: only the Llama family is written (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)");
	return TRAIL_OK;
}

/* The file: metadata (alpha: an adapter's, NULL for a base), the tokenizer arrays (NULL: none), the tensors. */
static int write_file(const char *path, const trail_model_cfg *c, wten *t, size_t nt, const trail_tok_arrays *tk,
		      int type, const double *alpha, trail_error *err)
{
	wr w = {0};
	const char *arch = c->arch == TRAIL_ARCH_QWEN2 ? "qwen2" : "llama";
	uint64_t off = 0;
	for (size_t i = 0; i < nt; i++) {
		t[i].off = off;
		t[i].size = tensor_bytes(&t[i]);
		off += (t[i].size + 31) / 32 * 32;
	}
	put(&w, "GGUF", 4);
	put_le(&w, 3, 4);
	put_le(&w, nt, 8);
	size_t nkv_at = w.b.n;
	put_le(&w, 0, 8); /* the key count, filled in at the end */
	char k[96];
#define AK(s) (snprintf(k, sizeof k, "%s." s, arch), k)
	kv_s(&w, "general.architecture", arch);
	if (alpha) {
		kv_s(&w, "general.type", "adapter");
		kv_s(&w, "adapter.type", "lora");
		kv_f32(&w, "adapter.lora.alpha", *alpha);
	}
	kv_s(&w, "general.name", "trail");
	kv_u32(&w, "general.file_type", type == TRAIL_GGUF_F32 ? 0 : type == TRAIL_GGUF_F16 ? 1 : type == TRAIL_GGUF_Q8_0 ? 7 : 32);
	kv_u32(&w, "general.quantization_version", 2);
	kv_u32(&w, AK("context_length"), (uint32_t)c->n_positions);
	kv_u32(&w, AK("embedding_length"), (uint32_t)c->n_embd);
	kv_u32(&w, AK("block_count"), (uint32_t)c->n_layer);
	kv_u32(&w, AK("feed_forward_length"), (uint32_t)c->n_inner);
	kv_u32(&w, AK("rope.dimension_count"), (uint32_t)c->head_dim);
	kv_u32(&w, AK("attention.head_count"), (uint32_t)c->n_head);
	kv_u32(&w, AK("attention.head_count_kv"), (uint32_t)c->n_kv_head);
	if (c->head_dim * c->n_head != c->n_embd) {
		kv_u32(&w, AK("attention.key_length"), (uint32_t)c->head_dim);
		kv_u32(&w, AK("attention.value_length"), (uint32_t)c->head_dim);
	}
	kv_f32(&w, AK("rope.freq_base"), c->rope_theta);
	kv_f32(&w, AK("attention.layer_norm_rms_epsilon"), c->norm_eps);
	kv_u32(&w, AK("vocab_size"), (uint32_t)c->vocab_size);
	if (c->rope_type == TRAIL_ROPE_LINEAR) {
		kv_s(&w, AK("rope.scaling.type"), "linear");
		kv_f32(&w, AK("rope.scaling.factor"), c->rope_factor);
	}
#undef AK
	if (c->rope_type == TRAIL_ROPE_LLAMA3) { /* llama.cpp reads rope_freqs.weight; these are for reading it back */
		kv_f32(&w, "trail.rope.llama3.factor", c->rope_factor);
		kv_f32(&w, "trail.rope.llama3.low_freq_factor", c->rope_low);
		kv_f32(&w, "trail.rope.llama3.high_freq_factor", c->rope_high);
		kv_u32(&w, "trail.rope.llama3.original_max_position_embeddings", (uint32_t)c->rope_orig);
	}
	if (tk) {
		const trail_tok_arrays a = *tk;
		kv_s(&w, "tokenizer.ggml.model", a.sp ? "llama" : "gpt2");
		if (!a.sp)
			kv_s(&w, "tokenizer.ggml.pre", a.pre);
		kv_arr(&w, "tokenizer.ggml.tokens", VT_STR, a.n);
		for (size_t i = 0; i < a.n; i++)
			put_str(&w, a.tok[i], strlen(a.tok[i]));
		kv_arr(&w, "tokenizer.ggml.token_type", VT_I32, a.n);
		for (size_t i = 0; i < a.n; i++)
			put_le(&w, (uint32_t)a.type[i], 4);
		if (a.score) {
			kv_arr(&w, "tokenizer.ggml.scores", VT_F32, a.n);
			for (size_t i = 0; i < a.n; i++) {
				uint32_t u;
				memcpy(&u, &a.score[i], 4);
				put_le(&w, u, 4);
			}
		}
		if (a.n_merges) {
			kv_arr(&w, "tokenizer.ggml.merges", VT_STR, a.n_merges);
			for (size_t i = 0; i < a.n_merges; i++)
				put_str(&w, a.merge[i], strlen(a.merge[i]));
		}
		if (a.bos >= 0)
			kv_u32(&w, "tokenizer.ggml.bos_token_id", (uint32_t)a.bos);
		if (a.eos >= 0)
			kv_u32(&w, "tokenizer.ggml.eos_token_id", (uint32_t)a.eos);
		if (a.unk >= 0)
			kv_u32(&w, "tokenizer.ggml.unknown_token_id", (uint32_t)a.unk);
		kv_b(&w, "tokenizer.ggml.add_bos_token", a.add_bos);
		kv_b(&w, "tokenizer.ggml.add_eos_token", a.add_eos);
		if (a.chat_template)
			kv_s(&w, "tokenizer.chat_template", a.chat_template);
	}
	for (size_t i = 0; i < nt; i++) {
		put_str(&w, t[i].name, strlen(t[i].name));
		put_le(&w, t[i].nd, 4);
		for (uint32_t d = 0; d < t[i].nd; d++)
			put_le(&w, t[i].ne[d], 8);
		put_le(&w, t[i].type, 4);
		put_le(&w, t[i].off, 8);
	}
	while (!w.oom && w.b.n % 32)
		put(&w, "", 1);
	for (size_t i = 0; i < nt; i++) {
		const wten *x = &t[i];
		for (uint64_t r = 0; r < x->ne[1]; r++) {
			uint64_t src = r;
			if (x->qk_heads > 0) { /* file row h*hd + 2k + s is checkpoint row h*hd + s*hd/2 + k */
				uint64_t hd = x->ne[1] / (uint64_t)x->qk_heads, h = r / hd, q = r % hd;
				src = h * hd + (q % 2) * (hd / 2) + q / 2;
			}
			put_row(&w, x->src + src * x->ne[0], x->ne[0], x->type);
		}
		while (!w.oom && i + 1 < nt && w.b.n % 32)
			put(&w, "", 1);
	}
	int rc;
	if (w.oom) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	} else {
		for (int i = 0; i < 8; i++)
			w.b.p[nkv_at + (size_t)i] = (char)(w.nkv >> (8 * i));
		rc = trail_write_atomic(path, w.b.p, w.b.n, 0644, err);
	}
	trail_buf_release(&w.b);
	return rc;
}

int trail_gguf_write_tensors(const char *path, const trail_model_cfg *c, const trail_param *v, size_t nt,
			     const trail_tok_arrays *tk, int type, trail_error *err)
{
	int rc = check_cfg(c, type, err);
	if (rc)
		return rc;
	int freqs = c->rope_type == TRAIL_ROPE_LLAMA3;
	wten *t = trail_calloc(nt + 1, sizeof *t);
	float *ff = freqs ? trail_malloc((size_t)(c->head_dim / 2) * sizeof *ff) : NULL;
	if (!t || (freqs && !ff)) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	size_t n = 0;
	if (freqs) { /* first, where llama.cpp's converter puts it */
		trail_rope_freq_factors(c, ff);
		snprintf(t[0].name, sizeof t[0].name, "rope_freqs.weight");
		set_tensor(&t[n++], ff, 1, (uint64_t)(c->head_dim / 2), 1, TRAIL_GGUF_F32, 0);
	}
	for (size_t i = 0; i < nt; i++, n++) {
		wten *x = &t[n];
		if (!trail_gguf_name(v[i].name, x->name, sizeof x->name)) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "GGUF: no name for tensor %s", v[i].name);
			goto out;
		}
		set_tensor(x, v[i].data, v[i].ndim > 1 ? (uint64_t)v[i].shape[0] : 1, (uint64_t)v[i].shape[v[i].ndim - 1],
			   v[i].ndim, type, qk_heads_of(c, x->name));
	}
	rc = write_file(path, c, t, n, tk, type, NULL, err);
out:
	trail_free(ff);
	trail_free(t);
	return rc;
}

int trail_gguf_write_lora(const char *path, const trail_model_cfg *c, const trail_gguf_lora *l, size_t nl,
			  double alpha, int type, trail_error *err)
{
	int rc = check_cfg(c, type, err);
	if (rc)
		return rc;
	if (!nl)
		return trail_error_set(err, TRAIL_EUSAGE, "GGUF: the adapter has no LoRA layers");
	wten *t = trail_calloc(2 * nl, sizeof *t);
	if (!t)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t i = 0; i < nl; i++) {
		char g[96];
		if (!trail_gguf_name(l[i].name, g, sizeof g)) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "GGUF: no name for tensor %s", l[i].name);
			goto out;
		}
		snprintf(t[2 * i].name, sizeof t[2 * i].name, "%s.lora_a", g);
		snprintf(t[2 * i + 1].name, sizeof t[2 * i + 1].name, "%s.lora_b", g);
		set_tensor(&t[2 * i], l[i].A, (uint64_t)l[i].r, (uint64_t)l[i].in, 2, type, 0);
		set_tensor(&t[2 * i + 1], l[i].B, (uint64_t)l[i].out, (uint64_t)l[i].r, 2, type, qk_heads_of(c, t[2 * i + 1].name));
	}
	rc = write_file(path, c, t, 2 * nl, NULL, type, &alpha, err);
out:
	trail_free(t);
	return rc;
}
