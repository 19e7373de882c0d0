/*
 * Training: the learning-rate schedule, AdamW against a double reference
 * (with clipping), datasets from records (text, instruct, contributor,
 * bad records), determinism of weights and manifest, a checkpoint that
 * resumes to the identical result, an interrupt, a checkpoint of other
 * settings refused, and a non-finite loss stopping with the last good
 * weights in the checkpoint.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "tap.h"
#include "job/job.h"

static char dir[] = "/tmp/trail-train-XXXXXX";
static const trail_model_cfg cfg = {.n_layer = 2, .n_head = 2, .n_embd = 16, .n_positions = 32, .vocab_size = 257};

static void test_schedule(void)
{
	double a = trail_lr_schedule(1.0, 0, 10, 110), b = trail_lr_schedule(1.0, 9, 10, 110);
	double c = trail_lr_schedule(1.0, 10, 10, 110), d = trail_lr_schedule(1.0, 60, 10, 110);
	double f = trail_lr_schedule(1.0, 110, 10, 110);
	ok(fabs(a - 0.1) < 1e-12 && fabs(b - 1) < 1e-12 && fabs(c - 1) < 1e-12 && fabs(d - 0.55) < 1e-12 && fabs(f - 0.1) < 1e-12,
	   "warmup 0.1 .. 1, cosine 1 -> 0.55 at half-way -> 0.1 at the end");
	ok(trail_lr_schedule(2.0, 5, 0, 0) == 2.0, "no warmup and no decay: the peak");
}

static void test_adamw(void)
{
	trail_error e = {0};
	trail_model_cfg c = {.n_layer = 1, .n_head = 1, .n_embd = 4, .n_positions = 2, .vocab_size = 3};
	trail_model *m;
	trail_model_init(&c, 1, &m, &e);
	size_t n;
	float *p = trail_model_params(m, &n), *g = trail_model_grads(m, &n);
	double *rp = malloc(n * sizeof *rp), *rm = calloc(n, sizeof *rm), *rv = calloc(n, sizeof *rv), worst = 0;
	for (size_t i = 0; i < n; i++)
		rp[i] = p[i];
	trail_adamw o;
	trail_adamw_init(&o, n);
	o.weight_decay = 0.1;
	for (int t = 1; t <= 5; t++) {
		double norm = 0;
		for (size_t i = 0; i < n; i++) {
			g[i] = (float)(sin((double)(i * t)) * (t == 3 ? 50 : 1)); /* step 3 is clipped */
			norm += (double)g[i] * g[i];
		}
		norm = sqrt(norm);
		double clip = 2.0, s = norm > clip ? clip / norm : 1, lr = 0.01 * t;
		double got = trail_adamw_step(&o, m, lr, clip);
		for (size_t i = 0; i < n; i++) {
			double gi = g[i] * s;
			rm[i] = 0.9 * rm[i] + 0.1 * gi;
			rv[i] = 0.95 * rv[i] + 0.05 * gi * gi;
			double mh = rm[i] / (1 - pow(0.9, t)), vh = rv[i] / (1 - pow(0.95, t));
			rp[i] = rp[i] * (1 - lr * 0.1) - lr * mh / (sqrt(vh) + 1e-8);
		}
		worst = fmax(worst, fabs(got - norm) / norm);
	}
	double pd = 0;
	for (size_t i = 0; i < n; i++)
		pd = fmax(pd, fabs(p[i] - rp[i]));
	ok(pd < 1e-5 && worst < 1e-6, "AdamW with weight decay and clipping against a double reference: maxdiff %.1e", pd);
	g[0] = NAN;
	float keep = p[1];
	ok(isnan(trail_adamw_step(&o, m, 0.01, 1.0)) && p[1] == keep, "a NaN gradient moves nothing");
	trail_adamw_release(&o);
	free(rp), free(rm), free(rv);
	trail_model_free(m);
}

