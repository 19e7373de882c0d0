/* mf-train: train a GPT-2-family model or a LoRA adapter on an exact list of records. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "datanet.h"
#include "json.h"
#include "source.h"
#include "train.h"
#include "util.h"

enum { O_INIT = 1, O_BASE, O_LORA, O_DATA, O_DATANET, O_HOME, O_STEPS, O_EPOCHS, O_BATCH, O_SEQ, O_LR,
       O_WARMUP, O_SEED, O_THREADS, O_OUT, O_METRICS, O_TOK, O_NOINDEX, O_PROGRESS, O_NOPROGRESS, O_EVAL, O_ADAPTER, O_MERGE };

static const trail_opt opts[] = {
	{O_INIT, "init", 0, "CONFIG", "train from scratch: a config.json (n_layer, n_head, n_embd, n_positions, vocab_size)", "file"},
	{O_BASE, "base", 0, "MODEL", "start from a model directory", "dir"},
	{O_LORA, "lora", 0, "SPEC", "train a LoRA adapter: r=8,alpha=16,targets=c_attn,c_proj,c_fc", NULL},
	{O_DATA, "data", 'd', "FILE", "training records (NDJSON: text, or prompt and completion)", "file"},
	{O_DATANET, "datanet", 0, "NAME@SIZE", "train on a datanet snapshot from the store", NULL},
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail)", "dir"},
	{O_STEPS, "steps", 0, "N", "optimiser steps", NULL},
	{O_EPOCHS, "epochs", 0, "N", "passes over the data (instead of --steps)", NULL},
	{O_BATCH, "batch", 'b', "B", "records per step (default 8)", NULL},
	{O_SEQ, "seq", 't', "T", "tokens per record (default: the model's n_positions)", NULL},
	{O_LR, "lr", 0, "LR", "peak learning rate (default 3e-4; LoRA 1e-3)", NULL},
	{O_WARMUP, "warmup", 0, "N", "warmup steps (default 5% of the steps)", NULL},
	{O_SEED, "seed", 0, "S", "seed of the initialisation and the data order (default 1)", NULL},
	{O_THREADS, "threads", 0, "N", "BLAS threads (default 1; results depend on it)", NULL},
	{O_OUT, "output", 'o', "DIR", "where to write the model or adapter", "dir"},
	{O_METRICS, "metrics", 0, "FILE", "one NDJSON line per step: step, loss, lr, tokens_per_s", "file"},
	{O_TOK, "tokenizer", 0, "SPEC", "bytes (the default), or a tokenizer directory", NULL},
	{O_NOINDEX, "no-index", 0, NULL, "do not build the attribution index", NULL},
	{O_PROGRESS, "progress", 0, NULL, "always show progress on stderr", NULL},
	{O_NOPROGRESS, "no-progress", 0, NULL, "never show progress", NULL},
	{O_EVAL, "eval", 0, NULL, "print the mean loss of --base (and --adapter) on the records; no training", NULL},
	{O_ADAPTER, "adapter", 0, "DIR", "with --eval or --merge: a LoRA adapter on top of --base", "dir"},
	{O_MERGE, "merge", 0, NULL, "write --base with --adapter folded into its weights to -o DIR", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "mf-train",
	.usage = "--init CONFIG|--base MODEL [--lora SPEC] --data FILE|--datanet NAME@SIZE\n"
		 "    --steps N|--epochs N [--batch B] [--seq T] [--lr LR] [--seed S] [--threads N] -o DIR\n"
		 "--eval --base MODEL [--adapter DIR] --data FILE|--datanet NAME@SIZE [--seq T]\n"
		 "--merge --base MODEL --adapter DIR -o DIR",
	.summary = "Train a GPT-2-family model or a LoRA adapter on exact records; writes the weights, "
		   "the tokenizer and training.json.",
	.opts = opts,
};

static volatile int stop;
static void on_int(int sig)
{
	(void)sig;
	stop = 1;
}

struct conf {
	const char *init, *base, *lora, *data, *datanet, *home, *out, *metrics, *tok, *adapter;
	long long steps, epochs, batch, seq, warmup, seed, threads;
	double lr;
	int progress, eval, merge;
};

static int add_record(void *ctx, const json_t *rec)
{
	return json_array_append((json_t *)ctx, (json_t *)rec) ? TRAIL_ENOMEM : TRAIL_OK;
}

static int parse_lora(const char *spec, trail_lora_config *lc, trail_error *err)
{
	char *s = trail_strdup(spec), *save = NULL, *tok;
	int in_targets = 0;
	*lc = (trail_lora_config){.r = 8, .alpha = 16};
	for (tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		const char *t = tok;
		if (eq) {
			*eq = 0;
			in_targets = !strcmp(tok, "targets");
			if (!strcmp(tok, "r"))
				lc->r = atoi(eq + 1);
			else if (!strcmp(tok, "alpha"))
				lc->alpha = atof(eq + 1);
			else if (!strcmp(tok, "rslora"))
				lc->rslora = atoi(eq + 1);
			else if (!in_targets) {
				trail_free(s);
				return trail_error_set(err, TRAIL_EUSAGE, "--lora: unknown key '%s'", tok);
			}
			t = eq + 1;
		}
		if (!in_targets)
			continue;
		int bits = !strcmp(t, "c_attn") ? 1 : !strcmp(t, "c_proj") ? 10 : !strcmp(t, "attn.c_proj") ? 2
			   : !strcmp(t, "c_fc") ? 4 : !strcmp(t, "mlp.c_proj") ? 8 : 0;
		if (!bits) {
			trail_free(s);
			return trail_error_set(err, TRAIL_EUSAGE, "--lora: unknown target '%s'", t);
		}
		lc->targets |= bits;
	}
	trail_free(s);
	if (!lc->targets)
		lc->targets = 1 | 2 | 4 | 8;
	return TRAIL_OK;
}

/* base + adapter folded into one model directory */
static int merge(const struct conf *c, trail_error *err)
{
	trail_model *m;
	trail_tokenizer *tk;
	int rc = trail_model_load(c->base, &m, err);
	if (!rc && !(rc = trail_model_load_adapter(m, c->adapter, err)) && !(rc = trail_model_merge_lora(m, err)) &&
	    !(rc = trail_model_save(m, c->out, err)) && !(rc = trail_tokenizer_load(c->base, &tk, err))) {
		rc = trail_tokenizer_save(tk, c->out, err);
		trail_tokenizer_free(tk);
	}
	trail_model_free(m);
	return rc;
}

