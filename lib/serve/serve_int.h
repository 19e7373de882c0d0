/*
 * Inside lora-serve: the structures shared by serve.c (requests, the
 * scheduler, the decode loop, pipe mode), serve_registry.c (adapters and
 * their LRU cache), serve_sample.c (sampling, stop strings) and
 * serve_http.c (the HTTP interface). Not installed.
 *
 * Threads: pipe mode runs everything on the caller's thread. HTTP mode has
 * one engine thread (admission, adapter loading, decoding, sampling) and one
 * thread per connection. s->mu guards the registry's table, the queues, the
 * counters and each request's output fields; the adapter cache (weights,
 * LRU list, refs) and the active set belong to the engine thread alone.
 */
#ifndef TRAIL_SERVE_INT_H
#define TRAIL_SERVE_INT_H

#include <time.h>
#include <pthread.h>
#include <stdint.h>

#include <jansson.h>

#include "model/model.h"
#include "serve/serve.h"
#include "core/core.h"

typedef struct sreq sreq;

/* A registered adapter (or the base, with no directory). */
typedef struct adapter {
	char *name, *dir;
	char digest[72];       /* of adapter_model.safetensors: on first load or digest look-up (under mu) */
	size_t est;            /* expected cache bytes before the first load: the file's size */
	/* the engine's cache */
	trail_lora_w *w;       /* NULL while not cached */
	int refs;              /* active sequences on these weights (pinned while > 0) */
	int pending;           /* admitted this round, not loaded yet */
	struct adapter *prev, *next; /* LRU list, most recent first */
	/* under s->mu: this adapter's waiting requests, and its place in the round-robin ring */
	sreq *qhead, *qtail;
	struct adapter *rr;
	int in_rr;
} adapter;

typedef struct registry {
	adapter **slot; /* open addressing by name */
	size_t nslot, n;
	adapter **all;  /* registration order: the directory scan sorted, then later finds */
	size_t nall, capall;
} registry;

/* One request, from validation to its response. */
struct sreq {
	json_t *req;
	char *id, *model;
	const char *prompt; /* inside req */
	adapter *ad;        /* NULL: the base */
	int32_t *tok;       /* prompt then output, [cap] */
	int nprompt, n, cap, max_new, fed, pinned;
	double temperature, top_p;
	uint64_t seed;
	json_t *stop;                  /* as given, for the event */
	const char *stops[4];
	size_t stoplen[4], maxstop;
	int nstop;
	trail_kvc *kv;
	trail_buf text;  /* output bytes so far */
	size_t sent;     /* bytes of text already streamed */
	const char *finish_reason;
	size_t keep;     /* text bytes kept (a stop string cuts the rest) */
	double t_queued, t_admit, t_done;
	/* HTTP */
	int http, stream, ignore_eos;
	long created;
	/* chat: messages rendered with the base's chat template into chat_prompt (prompt points there) */
	int chat;
	char *chat_prompt;
	json_t *messages;
	/* under s->mu */
	trail_buf out;   /* SSE bytes for the connection */
	char *body;      /* the final response (a JSON line, or the stream's last events) */
	int status, done, cancelled, refs;
	sreq *next;
};