/* zero_grads: the same step bit for bit, the gradients left zero, and the next zero_grad a no-op */
static void test_adamw_zero_grads(void)
{
	trail_error e = {0};
	trail_model_cfg c = {.n_layer = 1, .n_head = 1, .n_embd = 20, .n_positions = 3, .vocab_size = 3};
	trail_model *m[2];
	trail_adamw o[2];
	size_t n;
	for (int k = 0; k < 2; k++) {
		trail_model_init(&c, 1, &m[k], &e);
		trail_model_params(m[k], &n);
		trail_adamw_init(&o[k], n);
		o[k].zero_grads = k;
	}
	int same = 1, zeroed = 1;
	for (int t = 1; t <= 3; t++)
		for (int k = 0; k < 2; k++) {
			trail_model_zero_grad(m[k]);
			float *g = trail_model_grads(m[k], &n);
			for (size_t i = 0; i < n; i++)
				g[i] = (float)sin((double)(i * t + 1)) * (t == 2 ? 40.0f : 1.0f);
			trail_adamw_step(&o[k], m[k], 0.01, 1.0);
			if (k)
				for (size_t i = 0; i < n; i++)
					zeroed &= g[i] == 0;
		}
	float *p0 = trail_model_params(m[0], &n), *p1 = trail_model_params(m[1], &n);
	same = !memcmp(p0, p1, n * sizeof *p0);
	ok(same && zeroed && n % 16, "zero_grads: the same weights bit for bit (%zu parameters: %d), the gradients left zero (%d)", n, same, zeroed);
	for (int k = 0; k < 2; k++)
		trail_adamw_release(&o[k]), trail_model_free(m[k]);
}

static json_t *records(int n)
{
	json_t *a = json_array();
	for (int i = 0; i < n; i++) {
		char t[96];
		snprintf(t, sizeof t, "record %d: the %s lighthouse blinks %d times.", i, i % 2 ? "north" : "south", i % 7);
		json_array_append_new(a, i % 5 == 4 ? json_pack("{s:s, s:s}", "prompt", "Q? ", "completion", t)
						    : json_pack("{s:s, s:s}", "text", t, "contributor", i % 3 ? "alice" : "bob"));
	}
	return a;
}

static void test_dataset(trail_tokenizer *tk)
{
	trail_error e = {0};
	trail_dataset *d;
	json_t *r = records(10);
	ok(trail_dataset_from_records(r, tk, &d, &e) == 0 && d->n == 10, "a dataset of text and instruct records");
	ok(d->first[0] == 0 && d->first[4] == 3 && d->len[4] == 3 + strlen(json_string_value(json_object_get(json_array_get(r, 4), "completion"))) + 1 &&
	       d->tok[0][d->len[0] - 1] == trail_tokenizer_eot(tk),
	   "instruct: the loss counts the completion only; each record ends with end-of-text");
	ok(!strcmp(d->contributor[1], "alice") && !strcmp(d->contributor[0], "bob") && !d->contributor[4] &&
	       !strncmp(d->id[0], "sha256:", 7),
	   "contributors kept with their records; ids are digests");
	trail_dataset_free(d);
	json_array_append_new(r, json_pack("{s:s}", "title", "no text"));
	int rc = trail_dataset_from_records(r, tk, &d, &e);
	ok(rc == TRAIL_EDATA && e.line == 11, "a record without text: TRAIL_EDATA at record %ld", e.line);
	json_decref(r);
	r = json_array();
	ok(trail_dataset_from_records(r, tk, &d, &e) == TRAIL_EDATA, "an empty dataset: %s", e.msg);
	json_decref(r);
}

/* --long split: every target of every record is the target of exactly one row. */
static void test_split(trail_tokenizer *tk)
{
	trail_error e = {0};
	trail_dataset *d;
	json_t *r = records(10);
	enum { T = 16 };
	ok(trail_dataset_from_records(r, tk, &d, &e) == 0, "a dataset to split");
	size_t first, nlong = trail_dataset_long(d, T, &first), want = 0;
	for (size_t i = 0; i < d->n; i++)
		want += d->len[i] > T + 1;
	ok(nlong == want && nlong > 0 && d->len[first] > T + 1, "%zu of %zu records are longer than %d", nlong, d->n, T);
	ok(trail_dataset_rows(d) == d->n, "before splitting: one row per record");
	ok(trail_dataset_split(d, T, &e) == 0 && d->nrows > d->n, "split into %zu rows", d->nrows);
	int exact = 1, ordered = 1;
	int32_t x[T], y[T];
	for (size_t i = 0; i < d->n; i++) {
		long counted = 0, seen = 0;
		for (size_t t = 1; t < d->len[i]; t++)
			counted += (int32_t)t >= d->first[i];
		for (size_t k = 0; k < d->nrows; k++) {
			if (trail_dataset_row_record(d, k) != i)
				continue;
			seen += trail_dataset_row(d, k, T, x, y);
			for (int t = 0; t < T; t++)
				exact &= y[t] < 0 || y[t] == d->tok[i][d->row_off[k] + (size_t)t + 1];
		}
		exact &= seen == counted;
	}
	for (size_t k = 1; k < d->nrows; k++)
		ordered &= d->row_rec[k] > d->row_rec[k - 1] || (d->row_rec[k] == d->row_rec[k - 1] && d->row_off[k] > d->row_off[k - 1]);
	ok(exact, "each counted target of a record is a target of exactly one of its windows");
	ok(ordered, "windows in record order, then token order");
	size_t n = d->nrows;
	ok(trail_dataset_split(d, T, &e) == 0 && d->nrows == n, "splitting again gives the same rows");
	trail_dataset_free(d);
	json_decref(r);
}

