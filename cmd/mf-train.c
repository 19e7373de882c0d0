/* mf-train: train a GPT-2 or Llama-family model or a LoRA adapter on an exact list of records. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "model/model.h"
#include "job/job.h"

enum { O_INIT = 1, O_BASE, O_LORA, O_DATA, O_DATANET, O_HOME, O_STEPS, O_EPOCHS, O_BATCH, O_SEQ, O_LR, O_WARMUP,
       O_SEED, O_THREADS, O_OUT, O_METRICS, O_TOK, O_NOINDEX, O_PROGRESS, O_NOPROGRESS, O_EVAL, O_ADAPTER, O_MERGE,
       O_RESUME, O_CKPT, O_NAME, O_LONG, O_PREC, O_INDEXAT };

static const trail_opt opts[] = {
	{O_INIT, "init", 0, "CONFIG", "train from scratch: a Hugging Face config.json (GPT-2, Llama, Qwen2, Mistral)", "file"},
	{O_BASE, "base", 0, "MODEL", "start from a model directory (or its model.safetensors), or a GGUF file", "file"},
	{O_LORA, "lora", 0, "SPEC", "train a LoRA adapter: r=8,alpha=16,targets=c_attn,c_proj|q_proj,v_proj,...[,rslora=1]", NULL},
	{O_DATA, "data", 'd', "FILE", "training records (NDJSON: text, or prompt and completion; contributor kept)", "file"},
	{O_DATANET, "datanet", 0, "NAME[@SIZE]", "train on a datanet snapshot from the store", NULL},
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail)", "dir"},
	{O_NAME, "name", 0, "NAME", "with a store: register the result under NAME", NULL},
	{O_STEPS, "steps", 0, "N", "optimiser steps", NULL},
	{O_EPOCHS, "epochs", 0, "N", "passes over the data (instead of --steps)", NULL},
	{O_BATCH, "batch", 'b', "B", "records per step (default 8)", NULL},
	{O_SEQ, "seq", 't', "T", "tokens per record (default: the model's n_positions)", NULL},
	{O_LONG, "long", 0, "MODE", "records longer than --seq: truncate (default), split into windows, or error",
	 "truncate split error"},
	{O_LR, "lr", 0, "LR", "peak learning rate (default 3e-4; LoRA 1e-3)", NULL},
	{O_WARMUP, "warmup", 0, "N", "warmup steps (default 5% of the steps)", NULL},
	{O_SEED, "seed", 0, "S", "seed of the initialisation and the data order (default 1)", NULL},
	{O_THREADS, "threads", 0, "N", "threads (default: every CPU this process may use; the bits do not depend on it)", NULL},
	{O_PREC, "precision", 0, "P", "the linear layers' products: bf16 (bfloat16 inputs, float32 sums; the default where "
				     "the CPU has bf16 dot products) or fp32 (the default elsewhere)", "fp32 bf16"},
	{O_OUT, "output", 'o', "DIR", "where to write the model or adapter", "dir"},
	{O_METRICS, "metrics", 0, "FILE", "one NDJSON line per step: step, loss, lr, grad_norm, tokens_per_s", "file"},
	{O_TOK, "tokenizer", 0, "SPEC", "bytes (the default; a base model's own when it has one), or a directory", NULL},
	{O_CKPT, "checkpoint-every", 0, "N", "also write DIR/checkpoint.safetensors every N steps", NULL},
	{O_RESUME, "resume", 0, NULL, "continue from DIR/checkpoint.safetensors (same options)", NULL},
	{O_NOINDEX, "no-index", 0, NULL, "do not build the attribution index", NULL},
	{O_INDEXAT, "index-at", 0, "WHEN", "the index's gradients: final (the trained weights, one more pass; the default) "
					  "or last-epoch (captured in each record's last training step)", "final last-epoch"},
	{O_PROGRESS, "progress", 0, NULL, "always show progress on stderr", NULL},
	{O_NOPROGRESS, "no-progress", 0, NULL, "never show progress", NULL},
	{O_EVAL, "eval", 0, NULL, "print the mean loss of --base (and --adapter) on the records; no training", NULL},
	{O_ADAPTER, "adapter", 0, "DIR", "with --eval or --merge: a LoRA adapter on top of --base", "dir"},
	{O_MERGE, "merge", 0, NULL, "write --base with --adapter folded into its weights to -o DIR", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "mf-train",
	.usage = "--init CONFIG|--base MODEL [--lora SPEC] --data FILE|--datanet NAME[@SIZE]\n"
		 "    --steps N|--epochs N [--batch B] [--seq T] [--lr LR] [--seed S] [--threads N] [--precision P] [--resume] -o DIR\n"
		 "--eval --base MODEL [--adapter DIR] --data FILE|--datanet NAME[@SIZE] [--seq T]\n"
		 "--merge --base MODEL --adapter DIR -o DIR",
	.summary = "Train a GPT-2 or Llama-family model or a LoRA adapter on exact records; writes the weights, "
		   "the tokenizer and training.json.",
	.opts = opts,
};

static volatile sig_atomic_t stop;
static void on_int(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	trail_train_job j = {.batch = 8, .seed = 1, .threads = 0, .warmup = -1, .stop = &stop};
	long long n;
	const char *v;
	int o, rc = TRAIL_OK, progress = -1, prec = -1;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (o = trail_args_next(&a, &v, &err)) > 0) {
		switch (o) {
		case O_INIT: j.init = v; break;
		case O_BASE: j.base = v; break;
		case O_LORA: j.lora = v; break;
		case O_DATA: j.data = v; break;
		case O_DATANET: j.datanet = v; break;
		case O_HOME: j.home = v; break;
		case O_NAME: j.name = v; break;
		case O_STEPS: rc = trail_parse_long(v, 1, 100000000, &n, "--steps", &err), j.steps = (long)n; break;
		case O_EPOCHS: rc = trail_parse_long(v, 1, 100000, &n, "--epochs", &err), j.epochs = (long)n; break;
		case O_BATCH: rc = trail_parse_long(v, 1, 65536, &n, "--batch", &err), j.batch = (int)n; break;
		case O_SEQ: rc = trail_parse_long(v, 2, 1 << 20, &n, "--seq", &err), j.seq = (int)n; break;
		case O_LR: rc = trail_parse_double(v, 1e-9, 10, &j.lr, "--lr", &err); break;
		case O_WARMUP: rc = trail_parse_long(v, 0, 100000000, &n, "--warmup", &err), j.warmup = (long)n; break;
		case O_SEED: rc = trail_parse_long(v, 0, INT64_MAX, &n, "--seed", &err), j.seed = (uint64_t)n; break;
		case O_THREADS: rc = trail_parse_long(v, 1, 256, &n, "--threads", &err), j.threads = (int)n; break;
		case O_PREC:
			if (!(rc = trail_precision_parse(v, &prec, &err)) && prec == TRAIL_PREC_INT8)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--precision int8 is for serving (lora-serve); mf-train takes fp32 or bf16");
			break;
		case O_CKPT: rc = trail_parse_long(v, 1, 100000000, &n, "--checkpoint-every", &err), j.checkpoint_every = (long)n; break;
		case O_LONG:
			if ((j.long_mode = trail_long_mode(v)) < 0)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--long: '%s' is not truncate, split or error", v);
			break;
		case O_INDEXAT:
			if ((j.index_at = trail_index_at(v)) < 0)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "--index-at: '%s' is not final or last-epoch", v);
			break;
		case O_OUT: j.out = v; break;
		case O_METRICS: j.metrics = v; break;
		case O_TOK: j.tokenizer = v; break;
		case O_RESUME: j.resume = 1; break;
		case O_NOINDEX: j.no_index = 1; break;
		case O_EVAL: j.eval = 1; break;
		case O_MERGE: j.merge = 1; break;
		case O_ADAPTER: j.adapter = v; break;
		case O_PROGRESS: progress = 1; break;
		case O_NOPROGRESS: progress = 0; break;
		}
	}
	j.home = trail_store_home(j.home);
	j.progress = (progress < 0 ? isatty(2) : progress) ? stderr : NULL;
	if (rc || o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (o == TRAIL_ARGS_EXIT)
		rc = TRAIL_OK;
	else if (j.merge ? (!j.base || !j.adapter || !j.out || a.nrest)
			 : j.eval ? (!j.base || !j.data == !j.datanet || a.nrest)
				  : (!j.init == !j.base || !j.data == !j.datanet || !j.steps == !j.epochs || !j.out || a.nrest))
		rc = trail_error_set(&err, TRAIL_EUSAGE, j.merge ? "--merge needs --base, --adapter and -o DIR"
							 : "give one of --init/--base, one of --data/--datanet, one of "
							   "--steps/--epochs, and -o DIR");
	else {
		json_t *res;
		char *line;
		size_t len;
		signal(SIGINT, on_int);
		signal(SIGTERM, on_int);
		if (!j.threads)
			j.threads = trail_threads_default();
		if (!(rc = trail_compute_set(j.threads, prec < 0 ? trail_precision_default() : prec, &err)))
			rc = trail_train_job_run(&j, &res, &err);
		json_t *lg = json_object_get(res, "long");
		const char *mode = json_string_value(json_object_get(lg, "mode"));
		if (!rc && json_is_object(lg)) /* --eval reports "long": null */
			fprintf(stderr, "mf-train: warning: %lld of %lld records are longer than --seq %lld and were %s; see --long\n",
				(long long)json_integer_value(json_object_get(lg, "records")),
				(long long)json_integer_value(json_object_get(lg, "of")),
				(long long)json_integer_value(json_object_get(lg, "seq")),
				mode && !strcmp(mode, "split") ? "split into windows" : "cut");
		if (!rc && !(rc = trail_jcs(res, &line, &len, &err))) {
			fwrite(line, 1, len, stdout);
			putchar('\n');
			trail_free(line);
		}
		json_decref(res);
	}
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
