/*
 * Serving one base model with many LoRA adapters (SPEC §8): request
 * validation, an adapter registry (a directory of PEFT directories, loaded
 * on first use into an LRU cache bounded in bytes), a bounded queue with
 * round-robin admission between adapters, continuous batching (each step
 * mixes new requests' prompts and running requests' next tokens, for any
 * adapters, in one trail_infer_step) over a KV-cache pool bounded in bytes,
 * seeded sampling, stop strings, and the inference event attr-score
 * consumes. Pipe mode (NDJSON on a stream) and HTTP mode (libmicrohttpd,
 * OpenAI-compatible).
 *
 * Ownership: the server owns its model, tokenizer, adapters and caches; it
 * keeps the pointers in its options (paths, store) and does not free them.
 */
#ifndef TRAIL_SERVE_H
#define TRAIL_SERVE_H
#include <stdio.h>

#include "ledger/ledger.h"
#include "core/core.h"

typedef struct trail_serve_opts {
	const char *base;      /* base model directory */
	const char *adapters;  /* directory of PEFT adapter directories, or NULL */
	const char *tokenizer; /* "bytes" or a directory; NULL: the base's, else bytes for a 257-token vocabulary */
	size_t cache_bytes;    /* adapter cache budget (default 256 MiB) */
	size_t kv_bytes;       /* KV-cache pool budget (default max_batch full contexts) */
	int max_batch;         /* sequences decoded together (default 64) */
	int max_queue;         /* requests waiting beyond those (default 256); HTTP answers 429 past it */
	int max_tokens;        /* the most a request may ask (default 1024) */
	int max_prompt;        /* prompt bytes (default 65536) */
	int step_rows;         /* rows in one step; longer prompts are prefilled in chunks (default 512) */
	size_t max_body;       /* a request's bytes (default 1 MiB) */
	const char *events;    /* append every inference event to this file, synced before the response */
	trail_store *store;    /* record inference-batch entries, or NULL */
	int batch_events;      /* events per inference-batch entry (default 1000) */
	int threads;           /* threads for each step (0 or 1: one); answers do not depend on it */
	int precision;         /* TRAIL_PREC_* of the base products (0: fp32), recorded in each event */
	/* HTTP */
	int max_connections;   /* default 256 */
	int timeout_s;         /* idle connection timeout (default 10) */
} trail_serve_opts;

typedef struct trail_server trail_server;

int trail_server_new(const trail_serve_opts *o, trail_server **out, trail_error *err);
void trail_server_free(trail_server *s);

/*
 * Pipe mode: NDJSON requests {"id","model","prompt","max_tokens",
 * "temperature","top_p","seed","stop"} from in; one response per request on
 * out as it finishes: {"id","model","text","finish_reason","usage","event"},
 * or {"id","error":{"code","message"}} for that request alone. Returns at
 * the end of input once every request is answered.
 */
int trail_server_pipe(trail_server *s, FILE *in, FILE *out, trail_error *err);

/*
 * HTTP mode on ADDR:PORT (IPv4, or [IPv6]:PORT): POST /v1/completions
 * (server-sent events when "stream" is true), GET /v1/models, /health,
 * /metrics. Start returns once listening (TRAIL_EUNAVAIL if the port is
 * taken); stop stops accepting, finishes every request in flight, then
 * closes (call it from the thread that started the server).
 */
int trail_server_http_start(trail_server *s, const char *listen, trail_error *err);
int trail_server_http_stop(trail_server *s, trail_error *err);
/* The port listened on (after start; useful with port 0). */
int trail_server_http_port(const trail_server *s);

/* Counters for /metrics and the benchmark. */
typedef struct trail_serve_stats {
	unsigned long long requests, errors, prompt_tokens, completion_tokens, steps, rows;
	unsigned long long adapter_loads, adapter_evictions, adapters;
	size_t cache_bytes, cache_budget, kv_bytes, kv_budget, base_bytes;
	size_t cache_peak, kv_peak; /* the most either held at once */
	int active, queued;
} trail_serve_stats;
void trail_server_stats(trail_server *s, trail_serve_stats *st);
/* Up to max of the latest adapter cold-load times in milliseconds; returns how many. */
size_t trail_server_load_times(trail_server *s, double *ms, size_t max);
/* /metrics: Prometheus text exposition (trail_malloc'd, NUL-terminated). */
int trail_server_metrics(trail_server *s, char **out, size_t *len);

#endif