static trail_train_opts opts(long steps)
{
	return (trail_train_opts){.batch = 3, .seq = 24, .steps = steps, .lr = 3e-3, .warmup = 2, .clip = 1.0, .seed = 7,
				  .threads = 1};
}

static float *train(trail_tokenizer *tk, const trail_train_opts *o, trail_train_run *run, char **manifest,
		    const char *ckpt_resume, int *rc)
{
	trail_error e = {0};
	trail_dataset *d;
	trail_model *m;
	json_t *r = records(10);
	trail_dataset_from_records(r, tk, &d, &e);
	trail_model_init(&cfg, 7, &m, &e);
	char settings[72];
	trail_train_settings(d, o, NULL, settings);
	if (ckpt_resume)
		*rc = trail_train_checkpoint_load(ckpt_resume, m, o, settings, run, &e);
	else
		*rc = trail_train_run_init(run, m, o, settings, &e);
	if (!*rc)
		*rc = trail_train(m, d, o, run, &e);
	size_t n;
	float *p = trail_model_params(m, &n), *copy = malloc(n * sizeof *copy);
	memcpy(copy, p, n * sizeof *copy);
	if (manifest) {
		json_t *man = trail_training_manifest(d, o, run, NULL);
		size_t len;
		trail_jcs(man, manifest, &len, &e);
		json_decref(man);
	}
	if (*rc)
		diag("train: %s", e.msg);
	trail_dataset_free(d);
	trail_model_free(m);
	json_decref(r);
	return copy;
}

static void test_runs(trail_tokenizer *tk)
{
	size_t n = trail_gpt2_num_params(&cfg);
	trail_train_opts o = opts(12);
	trail_train_run r1, r2, r3;
	char *man1, *man2;
	int rc1, rc2, rc3;
	float *a = train(tk, &o, &r1, &man1, NULL, &rc1), *b = train(tk, &o, &r2, &man2, NULL, &rc2);
	ok(!rc1 && !rc2 && !memcmp(a, b, n * sizeof *a) && !strcmp(man1, man2),
	   "same data, config, seed and threads: identical weights and manifest");
	ok(r1.step == 12 && r1.curve[11] < r1.curve[0], "12 steps, loss %.3f -> %.3f", r1.curve[0], r1.curve[11]);
	ok(strstr(man1, "\"contributor\":\"alice\"") && strstr(man1, "\"training_root\":\"") &&
	       strstr(man1, "\"records_order_digest\":\"sha256:") && strstr(man1, "\"loss_curve\":[") && strstr(man1, "\"threads\":1"),
	   "the manifest: contributors, training root, order digest, loss curve, threads");
	/* a checkpoint at step 5, resumed, ends where the straight run ended */
	char *ck = trail_path(dir, "ck.safetensors");
	o.checkpoint = ck;
	o.checkpoint_every = 5;
	free(train(tk, &o, &r3, NULL, NULL, &rc3));
	trail_train_run_release(&r3);
	trail_st *st;
	trail_error e = {0};
	ok(trail_st_open(ck, &st, &e) == 0 && !strcmp(json_string_value(json_object_get(trail_st_metadata(st), "step")), "10"),
	   "checkpoints every 5 steps: the last at step 10");
	trail_st_free(st);
	o.steps = 12;
	o.checkpoint_every = 0;
	/* an interrupt before the first step */
	volatile sig_atomic_t stop = 1;
	trail_train_opts os = opts(12);
	os.checkpoint = ck;
	os.stop = &stop;
	float *c = train(tk, &os, &r3, NULL, NULL, &rc3);
	ok(rc3 == TRAIL_EAGAIN && r3.step == 0, "a raised stop flag: TRAIL_EAGAIN, the state saved");
	free(c);
	trail_train_run_release(&r3);
	/* resume that (step 0) checkpoint: the full run, identical */
	char *man3;
	o.checkpoint = ck;
	c = train(tk, &o, &r3, &man3, ck, &rc3);
	ok(!rc3 && !memcmp(a, c, n * sizeof *a) && !strcmp(man1, man3), "resumed from the interrupt: identical weights and manifest");
	free(c), trail_free(man3);
	trail_train_run_release(&r3);
	/* a mid-run checkpoint: run 7 of 12 steps' worth by checkpointing at 7, resume */
	trail_train_opts o7 = opts(12);
	o7.checkpoint = ck;
	o7.checkpoint_every = 7;
	free(train(tk, &o7, &r3, NULL, NULL, &rc3));
	trail_train_run_release(&r3);
	c = train(tk, &o, &r3, &man3, ck, &rc3);
	ok(!rc3 && !memcmp(a, c, n * sizeof *a) && !strcmp(man1, man3) && r3.step == 12,
	   "resumed from step 7: identical weights and manifest");
	free(c), trail_free(man3);
	trail_train_run_release(&r3);
	/* other settings are refused */
	trail_train_opts ol = opts(12);
	ol.lr = 1e-3;
	c = train(tk, &ol, &r3, NULL, ck, &rc3);
	ok(rc3 == TRAIL_EDATA, "a checkpoint of other settings (another lr) is refused");
	free(c);
	free(a), free(b), trail_free(man1), trail_free(man2), trail_free(ck);
	trail_train_run_release(&r1);
	trail_train_run_release(&r2);
}