static int run(struct conf *c, trail_error *err)
{
	trail_model *m = NULL;
	trail_tokenizer *tk = NULL;
	trail_dataset *d = NULL;
	trail_store *s = NULL;
	json_t *recs = json_array(), *extra = json_object(), *man = NULL, *cj = NULL;
	FILE *metrics = NULL;
	float *curve = NULL;
	long nsteps = 0;
	void *buf = NULL;
	size_t len;
	char *name = NULL, *mj = NULL;
	uint64_t size = 0;
	int rc;
	if ((rc = trail_tokenizer_load(c->tok ? c->tok : "bytes", &tk, err)))
		goto out;
	if (c->data) { /* records from a file */
		if (!(rc = trail_read_file(c->data, (size_t)1 << 32, &buf, &len, err)))
			rc = trail_source_records(buf, len, c->data, 0, recs, err);
		char dg[72];
		trail_digest_str(buf, len, dg);
		json_object_set_new(extra, "data", json_pack("{s:s, s:s}", "file", c->data, "sha256", dg));
	} else if (!(rc = trail_datanet_spec(c->datanet, &name, &size, err)) &&
		   !(rc = trail_store_open(c->home, &s, err))) {
		trail_ledger *l;
		if (!size && !(rc = trail_ledger_open(s, 0, &l, err))) {
			size = trail_ledger_size(l);
			trail_ledger_free(l);
		}
		if (!rc)
			rc = trail_datanet_snapshot(s, name, size, add_record, recs, err);
		json_object_set_new(extra, "datanet", json_pack("{s:s, s:I}", "name", name, "tree_size", (json_int_t)size));
	}
	if (rc || (rc = trail_dataset_from_records(recs, tk, &d, err)))
		goto out;
	/* the model */
	if (c->init) {
		trail_gpt2_config gc;
		if (!(rc = trail_read_file(c->init, 1 << 20, &buf, &len, err)) &&
		    !(rc = trail_json_parse(buf, len, c->init, &cj, err)) && !(rc = trail_gpt2_config_parse(cj, &gc, err))) {
			if ((size_t)gc.vocab_size < trail_tokenizer_vocab_size(tk))
				rc = trail_error_at(err, TRAIL_EDATA, c->init, 0, "vocab_size %d is smaller than the tokenizer's %zu",
						    gc.vocab_size, trail_tokenizer_vocab_size(tk));
			else
				rc = trail_model_init(&gc, (uint64_t)c->seed, &m, err);
		}
	} else {
		rc = trail_model_load(c->base, &m, err);
		char *w = trail_path(c->base, "model.safetensors"), dg[72];
		trail_map mp;
		if (!rc && w && !trail_map_file(w, &mp, NULL)) {
			trail_digest_str(mp.data, mp.len, dg);
			json_object_set_new(extra, "base", json_pack("{s:s, s:s}", "dir", c->base, "weights", dg));
			trail_unmap(&mp);
		}
		trail_free(w);
	}
	if (rc)
		goto out;
	const trail_gpt2_config *gc = trail_model_config(m);
	if (c->seq > gc->n_positions) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "--seq %lld is over the model's n_positions %d", c->seq, gc->n_positions);
		goto out;
	}
	if (c->eval) {
		double el;
		if ((!c->adapter || !(rc = trail_model_load_adapter(m, c->adapter, err))) &&
		    !(rc = trail_eval_loss(m, d, (int)c->batch, c->seq ? (int)c->seq : gc->n_positions, &el, err)))
			printf("{\"loss\":%.6f,\"records\":%zu}\n", el, d->n);
		goto out;
	}
	trail_lora_config lc;
	if (c->lora && (!(rc = parse_lora(c->lora, &lc, err)) && !(rc = trail_model_add_lora(m, &lc, (uint64_t)c->seed, err))))
		json_object_set_new(extra, "lora", json_pack("{s:i, s:f, s:i}", "r", lc.r, "alpha", lc.alpha, "targets", lc.targets));
	if (rc)
		goto out;
	trail_train_opts o = {
		.batch = (int)c->batch, .seq = c->seq ? (int)c->seq : gc->n_positions, .lr = c->lr ? c->lr : c->lora ? 1e-3 : 3e-4,
		.clip = 1.0, .seed = (uint64_t)c->seed, .stop = &stop,
	};
	long per_epoch = (long)((d->n + (size_t)o.batch - 1) / (size_t)o.batch);
	o.steps = c->steps ? (long)c->steps : per_epoch * (long)c->epochs;
	o.warmup = c->warmup >= 0 ? (long)c->warmup : o.steps / 20;
	if (c->metrics && !(metrics = fopen(c->metrics, "w"))) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", c->metrics);
		goto out;
	}
	o.metrics = metrics;
	o.progress = c->progress ? stderr : NULL;
	json_object_set_new(extra, "threads", json_integer(c->threads));
	json_object_set_new(extra, "tokenizer", json_string(trail_tokenizer_kind(tk)));
	json_object_set_new(extra, "kind", json_string(c->lora ? "adapter" : "model"));
	int trc = trail_train(m, d, &o, &curve, &nsteps, err);
	/* a non-finite loss keeps the last good weights: they are written all the same */
	if ((rc = c->lora ? trail_model_save_adapter(m, c->out, c->base, err) : trail_model_save(m, c->out, err)) ||
	    (!c->lora && (rc = trail_tokenizer_save(tk, c->out, err))))
		goto out;
	man = trail_training_manifest(d, &o, curve, nsteps, extra);
	char *tp = trail_path(c->out, "training.json");
	size_t ml;
	if (!man || !tp || (rc = trail_jcs(man, &mj, &ml, err))) {
		rc = rc ? rc : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		trail_free(tp);
		goto out;
	}
	mj[ml] = '\n';
	rc = trail_write_atomic(tp, mj, ml + 1, 0644, err);
	trail_free(tp);
	if (!rc && trc)
		rc = trc;
	if (!rc && stop)
		rc = trail_error_set(err, TRAIL_EAGAIN, "interrupted after %ld of %ld steps: the weights so far are in %s",
				     nsteps, o.steps, c->out);
	if (!rc)
		printf("{\"output\":\"%s\",\"steps\":%ld,\"loss\":%.6f,\"records\":%zu,\"training_root\":\"%s\"}\n", c->out,
		       nsteps, nsteps ? curve[nsteps - 1] : 0.0, d->n, d->root);
