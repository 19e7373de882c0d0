/*
 * Attribution quality helper: full score vectors and query losses through
 * libtrail, for the linear datamodeling score and the poisoning check
 * (bench/eval/quality.sh drives it; analysis is in bench/eval/analyse.py).
 *
 *   quality scores MODEL ADAPTER DATA QUERIES METHOD OUT [INDEX]
 *       scores [nq, N] float32 (little-endian, row per query) of every
 *       training record for each query, as attr-score computes them: the
 *       query gradient of the answer's log-likelihood given the prompt
 *       (trail_attr_query_grad), scored against the whole index in one call
 *       (trail_attr_score). Prints {"method","queries","records","grad_s","score_s"}.
 *   quality self MODEL ADAPTER DATA OUT [INDEX]
 *       self-influence g_i^T (F + lambda I)^-1 g_i of every record, float32 [N].
 *   quality ckpt MODEL ADAPTER CHECKPOINT OUT
 *       the adapter of a training checkpoint (mf-train --checkpoint-every):
 *       ADAPTER's layout with the checkpoint's trainable parameters, written
 *       to OUT as a PEFT directory, for tracin's --checkpoint; prints the step.
 *       ADAPTER "-": a whole-model run, MODEL the trained model, OUT a model.
 *
 * ADAPTER "-" everywhere: no adapter (the index covers the model's weights).
 *   quality loss MODEL QUERIES ADAPTER...
 *       for each adapter (on MODEL), one line: the mean loss of each query's
 *       completion tokens given its prompt, space separated, in query order.
 *
 * QUERIES: NDJSON {"prompt","completion"} (the byte or model tokenizer).
 * Exit status: 0 ok, 64 usage, 65 bad data, 70 internal error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attr/attr.h"
#include "model/model.h"
#include "core/core.h"
#include "job/job.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int die(const char *what, const trail_error *err)
{
	fprintf(stderr, "quality: error: %s: %s\n", what, err->msg);
	return 65;
}

/* One query: prompt then completion tokens; first = the first completion token. */
typedef struct query {
	int32_t *tok;
	size_t n, first;
} query;

static int read_queries(const char *path, const trail_tokenizer *tk, size_t P, query **out, size_t *nq,
			trail_error *err)
{
	json_error_t je;
	FILE *f = fopen(path, "r");
	if (!f)
		return trail_error_set(err, TRAIL_ENOINPUT, "cannot open the queries");
	query *q = NULL;
	size_t n = 0;
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, f) > 0) {
		json_t *j = json_loads(line, 0, &je);
		const char *p = j ? json_string_value(json_object_get(j, "prompt")) : NULL;
		const char *c = j ? json_string_value(json_object_get(j, "completion")) : NULL;
		int32_t *pt = NULL, *ct = NULL;
		size_t np = 0, nc = 0;
		if (!p || !c || !*p || trail_tokenizer_encode(tk, p, strlen(p), &pt, &np, err) ||
		    trail_tokenizer_encode(tk, c, strlen(c), &ct, &nc, err) || !np || !nc || np + nc > P) {
			json_decref(j);
			fclose(f);
			free(line);
			return trail_error_set(err, TRAIL_EDATA, "query %zu: no prompt or completion, or longer than the context", n + 1);
		}
		q = realloc(q, (n + 1) * sizeof *q);
		q[n].tok = malloc((np + nc) * sizeof(int32_t));
		memcpy(q[n].tok, pt, np * sizeof(int32_t));
		memcpy(q[n].tok + np, ct, nc * sizeof(int32_t));
		q[n].n = np + nc;
		q[n].first = np;
		n++;
		trail_free(pt), trail_free(ct);
		json_decref(j);
	}
	free(line);
	fclose(f);
	*out = q;
	*nq = n;
	return TRAIL_OK;
}

static int write_floats(const char *path, const float *v, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(v, sizeof *v, n, f) != n || fclose(f)) {
		fprintf(stderr, "quality: error: %s: cannot write\n", path);
		return 74;
	}
	return 0;
}

