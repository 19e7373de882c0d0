/*
 * Serving one base model with many LoRA adapters: request validation, an
 * adapter registry with an LRU cache bounded in bytes, continuous batching
 * (each step mixes new requests' prompts and running requests' next
 * tokens, for any adapters, in one trail_model_step), seeded sampling, stop
 * strings, and the inference event attr-score consumes.
 *
 * Ownership: the server owns its model, tokenizer, adapters and caches.
 */
#ifndef TRAIL_SERVE_H
#define TRAIL_SERVE_H

#include <stdio.h>

#include "store.h"
#include "trail.h"

typedef struct trail_serve_opts {
	const char *base;      /* base model directory */
	const char *adapters;  /* directory of PEFT adapter directories, or NULL */
	size_t cache_bytes;    /* adapter cache budget (default 256 MiB) */
	int max_batch;         /* sequences decoded together (default 64) */
	int max_tokens;        /* per request (default 1024, and the context) */
	int max_prompt;        /* prompt bytes (default 65536) */
	FILE *events;          /* append inference events here, or NULL */
	trail_store *store;    /* record an inference-batch entry, or NULL */
} trail_serve_opts;

typedef struct trail_server trail_server;

int trail_server_new(const trail_serve_opts *o, trail_server **out, trail_error *err);
void trail_server_free(trail_server *s);

/*
 * Pipe mode: NDJSON requests {"id","model","prompt","max_tokens",
 * "temperature","top_p","seed","stop"} from in; one response per request on
 * out as it finishes: {"id","model","text","finish_reason","usage","event"},
 * or {"id","error":{"code","message"}} for that request alone.
 */
int trail_server_pipe(trail_server *s, FILE *in, FILE *out, trail_error *err);

/* Counters for /metrics and the benchmark. */
typedef struct trail_serve_stats {
	unsigned long long requests, errors, prompt_tokens, completion_tokens, steps, rows;
	unsigned long long adapter_loads, adapter_evictions;
	size_t cache_bytes;
} trail_serve_stats;
void trail_server_stats(const trail_server *s, trail_serve_stats *st);

#endif