struct trail_server {
	trail_serve_opts o;
	trail_infer *m;
	trail_tokenizer *tk;
	adapter base;
	char base_digest[72];
	registry reg;
	/* chat: the base's chat template and the variables beside the messages, or NULL (chat_why says why) */
	char *chat_tmpl;
	json_t *chat_vars;
	char chat_why[300];
	int32_t turn_end[8]; /* special tokens that end a chat turn (<|eot_id|>, <|im_end|>, </s>, ...) */
	int nturn_end;
	/* engine: the adapter cache and the active sequences */
	adapter *lru_head, *lru_tail;
	size_t cache_used, pinned, kv_used;
	sreq **act, **adm;
	int *done;
	int nact;
	float *logits;
	int32_t *rtok;
	int *rpos, *rout, *rseq;
	trail_kvc **rkv;
	const trail_lora_w **rlw;
	void *cands;
	/* events and the ledger */
	int events_fd;
	trail_buf batch; /* events not yet in an inference-batch entry */
	size_t batch_n;
	/* under mu */
	pthread_mutex_t mu;
	pthread_cond_t wake, changed; /* wake: the engine; changed: a request's output */
	adapter *rr_head, *rr_tail;
	int queued, admitting, draining, stop;
	unsigned long long next_id;
	char id_nonce[16]; /* random per server: HTTP ids cmpl-NONCE-N never repeat across restarts */
	trail_serve_stats st;
	int inflight;                    /* queued or active */
	unsigned long long codes[400];   /* HTTP responses by status, 200..599 */
	unsigned long long conns_begun, conns_done; /* completion requests answered / fully sent */
	double load_ms[4096];            /* the latest cold loads, a ring */
	unsigned long long nload;
	/* HTTP */
	struct MHD_Daemon *mhd;
	int (*http_stop)(trail_server *s, trail_error *err); /* set with mhd: the engine never calls up into HTTP */
	pthread_t engine;
	int engine_running;
	double started;
};

/* registry (serve_registry.c) */
int reg_scan(trail_server *s, trail_error *err);
void reg_free(trail_server *s);
/*
 * The adapter called name, registering it if its directory appeared since
 * the scan, or whose weights file has digest name ("sha256:..."); NULL:
 * unknown. Under mu.
 */
adapter *reg_find(trail_server *s, const char *name);
/*
 * Engine: make a's weights resident and pin them (refs + 1), evicting the
 * least recently used adapters not pinned. Admission keeps pinned bytes
 * plus the adapters about to load within the budget, so eviction can
 * always make room.
 */
int cache_acquire(trail_server *s, adapter *a, trail_error *err);
void cache_pin(trail_server *s, adapter *a); /* a is resident */
void cache_release(trail_server *s, adapter *a);

/* sampling and text (serve_sample.c) */
typedef struct cand {
	double p;
	int id;
} cand;
/* The i-th draw of stream `seed`, uniform in [0,1): a function of (seed, i) alone. */
double serve_uniform(uint64_t seed, uint64_t i);
/* Greedy at temperature 0; else the top-p nucleus at that temperature, drawn with u. c [V] scratch. */
int serve_sample(const float *logits, int V, double temperature, double top_p, double u, cand *c);
/* The first stop string in text[0..n) at or after `from`: its offset, or -1. */
long serve_find_stop(const sreq *q, const char *text, size_t n, size_t from);
/* How much of text[0..n) can be sent now: not a possible stop string's start, nor half a UTF-8 character. */
size_t serve_safe_prefix(const sreq *q, const char *text, size_t n);
/* A JSON string of bytes, invalid UTF-8 and NUL as U+FFFD (the token ids stay exact). */
json_t *serve_text_json(const char *s, size_t n);

/* Seconds on the monotonic clock. */
static inline double serve_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* core (serve.c) */
/*
 * Validate a request, a completion or (chat) a chat completion; on failure
 * NULL with *status (400, 404, 413) and err.
 */
sreq *req_new(trail_server *s, json_t *req, int http, int chat, int *status, trail_error *err);
void req_unref(trail_server *s, sreq *q); /* under mu when shared */
/* Queue a validated request: 0, or 429 (queue full) / 503 (draining). Takes mu. */
int req_submit(trail_server *s, sreq *q);
/* One round of the engine: admit, step, deliver. Returns 0 when it did nothing. */
int engine_round(trail_server *s, FILE *out, trail_error *err);
/* After a failed step: answer every active request with an error and retire it. */
void engine_fail_all(trail_server *s, const trail_error *e);
int serve_flush_batch(trail_server *s, trail_error *err);
/* OpenAI's error object: {"error": {"message", "type", "param": null, "code"}} */
json_t *serve_error_json(int status, const char *msg);

#endif