static int cmd_scores(int argc, char **argv, int self)
{
	trail_error err = {0};
	trail_attr_opts o = {.model = argv[2], .adapter = strcmp(argv[3], "-") ? argv[3] : NULL, .data = argv[4], .top = 1, .min_span = 8,
			     .near = 0.8, .max_count = 16};
	const char *out;
	int method = TRAIL_ATTR_INFLUENCE;
	if (self) {
		out = argv[5];
		o.index = argc > 6 ? argv[6] : NULL;
	} else {
		if ((method = trail_attr_method(argv[6])) < 0) {
			fprintf(stderr, "quality: error: unknown method %s\n", argv[6]);
			return 64;
		}
		out = argv[7];
		o.index = argc > 8 ? argv[8] : NULL;
	}
	o.method = method;
	trail_attr_session *s = NULL;
	if (trail_attr_session_open(&o, &s, &err))
		return die("open", &err);
	const trail_attr_ctx *c = trail_attr_session_ctx(s);
	size_t N = trail_attr_index_info(c->index)->nrecords, D = trail_attr_index_info(c->index)->dim;
	if (self) {
		float *v = malloc(N * sizeof *v);
		if (trail_attr_self_influence(c->index, v, &err))
			return die("self-influence", &err);
		int rc = write_floats(out, v, N);
		free(v);
		trail_attr_session_free(s);
		return rc;
	}
	query *q;
	size_t nq;
	if (read_queries(argv[5], c->tk, (size_t)trail_model_config(c->model)->n_positions, &q, &nq, &err))
		return die(argv[5], &err);
	size_t rows = (size_t)trail_attr_query_rows(c->index, method);
	float *g = malloc(nq * rows * D * sizeof *g), *sc = malloc(nq * N * sizeof *sc);
	double t0 = now();
	for (size_t i = 0; i < nq; i++)
		if (trail_attr_query_grad(c->index, c->proj, c->model, method, q[i].tok, q[i].n, q[i].first,
					  g + i * rows * D, &err))
			return die("query gradient", &err);
	double t1 = now();
	if (trail_attr_score(c->index, method, g, (int)nq, sc, &err))
		return die("score", &err);
	double t2 = now();
	int rc = write_floats(out, sc, nq * N);
	printf("{\"method\":\"%s\",\"queries\":%zu,\"records\":%zu,\"grad_s\":%.4f,\"score_s\":%.4f}\n",
	       trail_attr_method_name(method), nq, N, t1 - t0, t2 - t1);
	for (size_t i = 0; i < nq; i++)
		free(q[i].tok);
	free(q), free(g), free(sc);
	trail_attr_session_free(s);
	return rc;
}

static int cmd_loss(int argc, char **argv)
{
	trail_error err = {0};
	trail_tokenizer *tk = NULL;
	trail_model *m = NULL;
	if (trail_model_load(argv[2], &m, &err))
		return die(argv[2], &err);
	if (trail_tokenizer_load(argv[2], &tk, &err))
		return die("tokenizer", &err);
	query *q;
	size_t nq;
	size_t P = (size_t)trail_model_config(m)->n_positions;
	if (read_queries(argv[3], tk, P, &q, &nq, &err))
		return die(argv[3], &err);
	trail_model_free(m);
	int32_t *y = malloc(P * sizeof *y);
	for (int a = 4; a < argc; a++) {
		if (trail_model_load(argv[2], &m, &err) || trail_model_load_adapter(m, argv[a], &err))
			return die(argv[a], &err);
		for (size_t i = 0; i < nq; i++) {
			for (size_t t = 0; t < q[i].n; t++)
				y[t] = t + 1 < q[i].n && t + 1 >= q[i].first ? q[i].tok[t + 1] : -1;
			float loss;
			if (trail_model_forward(m, q[i].tok, y, 1, (int)q[i].n, &loss, &err))
				return die("forward", &err);
			printf(i ? " %.7g" : "%.7g", (double)loss);
		}
		putchar('\n');
		trail_model_free(m);
		m = NULL;
	}
	free(y);
	trail_tokenizer_free(tk);
	return fflush(stdout) ? 74 : 0;
}

static int cmd_ckpt(char **argv)
{
	trail_error err = {0};
	trail_model *m = NULL;
	trail_st *st = NULL;
	int whole = !strcmp(argv[3], "-");
	if (trail_model_load(argv[2], &m, &err) || (!whole && trail_model_load_adapter(m, argv[3], &err)))
		return die(argv[3], &err);
	if (trail_st_open(argv[4], &st, &err))
		return die(argv[4], &err);
	size_t n;
	float *p = trail_model_params(m, &n);
	int64_t shape[1] = {(int64_t)n};
	if (trail_st_read_f32(st, "params", shape, 1, p, &err))
		return die(argv[4], &err);
	const char *step = json_string_value(json_object_get(trail_st_metadata(st), "step"));
	if (whole ? trail_model_save(m, argv[5], &err) : trail_model_save_adapter(m, argv[5], argv[2], &err))
		return die(argv[5], &err);
	printf("%s\n", step ? step : "?");
	trail_st_free(st);
	trail_model_free(m);
	return 0;
}

int main(int argc, char **argv)
{
	trail_init();
	trail_blas_threads(1);
	if (argc >= 8 && !strcmp(argv[1], "scores"))
		return cmd_scores(argc, argv, 0);
	if (argc >= 6 && !strcmp(argv[1], "self"))
		return cmd_scores(argc, argv, 1);
	if (argc == 6 && !strcmp(argv[1], "ckpt"))
		return cmd_ckpt(argv);
	if (argc >= 5 && !strcmp(argv[1], "loss"))
		return cmd_loss(argc, argv);
	fprintf(stderr, "usage: quality scores MODEL ADAPTER DATA QUERIES METHOD OUT [INDEX]\n"
			"       quality self MODEL ADAPTER DATA OUT [INDEX]\n"
			"       quality ckpt MODEL ADAPTER CHECKPOINT OUT\n"
			"       quality loss MODEL QUERIES ADAPTER...\n");
	return 64;
}