/* A run that goes bad after 3 good steps: its checkpoint of step 3 is kept. */
static void test_nan(trail_tokenizer *tk)
{
	trail_error e = {0};
	trail_dataset *d;
	trail_model *m;
	json_t *r = records(6);
	trail_dataset_from_records(r, tk, &d, &e);
	trail_model_init(&cfg, 7, &m, &e);
	trail_train_opts o = opts(6);
	char *ck = trail_path(dir, "nan.safetensors"), settings[72];
	o.checkpoint = ck;
	o.checkpoint_every = 3;
	trail_train_settings(d, &o, NULL, settings);
	trail_train_run run;
	trail_train_run_init(&run, m, &o, settings, &e);
	trail_train(m, d, &o, &run, &e);
	trail_train_run_release(&run);
	/* back to step 3, then the weights are damaged */
	size_t n;
	float *p = trail_model_params(m, &n), *good = malloc(n * sizeof *good);
	trail_train_checkpoint_load(ck, m, &o, settings, &run, &e);
	memcpy(good, p, n * sizeof *good);
	p[n / 2] = NAN;
	int rc = trail_train(m, d, &o, &run, &e);
	ok(rc == TRAIL_EDATA && strstr(e.msg, "not finite at step 4"), "a NaN stops the run: %s", e.msg);
	trail_st *st;
	float *saved = malloc(n * sizeof *saved);
	int64_t sh[1] = {(int64_t)n};
	ok(trail_st_open(ck, &st, &e) == 0 && trail_st_read_f32(st, "params", sh, 1, saved, &e) == 0 &&
	       !memcmp(saved, good, n * sizeof *good) && !strcmp(json_string_value(json_object_get(trail_st_metadata(st), "step")), "3"),
	   "the last good checkpoint (step 3) is kept, not overwritten");
	trail_st_free(st);
	trail_train_run_release(&run);
	/* a start whose loss is not finite: nothing good to keep, nothing written */
	unlink(ck);
	trail_train_run_init(&run, m, &o, settings, &e);
	rc = trail_train(m, d, &o, &run, &e);
	ok(rc == TRAIL_EDATA && run.step == 0 && access(ck, F_OK) != 0, "damaged weights from the start: TRAIL_EDATA at step 1, no checkpoint");
	free(saved), free(good);
	trail_free(ck);
	trail_train_run_release(&run);
	trail_model_free(m);
	trail_dataset_free(d);
	json_decref(r);
}

int main(void)
{
	trail_init();
	trail_blas_threads(1);
	if (!mkdtemp(dir))
		return 70;
	trail_tokenizer *tk;
	trail_tokenizer_bytes(&tk);
	test_schedule();
	test_adamw();
	test_adamw_zero_grads();
	test_dataset(tk);
	test_split(tk);
	test_runs(tk);
	test_nan(tk);
	trail_tokenizer_free(tk);
	char cmd[64];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	return tap_done();
}
