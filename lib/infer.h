/*
 * Inference for serving: a base model held for decoding, LoRA adapters'
 * weights, a KV cache per sequence, and one batched step over rows of many
 * sequences and adapters — each base weight one sgemm over all rows, each
 * adapter's low-rank product over its own rows, gathered (the CPU form of
 * Punica's SGMV). Products run in fixed-height row blocks, so a row's
 * result does not depend on the other rows of the batch.
 *
 * Ownership: each handle owns its memory; *_free(NULL) is a no-op.
 */
#ifndef TRAIL_INFER_H
#define TRAIL_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct trail_infer trail_infer;

/* config.json + model.safetensors from a model directory (GPT-2 names, with or without "transformer."). */
int trail_infer_load(const char *dir, trail_infer **out, trail_error *err);
void trail_infer_free(trail_infer *m);
const trail_gpt2_config *trail_infer_config(const trail_infer *m);

typedef struct trail_lora_w trail_lora_w;
/* A PEFT adapter directory for this base; TRAIL_EDATA if its tensors do not fit. */
int trail_lora_w_load(const trail_infer *m, const char *dir, trail_lora_w **out, trail_error *err);
void trail_lora_w_free(trail_lora_w *w);
size_t trail_lora_w_bytes(const trail_lora_w *w);

typedef struct trail_kvc trail_kvc; /* [n_layer][2][n_positions][n_embd] floats */
trail_kvc *trail_kvc_new(const trail_infer *m);
void trail_kvc_free(trail_kvc *kv);

/*
 * One step over n rows: row i feeds token tok[i] at position pos[i] of the
 * sequence cached in kv[i], through adapter lora[i] (NULL: the base). Rows
 * of one sequence may come together (prefill), in position order.
 * logits [n,V] (NULL: only fill the caches).
 */
int trail_infer_step(trail_infer *m, int n, const int32_t *tok, const int *pos, trail_kvc *const *kv,
		     const trail_lora_w *const *lora, float *logits, trail_error *err);

#endif
