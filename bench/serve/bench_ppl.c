/*
 * Perplexity by serving precision: a base model (its tokenizer beside it,
 * else bytes) over held-out NDJSON records {"text": ...}, each record its
 * own sequence (end-of-text first where the tokenizer has one, cut at the
 * context), prefilled in one step with every position's logits. For fp32,
 * bf16 and int8: the perplexity of every next token, and how often the
 * most likely token is fp32's. Prints one JSON line per precision.
 *
 * usage: bench_ppl BASE HELDOUT.ndjson THREADS
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/core.h"
#include "model/model.h"

static int die(const char *what, const trail_error *e)
{
	fprintf(stderr, "bench_ppl: %s: %s\n", what, e ? e->msg : "failed");
	exit(70);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: bench_ppl BASE HELDOUT.ndjson THREADS\n");
		return 64;
	}
	trail_init();
	trail_error e = {0};
	trail_infer *m;
	trail_tokenizer *tk;
	if (trail_infer_load(argv[1], &m, &e))
		die("load", &e);
	if (trail_tokenizer_load(argv[1], &tk, &e) && trail_tokenizer_bytes(&tk))
		die("tokenizer", &e);
	trail_infer_set_threads(m, atoi(argv[3]));
	const trail_model_cfg *c = trail_infer_config(m);
	int V = c->vocab_size, P = c->n_positions;
	FILE *f = fopen(argv[2], "r");
	if (!f)
		die(argv[2], NULL);
	/* every record's tokens, end to end; starts[r] its first */
	int32_t *all = NULL;
	size_t na = 0, cap = 0, *starts = NULL, nr = 0;
	char *line = NULL;
	size_t ll = 0;
	ssize_t got;
	while ((got = getline(&line, &ll, f)) > 0) {
		json_t *j = json_loadb(line, (size_t)got, 0, NULL);
		const char *t = json_string_value(json_object_get(j, "text"));
		int32_t *ids;
		size_t n;
		if (t && !trail_tokenizer_encode(tk, t, strlen(t), &ids, &n, &e)) {
			int32_t eot = trail_tokenizer_eot(tk);
			size_t k = (eot >= 0) + n > (size_t)P ? (size_t)P : (eot >= 0) + n;
			if (na + k + 1 > cap) {
				cap = 2 * (na + k + 1);
				all = realloc(all, cap * sizeof *all);
			}
			starts = realloc(starts, (nr + 2) * sizeof *starts);
			starts[nr++] = na;
			if (eot >= 0)
				all[na++] = eot;
			for (size_t i = 0; na - starts[nr - 1] < k; i++)
				all[na++] = ids[i];
			trail_free(ids);
		}
		json_decref(j);
	}
	fclose(f);
	free(line);
	starts[nr] = na;
	float *lg = malloc(sizeof *lg * (size_t)P * V);
	int32_t *best = malloc(sizeof *best * na);
	int *pos = malloc(sizeof *pos * P), *rows = malloc(sizeof *rows * P);
	trail_kvc **kv = malloc(sizeof *kv * P);
	const trail_lora_w **lw = calloc((size_t)P, sizeof *lw);
	static const int precs[3] = {TRAIL_PREC_FP32, TRAIL_PREC_BF16, TRAIL_PREC_INT8};
	double nll32 = 0;
	for (int pi = 0; pi < 3; pi++) {
		if (trail_infer_set_precision(m, precs[pi], &e))
			die("precision", &e);
		double nll = 0;
		size_t cnt = 0, agree = 0;
		for (size_t r = 0; r < nr; r++) {
			int n = (int)(starts[r + 1] - starts[r]);
			if (n < 2)
				continue;
			trail_kvc *cache = trail_kvc_new(m, n);
			for (int i = 0; i < n; i++)
				pos[i] = i, rows[i] = i, kv[i] = cache;
			if (trail_infer_step(m, n, all + starts[r], pos, kv, lw, n, rows, lg, &e))
				die("step", &e);
			for (int i = 0; i + 1 < n; i++) {
				const float *l = lg + (size_t)i * V;
				double mx = l[0], s = 0;
				int arg = 0;
				for (int v = 1; v < V; v++)
					if (l[v] > mx)
						mx = l[v], arg = v;
				for (int v = 0; v < V; v++)
					s += exp(l[v] - mx);
				nll += log(s) + mx - l[all[starts[r] + i + 1]];
				cnt++;
				if (pi == 0)
					best[starts[r] + i] = arg;
				else
					agree += best[starts[r] + i] == arg;
			}
			trail_kvc_free(cache);
		}
		if (pi == 0)
			nll32 = nll;
		printf("{\"what\":\"perplexity\",\"precision\":\"%s\",\"isa\":\"%s\",\"records\":%zu,\"tokens\":%zu,"
		       "\"nll_per_token\":%.5f,\"perplexity\":%.4f,\"vs_fp32\":%.5f,\"top1_same_as_fp32\":%.4f,"
		       "\"weight_bytes_per_step\":%zu}\n",
		       trail_precision_name(precs[pi]), trail_compute_isa(), nr, cnt, nll / cnt, exp(nll / cnt),
		       exp(nll / cnt) / exp(nll32 / cnt), pi ? (double)agree / cnt : 1.0, trail_infer_step_bytes(m));
		fflush(stdout);
	}
	free(lg), free(best), free(pos), free(rows), free(kv), free(lw), free(all), free(starts);
	trail_tokenizer_free(tk);
	trail_infer_free(m);
	return 0;
}
