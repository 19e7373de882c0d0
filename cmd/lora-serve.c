/* lora-serve: one base model, many LoRA adapters, batched together (pipe or HTTP mode). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "serve/serve.h"
#include "model/model.h"

enum { O_BASE = 1, O_ADAPTERS, O_TOK, O_CACHE, O_KV, O_BATCH, O_QUEUE, O_MAXTOK, O_PROMPT, O_ROWS, O_BODY, O_EVENTS,
       O_HOME, O_RECORD, O_THREADS, O_LISTEN, O_CONNS, O_TIMEOUT, O_PREC };

static const trail_opt opts[] = {
	{O_BASE, "base", 0, "BASE", "the base model: a directory, or a GGUF file", "file"},
	{O_ADAPTERS, "adapters", 'a', "DIR", "a directory of PEFT adapter directories, named by directory", "dir"},
	{O_TOK, "tokenizer", 0, "SPEC", "bytes, or a directory (default: the base's)", NULL},
	{O_CACHE, "cache-mb", 0, "MB", "adapter cache budget (default 256)", NULL},
	{O_KV, "kv-mb", 0, "MB", "KV-cache pool budget (default: --max-batch full contexts)", NULL},
	{O_BATCH, "max-batch", 0, "N", "sequences decoded together (default 64)", NULL},
	{O_QUEUE, "max-queue", 0, "N", "requests waiting beyond the batch; HTTP answers 429 past it (default 256)", NULL},
	{O_MAXTOK, "max-tokens", 0, "N", "the most max_tokens a request may ask (default 1024)", NULL},
	{O_PROMPT, "max-prompt", 0, "BYTES", "the longest prompt (default 65536)", NULL},
	{O_ROWS, "step-rows", 0, "N", "tokens in one step; long prompts are prefilled in chunks (default 512)", NULL},
	{O_BODY, "max-body", 0, "BYTES", "the largest request (default 1048576)", NULL},
	{O_EVENTS, "events", 'e', "FILE", "append every inference event to FILE, synced before the response", "file"},
	{O_HOME, "home", 0, "DIR", "the store: record inference-batch ledger entries", "dir"},
	{O_RECORD, "record", 0, NULL, "record inference-batch entries in the default store ($TRAIL_HOME, else ./.trail)", NULL},
	{O_THREADS, "threads", 0, "N", "threads for each step (default: every CPU this process may use; answers do not depend on it)", NULL},
	{O_PREC, "precision", 0, "fp32|bf16|int8", "the base products' precision (default: bf16 where the CPU has bf16 dot products, else fp32; int8: weights quantised per output row), recorded in each event", NULL},
	{O_LISTEN, "listen", 'l', "ADDR:PORT", "serve HTTP (OpenAI-compatible) instead of standard input", NULL},
	{O_CONNS, "max-connections", 0, "N", "HTTP connections at once (default 256)", NULL},
	{O_TIMEOUT, "timeout", 0, "SECONDS", "close an HTTP connection idle this long (default 10)", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "lora-serve",
	.usage = "--base DIR [--adapters DIR] [--cache-mb MB] [--events FILE] [--listen ADDR:PORT] [< requests]",
	.summary = "Answer completion requests for a base model and its LoRA adapters, batching requests for "
		   "different adapters together; each response carries its inference event. A request without "
		   "them gets temperature 1 (sampled, as OpenAI's API; 0 is greedy), top_p 1, seed 0 and max_tokens 16.",
	.opts = opts,
};

/* HTTP mode: serve until SIGTERM or SIGINT, then drain. */
static int http(trail_server *s, const char *listen, sigset_t *sigs, trail_error *err)
{
	int rc = trail_server_http_start(s, listen, err), sig;
	if (rc)
		return rc;
	printf("{\"listen\":\"%s\",\"port\":%d}\n", listen, trail_server_http_port(s));
	fflush(stdout);
	while (sigwait(sigs, &sig) == 0 && sig != SIGTERM && sig != SIGINT)
		;
	return trail_server_http_stop(s, err);
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	trail_serve_opts o = {0};
	trail_server *s = NULL;
	trail_store *st = NULL;
	const char *v, *home = NULL, *listen = NULL;
	long long n, threads = trail_threads_default();
	int opt, rc = TRAIL_OK, record = 0, prec = -1;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (opt = trail_args_next(&a, &v, &err)) > 0) {
		switch (opt) {
		case O_BASE: o.base = v; break;
		case O_ADAPTERS: o.adapters = v; break;
		case O_TOK: o.tokenizer = v; break;
		case O_CACHE: rc = trail_parse_long(v, 1, 1 << 20, &n, "--cache-mb", &err), o.cache_bytes = (size_t)n << 20; break;
		case O_KV: rc = trail_parse_long(v, 1, 1 << 20, &n, "--kv-mb", &err), o.kv_bytes = (size_t)n << 20; break;
		case O_BATCH: rc = trail_parse_long(v, 1, 4096, &n, "--max-batch", &err), o.max_batch = (int)n; break;
		case O_QUEUE: rc = trail_parse_long(v, 1, 1 << 20, &n, "--max-queue", &err), o.max_queue = (int)n; break;
		case O_MAXTOK: rc = trail_parse_long(v, 1, 1 << 20, &n, "--max-tokens", &err), o.max_tokens = (int)n; break;
		case O_PROMPT: rc = trail_parse_long(v, 1, 1 << 26, &n, "--max-prompt", &err), o.max_prompt = (int)n; break;
		case O_ROWS: rc = trail_parse_long(v, 1, 1 << 20, &n, "--step-rows", &err), o.step_rows = (int)n; break;
		case O_BODY: rc = trail_parse_long(v, 64, 1 << 30, &n, "--max-body", &err), o.max_body = (size_t)n; break;
		case O_EVENTS: o.events = v; break;
		case O_HOME: home = v, record = 1; break;
		case O_RECORD: record = 1; break;
		case O_THREADS: rc = trail_parse_long(v, 1, 256, &threads, "--threads", &err); break;
		case O_PREC: rc = trail_precision_parse(v, &prec, &err); break;
		case O_LISTEN: listen = v; break;
		case O_CONNS: rc = trail_parse_long(v, 1, 65536, &n, "--max-connections", &err), o.max_connections = (int)n; break;
		case O_TIMEOUT: rc = trail_parse_long(v, 1, 3600, &n, "--timeout", &err), o.timeout_s = (int)n; break;
		}
	}
	if (rc || opt == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (opt == TRAIL_ARGS_EXIT)
		goto done;
	else if (!o.base || a.nrest)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--base DIR is required; requests come on standard input");
	if (!rc && record && !(rc = trail_store_open(trail_store_home(home), &st, &err)))
		o.store = st;
	/* signals are taken by sigwait alone: every thread starts with them blocked */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	signal(SIGPIPE, SIG_IGN);
	if (!rc && listen)
		pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	if (!rc) {
		o.threads = (int)threads;
		o.precision = prec < 0 ? trail_precision_default() : prec;
		if (!(rc = trail_server_new(&o, &s, &err)))
			rc = listen ? http(s, listen, &sigs, &err) : trail_server_pipe(s, stdin, stdout, &err);
	}
done:
	trail_server_free(s);
	trail_store_free(st);
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