out:
	if (metrics && fclose(metrics) && !rc)
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", c->metrics);
	json_decref(recs), json_decref(extra), json_decref(man), json_decref(cj);
	trail_free(curve), trail_free(buf), trail_free(name), trail_free(mj);
	trail_model_free(m);
	trail_tokenizer_free(tk);
	trail_dataset_free(d);
	trail_store_free(s);
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	struct conf c = {.batch = 8, .seed = 1, .threads = 1, .warmup = -1, .progress = -1};
	const char *v;
	int o, rc = TRAIL_OK;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (o = trail_args_next(&a, &v, &err)) > 0) {
		switch (o) {
		case O_INIT: c.init = v; break;
		case O_BASE: c.base = v; break;
		case O_LORA: c.lora = v; break;
		case O_DATA: c.data = v; break;
		case O_DATANET: c.datanet = v; break;
		case O_HOME: c.home = v; break;
		case O_STEPS: rc = trail_parse_long(v, 1, 100000000, &c.steps, "--steps", &err); break;
		case O_EPOCHS: rc = trail_parse_long(v, 1, 100000, &c.epochs, "--epochs", &err); break;
		case O_BATCH: rc = trail_parse_long(v, 1, 65536, &c.batch, "--batch", &err); break;
		case O_SEQ: rc = trail_parse_long(v, 2, 1 << 20, &c.seq, "--seq", &err); break;
		case O_LR: rc = trail_parse_double(v, 1e-9, 10, &c.lr, "--lr", &err); break;
		case O_WARMUP: rc = trail_parse_long(v, 0, 100000000, &c.warmup, "--warmup", &err); break;
		case O_SEED: rc = trail_parse_long(v, 0, INT64_MAX, &c.seed, "--seed", &err); break;
		case O_THREADS: rc = trail_parse_long(v, 1, 256, &c.threads, "--threads", &err); break;
		case O_OUT: c.out = v; break;
		case O_METRICS: c.metrics = v; break;
		case O_TOK: c.tok = v; break;
		case O_NOINDEX: break;
		case O_EVAL: c.eval = 1; break;
		case O_ADAPTER: c.adapter = v; break;
		case O_MERGE: c.merge = 1; break;
		case O_PROGRESS: c.progress = 1; break;
		case O_NOPROGRESS: c.progress = 0; break;
		}
	}
	c.home = trail_store_home(c.home);
	if (c.progress < 0)
		c.progress = isatty(2);
	if (rc || o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (o == TRAIL_ARGS_EXIT)
		rc = TRAIL_OK;
	else if (c.merge)
		rc = c.base && c.adapter && c.out ? merge(&c, &err)
						  : trail_error_set(&err, TRAIL_EUSAGE, "--merge needs --base, --adapter and -o");
	else if (c.eval ? (!c.base || !c.data == !c.datanet || a.nrest)
			: (!c.init == !c.base || !c.data == !c.datanet || !c.steps == !c.epochs || !c.out || a.nrest))
		rc = trail_error_set(&err, TRAIL_EUSAGE,
				     "give one of --init/--base, one of --data/--datanet, one of --steps/--epochs, and -o DIR");
	else {
		signal(SIGINT, on_int);
		trail_blas_threads((int)c.threads);
		rc = run(&c, &err);
	}
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
