/*
 * Near-duplicate benchmark on planted pairs.
 *
 *   nd_bench base.ndjson pairs.ndjson > nd.json
 *
 * For every planted pair (original a from base.ndjson, edited copy b) the
 * exact 5-word-shingle Jaccard similarity is measured with the library's
 * own shingling, then:
 *   pairwise  an index holding only a is asked about b: the validator's
 *             decision for that pair (band match + score >= threshold);
 *   corpus    an index holding every base document is asked about b: the
 *             best match must be a (or a document at least as similar).
 * Prints detection rates by similarity band as JSON.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "data/data.h"
#include "../bench.h"

#define NB 10
static const double edges[NB + 1] = {0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0000001};

static int band_of(double j)
{
	/* Bands are [lo, hi), except that J = 0.5 belongs with the "<= 0.5" bands. */
	if (j == 0.5)
		return 2;
	for (int b = 0; b < NB; b++)
		if (j >= edges[b] && j < edges[b + 1])
			return b;
	return NB - 1;
}

static char **load_texts(const char *path, size_t *n)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, k = 0, m = 1024;
	char **v = malloc(m * sizeof *v);
	if (!f) {
		perror(path);
		exit(66);
	}
	while (getline(&line, &cap, f) > 0) {
		json_t *j = json_loads(line, 0, NULL);
		if (!j)
			continue;
		if (k == m)
			v = realloc(v, (m *= 2) * sizeof *v);
		v[k++] = strdup(json_string_value(json_object_get(j, "text")));
		json_decref(j);
	}
	free(line);
	fclose(f);
	*n = k;
	return v;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: nd_bench base.ndjson pairs.ndjson\n");
		return 64;
	}
	trail_init();
	size_t nbase;
	char **base = load_texts(argv[1], &nbase);
	trail_nd_params np;
	trail_nd_params_default(&np);
	int k = np.bands * np.rows;
	trail_minhasher *m;
	trail_minhasher_new(&np, &m);
	uint32_t *sig = malloc((size_t)k * 4), *sa = malloc((size_t)k * 4);

	/* The corpus index: every base document. */
	trail_ndindex *all;
	trail_ndindex_new(&np, &all);
	double t0 = now();
	for (size_t i = 0; i < nbase; i++) {
		uint8_t id[32] = {0};
		memcpy(id, &i, sizeof i);
		if (trail_minhash(m, base[i], strlen(base[i]), sig) > 0)
			trail_ndindex_add(all, sig, id);
		else
			fprintf(stderr, "document %zu has no words\n", i), exit(70);
	}
	trail_ndindex_compact(all);
	double t_index = now() - t0;

	long n[NB] = {0}, pair_hit[NB] = {0}, corp_hit[NB] = {0}, corp_self[NB] = {0};
	double jsum[NB] = {0}, scoresum[NB] = {0}, scoreerr[NB] = {0};
	FILE *f = fopen(argv[2], "r");
	char *line = NULL;
	size_t cap = 0;
	uint64_t *ha = NULL;
	size_t hacap = 0;
	long pairs = 0, spurious = 0;
	double t_query = 0;
	while (f && getline(&line, &cap, f) > 0) {
		json_t *j = json_loads(line, 0, NULL);
		if (!j)
			continue;
		size_t a = (size_t)json_integer_value(json_object_get(j, "a"));
		const char *b = json_string_value(json_object_get(j, "b"));
		const uint64_t *sh;
		long na = trail_shingles(m, base[a], strlen(base[a]), &sh);
		if ((size_t)na > hacap)
			ha = realloc(ha, (hacap = (size_t)na) * 8);
		memcpy(ha, sh, (size_t)na * 8);
		long nb = trail_shingles(m, b, strlen(b), &sh);
		if (na <= 0 || nb <= 0) {
			json_decref(j);
			continue;
		}
		double jac = trail_jaccard(ha, (size_t)na, sh, (size_t)nb);
		int bd = band_of(jac);
		n[bd]++;
		jsum[bd] += jac;
		pairs++;

		/* Pairwise decision. */
		trail_ndindex *one;
		trail_ndindex_new(&np, &one);
		uint8_t id[32] = {0};
		trail_minhash(m, base[a], strlen(base[a]), sa);
		trail_ndindex_add(one, sa, id);
		trail_minhash(m, b, strlen(b), sig);
		uint64_t o;
		double sc;
		if (trail_ndindex_query(one, sig, &o, &sc) == 1) {
			pair_hit[bd]++;
			scoresum[bd] += sc;
			scoreerr[bd] += sc - jac;
		}
		trail_ndindex_free(one);

		/* Against the whole corpus. */
		double q0 = now();
		int f2 = trail_ndindex_query(all, sig, &o, &sc);
		t_query += now() - q0;
		if (f2 == 1) {
			corp_hit[bd]++;
			if (o == a || !strcmp(base[o], base[a])) {
				corp_self[bd]++;
			} else {
				/* Another document: spurious unless it is as similar as a. */
				long no = trail_shingles(m, base[o], strlen(base[o]), &sh);
				uint64_t *hb = malloc((size_t)no * 8);
				memcpy(hb, sh, (size_t)no * 8);
				trail_shingles(m, b, strlen(b), &sh);
				double jo = trail_jaccard(hb, (size_t)no, sh, (size_t)nb);
				free(hb);
				spurious += jo <= 0.5;
			}
		}
		json_decref(j);
	}
	free(line);
	if (f)
		fclose(f);

	json_t *out = json_object(), *bands = json_array();
	long hi_n = 0, hi_hit = 0, lo_n = 0, lo_hit = 0, hi_corp = 0, lo_corp = 0;
	for (int b = 0; b < NB; b++) {
		double mean = n[b] ? jsum[b] / n[b] : 0;
		double p8 = 1;
		for (int q = 0; q < np.rows; q++)
			p8 *= mean;
		double s = 1;
		for (int q = 0; q < np.bands; q++)
			s *= 1 - p8;
		json_array_append_new(
			bands, json_pack("{s:f,s:f,s:I,s:f,s:f,s:f,s:f,s:f}", "lo", edges[b], "hi",
					 b == NB - 1 ? 1.0 : edges[b + 1], "pairs", (json_int_t)n[b],
					 "mean_jaccard", mean, "pairwise_rate",
					 n[b] ? (double)pair_hit[b] / n[b] : 0, "corpus_rate",
					 n[b] ? (double)corp_self[b] / n[b] : 0, "lsh_theory", 1 - s,
					 "score_bias", pair_hit[b] ? scoreerr[b] / pair_hit[b] : 0));
		if (edges[b] >= 0.8) {
			hi_n += n[b], hi_hit += pair_hit[b], hi_corp += corp_self[b];
		}
		if (edges[b + 1] <= 0.5 + 1e-9) {
			lo_n += n[b], lo_hit += pair_hit[b], lo_corp += corp_self[b];
		}
	}
	json_object_set_new(out, "documents", json_integer((json_int_t)nbase));
	json_object_set_new(out, "pairs", json_integer(pairs));
	json_object_set_new(out, "bands", bands);
	json_object_set_new(out, "recall_ge_0_8", json_real(hi_n ? (double)hi_hit / hi_n : 0));
	json_object_set_new(out, "recall_ge_0_8_in_corpus", json_real(hi_n ? (double)hi_corp / hi_n : 0));
	json_object_set_new(out, "pairs_ge_0_8", json_integer(hi_n));
	json_object_set_new(out, "fp_le_0_5", json_real(lo_n ? (double)lo_hit / lo_n : 0));
	json_object_set_new(out, "fp_le_0_5_in_corpus", json_real(lo_n ? (double)lo_corp / lo_n : 0));
	json_object_set_new(out, "pairs_le_0_5", json_integer(lo_n));
	json_object_set_new(out, "spurious_matches_le_0_5", json_integer(spurious));
	json_object_set_new(out, "index_seconds", json_real(t_index));
	json_object_set_new(out, "query_us", json_real(pairs ? t_query / pairs * 1e6 : 0));
	json_object_set_new(out, "index_bytes_per_record",
			    json_real((double)trail_ndindex_bytes(all) / (double)nbase));
	char *s = json_dumps(out, JSON_INDENT(1) | JSON_REAL_PRECISION(5));
	puts(s);
	free(s);
	json_decref(out);
	trail_ndindex_free(all);
	trail_minhasher_free(m);
	return 0;
}
