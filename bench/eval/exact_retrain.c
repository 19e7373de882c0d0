/*
 * Retrains for the exact audit's LDS (bench/eval/exact.sh, DROP=1): the
 * full run of ADAPTER's training.json again, the same batches in the same
 * order, with the records not in each mask dropped from their batches
 * (their targets ignored, the gradient scaled by K_kept / K, K the whole
 * batch's targets): eps_i = 0 for the dropped records, the counterfactual
 * the metagradient is the derivative of. Each retrained adapter is saved
 * as OUTDIR/NN.
 *
 * usage: exact_retrain BASE ADAPTER DATA OUTDIR MASK...
 * Exit status: 0 ok, 64 usage, 65 bad data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "data/data.h"
#include "job/job.h"
#include "model/model.h"
#include "model/model_int.h"

static int die(const char *what, const trail_error *err)
{
	fprintf(stderr, "exact_retrain: error: %s: %s\n", what, err ? err->msg : "");
	return 65;
}

int main(int argc, char **argv)
{
	trail_error err = {0};
	trail_tokenizer *tk = NULL;
	trail_dataset *d = NULL;
	json_t *recs = json_array();
	void *buf;
	size_t len;
	if (argc < 6) {
		fprintf(stderr, "usage: exact_retrain BASE ADAPTER DATA OUTDIR MASK...\n");
		return 64;
	}
	trail_init();
	trail_compute_set(1, TRAIL_PREC_FP32, NULL);
	char *tp = trail_path(argv[2], "training.json");
	json_t *man = json_load_file(tp, 0, NULL), *h = json_object_get(man, "hyperparameters"), *lo = json_object_get(man, "lora");
	if (!man || trail_tokenizer_load(argv[1], &tk, &err) || trail_read_file(argv[3], (size_t)1 << 32, &buf, &len, &err) ||
	    trail_source_records(buf, len, argv[3], 0, recs, &err) || trail_dataset_from_records(recs, tk, &d, &err))
		return die(argv[3], &err);
	trail_train_opts o = {
		.batch = (int)json_integer_value(json_object_get(h, "batch")), .seq = (int)json_integer_value(json_object_get(h, "seq")),
		.steps = (long)json_integer_value(json_object_get(h, "steps")), .lr = json_number_value(json_object_get(h, "lr")),
		.warmup = (long)json_integer_value(json_object_get(h, "warmup")), .clip = json_number_value(json_object_get(h, "clip")),
		.seed = (uint64_t)json_integer_value(json_object_get(h, "seed"))};
	trail_lora_config lc = {.r = (int)json_integer_value(json_object_get(lo, "r")),
				.alpha = json_number_value(json_object_get(lo, "alpha"))};
	size_t k;
	json_t *t;
	json_array_foreach(json_object_get(lo, "target_modules"), k, t) trail_lora_targets_parse(json_string_value(t), &lc.targets);
	size_t n = d->n, B = (size_t)o.batch, S = (size_t)o.seq;
	size_t *perm = malloc(n * sizeof *perm);
	int32_t *x = malloc(B * S * sizeof *x), *y = malloc(B * S * sizeof *y);
	char *keep = malloc(n);
	for (int a = 5; a < argc; a++) {
		FILE *f = fopen(argv[a], "r");
		long i;
		memset(keep, 0, n);
		while (f && fscanf(f, "%ld", &i) == 1)
			if (i >= 0 && (size_t)i < n)
				keep[i] = 1;
		if (f)
			fclose(f);
		trail_model *m = NULL;
		trail_adamw opt;
		size_t np;
		if (trail_model_load(argv[1], &m, &err) || trail_model_add_lora(m, &lc, o.seed, &err))
			return die(argv[1], &err);
		trail_model_params(m, &np);
		trail_adamw_init(&opt, np);
		uint64_t epoch = UINT64_MAX;
		for (long s = 0; s < o.steps; s++) {
			long K = 0, Kall = 0;
			for (size_t b = 0; b < B; b++) {
				uint64_t g = (uint64_t)s * B + b;
				if (g / n != epoch)
					trail_train_order(perm, n, o.seed, epoch = g / n);
				size_t r = perm[g % n];
				trail_dataset_row(d, r, o.seq, x + b * S, y + b * S);
				for (size_t j = 0; j < S; j++) {
					Kall += y[b * S + j] >= 0;
					if (!keep[trail_dataset_row_record(d, r)])
						y[b * S + j] = -1;
					K += y[b * S + j] >= 0;
				}
			}
			float loss;
			trail_model_zero_grad(m);
			if (K && (trail_model_forward(m, x, y, o.batch, o.seq, &loss, &err) || trail_model_backward(m, &err)))
				return die("step", &err);
			if (K && K != Kall) { /* the batch loss is sum_kept l_b / K: the forward's mean is over K_kept */
				size_t ng;
				float *gr = trail_model_grads(m, &ng), f = (float)((double)K / (double)Kall);
				for (size_t j = 0; j < ng; j++)
					gr[j] *= f;
			}
			/* a batch of dropped records only: zero gradients, the moments still move the weights */
			trail_adamw_step(&opt, m, trail_lr_schedule(o.lr, s, o.warmup, o.steps), o.clip);
		}
		char out[4096];
		snprintf(out, sizeof out, "%s/%02d", argv[4], a - 5);
		if (trail_model_save_adapter(m, out, argv[1], &err))
			return die(out, &err);
		trail_adamw_release(&opt);
		trail_model_free(m);
	}
	return 0;
}
