/* lora-serve: one base model, many LoRA adapters, batched together (pipe mode). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "serve.h"
#include "train.h"

enum { O_BASE = 1, O_ADAPTERS, O_CACHE, O_BATCH, O_MAXTOK, O_EVENTS, O_HOME, O_RECORD, O_THREADS };

static const trail_opt opts[] = {
	{O_BASE, "base", 0, "DIR", "the base model directory", "dir"},
	{O_ADAPTERS, "adapters", 'a', "DIR", "a directory of PEFT adapter directories, named by directory", "dir"},
	{O_CACHE, "cache-mb", 0, "MB", "adapter cache budget (default 256)", NULL},
	{O_BATCH, "max-batch", 0, "N", "sequences decoded together; bounds the KV-cache pool (default 64)", NULL},
	{O_MAXTOK, "max-tokens", 0, "N", "the most max_tokens a request may ask (default 1024)", NULL},
	{O_EVENTS, "events", 'e', "FILE", "append every inference event to FILE", "file"},
	{O_HOME, "home", 0, "DIR", "the store, with --record (default $TRAIL_HOME, else ./.trail)", "dir"},
	{O_RECORD, "record", 0, NULL, "record the run's events as an inference-batch ledger entry", NULL},
	{O_THREADS, "threads", 0, "N", "BLAS threads (default 1)", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "lora-serve",
	.usage = "--base DIR [--adapters DIR] [--cache-mb MB] [--max-batch N] [--events FILE] [--record] < requests",
	.summary = "Answer NDJSON completion requests for a base model and its LoRA adapters, batching "
		   "requests for different adapters together; each response carries its inference event.",
	.opts = opts,
};

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	trail_serve_opts o = {0};
	trail_server *s = NULL;
	trail_store *st = NULL;
	const char *v, *events = NULL, *home = NULL;
	long long n, threads = 1;
	int opt, rc = TRAIL_OK, record = 0;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (opt = trail_args_next(&a, &v, &err)) > 0) {
		switch (opt) {
		case O_BASE: o.base = v; break;
		case O_ADAPTERS: o.adapters = v; break;
		case O_CACHE: rc = trail_parse_long(v, 1, 1 << 20, &n, "--cache-mb", &err), o.cache_bytes = (size_t)n << 20; break;
		case O_BATCH: rc = trail_parse_long(v, 1, 4096, &n, "--max-batch", &err), o.max_batch = (int)n; break;
		case O_MAXTOK: rc = trail_parse_long(v, 1, 1 << 20, &n, "--max-tokens", &err), o.max_tokens = (int)n; break;
		case O_EVENTS: events = v; break;
		case O_HOME: home = v; break;
		case O_RECORD: record = 1; break;
		case O_THREADS: rc = trail_parse_long(v, 1, 256, &threads, "--threads", &err); break;
		}
	}
	if (rc || opt == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (opt == TRAIL_ARGS_EXIT)
		goto done;
	else if (!o.base || a.nrest)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "--base DIR is required; requests come on standard input");
	if (!rc && events && !(o.events = fopen(events, "a")))
		rc = trail_error_errno(&err, TRAIL_EIO, errno, "%s", events);
	if (!rc && record && !(rc = trail_store_open(trail_store_home(home), &st, &err)))
		o.store = st;
	if (!rc) {
		trail_blas_threads((int)threads);
		if (!(rc = trail_server_new(&o, &s, &err)))
			rc = trail_server_pipe(s, stdin, stdout, &err);
	}
	/* events are appended durably: flushed and synced before exit */
	if (o.events && (fflush(o.events) || fsync(fileno(o.events)) || fclose(o.events)) && !rc)
		rc = trail_error_errno(&err, TRAIL_EIO, errno, "%s", events);
done:
	trail_server_free(s);
	trail_store_free(st);
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
