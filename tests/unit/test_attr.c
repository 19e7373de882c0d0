/*
 * The influence engine: fp16, projections against an explicit dW, batch
 * rows against single sequences, every scoring method against a naive
 * double-precision reference, influence against exact leave-one-out and
 * the exact inverse Hessian on logistic regression, the index file's
 * checks, and copy clusters.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attr/attr.h"
#include "core/core.h"
#include "tap.h"
#include "model/model.h"
#include "job/job.h"

static uint64_t rs = 0x9E3779B97F4A7C15ULL;
static double urand(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return (double)(rs >> 11) / 9007199254740992.0;
}
static double nrand(void)
{
	double u = urand() + 1e-12, v = urand();
	return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static trail_dataset *dataset(size_t n, const trail_tokenizer *tk, int copy)
{
	json_t *a = json_array();
	char t[128];
	for (size_t i = 0; i < n; i++) {
		snprintf(t, sizeof t, "record %zu says the lighthouse keeper number %zu counts %zu gulls.", i, i * 7, i % 5);
		if (copy && i == n - 1) /* the last record copies record 1, under another name */
			snprintf(t, sizeof t, "record %d says the lighthouse keeper number %d counts %d gulls.", 1, 7, 1);
		char who[16];
		snprintf(who, sizeof who, "c%zu", copy && i == n - 1 ? (size_t)9 : i % 3);
		json_array_append_new(a, json_pack("{s:s, s:s}", "text", t, "contributor", who));
	}
	trail_dataset *d = NULL;
	trail_dataset_from_records(a, tk, &d, NULL);
	json_decref(a);
	return d;
}

static double pearson(const double *a, const double *b, size_t n)
{
	double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
	for (size_t i = 0; i < n; i++)
		ma += a[i] / n, mb += b[i] / n;
	for (size_t i = 0; i < n; i++) {
		sab += (a[i] - ma) * (b[i] - mb);
		saa += (a[i] - ma) * (a[i] - ma);
		sbb += (b[i] - mb) * (b[i] - mb);
	}
	return sab / sqrt(saa * sbb);
}

/* ---- logistic regression: exact leave-one-out and the exact inverse Hessian --------------- */

#define LN 120
#define LD 6

static double sigm(double z)
{
	return 1 / (1 + exp(-z));
}

/* Newton's method on mean log-loss + (reg/2)|w|^2 over the points not excluded. */
static void fit(double X[LN][LD], const int *y, int skip_i, double reg, double *w)
{
	for (int it = 0; it < 50; it++) {
		double g[LD] = {0}, H[LD][LD] = {{0}};
		int n = 0;
		for (int i = 0; i < LN; i++) {
			if (i == skip_i)
				continue;
			n++;
			double p = sigm(0), z = 0;
			for (int d = 0; d < LD; d++)
				z += X[i][d] * w[d];
			p = sigm(z);
			for (int d = 0; d < LD; d++) {
				g[d] += (p - y[i]) * X[i][d];
				for (int e = 0; e < LD; e++)
					H[d][e] += p * (1 - p) * X[i][d] * X[i][e];
			}
		}
		for (int d = 0; d < LD; d++) {
			g[d] = g[d] / n + reg * w[d];
			for (int e = 0; e < LD; e++)
				H[d][e] = H[d][e] / n + (d == e ? reg : 0);
		}
		/* solve H s = g by Gaussian elimination */
		double A[LD][LD + 1];
		for (int d = 0; d < LD; d++) {
			memcpy(A[d], H[d], sizeof H[d]);
			A[d][LD] = g[d];
		}
		for (int c = 0; c < LD; c++)
			for (int r = c + 1; r < LD; r++) {
				double f = A[r][c] / A[c][c];
				for (int k = c; k <= LD; k++)
					A[r][k] -= f * A[c][k];
			}
		double s[LD];
		for (int r = LD - 1; r >= 0; r--) {
			s[r] = A[r][LD];
			for (int k = r + 1; k < LD; k++)
				s[r] -= A[r][k] * s[k];
			s[r] /= A[r][r];
		}
		for (int d = 0; d < LD; d++)
			w[d] -= s[d];
	}
}

static double loss_at(const double *x, int y, const double *w)
{
	double z = 0;
	for (int d = 0; d < LD; d++)
		z += x[d] * w[d];
	return -(y ? log(sigm(z)) : log(1 - sigm(z)));
}

static void logistic(const char *path, const trail_tokenizer *tk)
{
	static double X[LN][LD];
	int y[LN];
	double wt[LD], w[LD] = {0}, reg = 1e-3;
	for (int d = 0; d < LD; d++)
		wt[d] = nrand();
	for (int i = 0; i < LN; i++) {
		double z = 0;
		for (int d = 0; d < LD; d++)
			z += (X[i][d] = nrand()) * wt[d];
		y[i] = urand() < sigm(z); /* labels drawn from the model: the Fisher is the Hessian in expectation */
	}
	fit(X, y, -1, reg, w);
	trail_dataset *d = dataset(LN, tk, 0);
	trail_attr_ident id = {.model = "sha256:0", .root = ""};
	memcpy(id.root, d->root, 44);
	trail_attr_params p = {.seed = 1, .k_in = LD, .k_out = 1, .damping = 1e-3};
	trail_attr_builder *b = NULL;
	trail_attr_index *x = NULL;
	int rc = trail_attr_builder_new(path, NULL, &id, &p, LN, 1, &b, NULL);
	for (int i = 0; !rc && i < LN; i++) {
		float g[LD];
		double z = 0;
		for (int e = 0; e < LD; e++)
			z += X[i][e] * w[e];
		for (int e = 0; e < LD; e++)
			g[e] = (float)((sigm(z) - y[i]) * X[i][e]);
		rc = trail_attr_builder_add(b, 0, (size_t)i, g, NULL);
	}
	rc = rc ? rc : trail_attr_builder_finish(b, d, NULL);
	ok(!rc && !trail_attr_index_open(path, &x, NULL), "an index of logistic-regression gradients");
	/* a test point, its loss gradient, exact leave-one-out changes of its loss */
	double xq[LD];
	int yq = 1;
	for (int e = 0; e < LD; e++)
		xq[e] = nrand();
	float q[LD];
	double zq = 0;
	for (int e = 0; e < LD; e++)
		zq += xq[e] * w[e];
	for (int e = 0; e < LD; e++)
		q[e] = (float)((sigm(zq) - yq) * xq[e]);
	float sc[LN];
	double s[LN], loo[LN], ih[LN];
	ok(x && !trail_attr_score(x, TRAIL_ATTR_INFLUENCE, q, 1, sc, NULL), "influence scores");
	/* exact inverse Hessian of the mean loss at the optimum */
	double H[LD][LD] = {{0}};
	for (int i = 0; i < LN; i++) {
		double z = 0;
		for (int e = 0; e < LD; e++)
			z += X[i][e] * w[e];
		double pp = sigm(z) * (1 - sigm(z)) / LN;
		for (int a = 0; a < LD; a++)
			for (int c = 0; c < LD; c++)
				H[a][c] += pp * X[i][a] * X[i][c];
	}
	for (int a = 0; a < LD; a++)
		H[a][a] += reg;
	for (int i = 0; i < LN; i++) {
		double wi[LD];
		memcpy(wi, w, sizeof wi);
		fit(X, y, i, reg, wi);
		loo[i] = loss_at(xq, yq, wi) - loss_at(xq, yq, w); /* removing a helpful record raises the loss */
		s[i] = sc[i];
		/* exact g_q^T H^-1 g_i by solving H v = g_i */
		double A[LD][LD + 1], v[LD], z = 0;
		for (int e = 0; e < LD; e++)
			z += X[i][e] * w[e];
		for (int a = 0; a < LD; a++) {
			memcpy(A[a], H[a], sizeof H[a]);
			A[a][LD] = (sigm(z) - y[i]) * X[i][a];
		}
		for (int c = 0; c < LD; c++)
			for (int r = c + 1; r < LD; r++) {
				double f = A[r][c] / A[c][c];
				for (int k = c; k <= LD; k++)
					A[r][k] -= f * A[c][k];
			}
		for (int r = LD - 1; r >= 0; r--) {
			v[r] = A[r][LD];
			for (int k = r + 1; k < LD; k++)
				v[r] -= A[r][k] * v[k];
			v[r] /= A[r][r];
		}
		ih[i] = 0;
		for (int e = 0; e < LD; e++)
			ih[i] += q[e] * v[e];
	}
	double r1 = pearson(s, loo, LN), r2 = pearson(s, ih, LN);
	ok(r1 > 0.9, "influence predicts exact leave-one-out loss changes (Pearson %.4f)", r1);
	ok(r2 > 0.95, "influence agrees with the exact inverse-Hessian solution (Pearson %.4f)", r2);
	int agree = 0;
	for (int i = 0; i < LN; i++)
		agree += (s[i] > 0) == (loo[i] > 0);
	ok(agree >= LN * 9 / 10, "and with the sign of the leave-one-out change (%d of %d)", agree, LN);
	trail_attr_index_free(x);
	trail_dataset_free(d);
}

/* ---- softmax regression: EK-FAC against the exact inverse Hessian and leave-one-out ---------- */

#define SN 200
#define SK 3
#define SF 5
#define SP (SK * SF)

/* Solve A x = b (n x n, destroyed) by Gaussian elimination with partial pivoting; x in b. */
static void gauss_solve(int n, double *A, double *b)
{
	for (int c = 0; c < n; c++) {
		int pv = c;
		for (int r = c + 1; r < n; r++)
			pv = fabs(A[r * n + c]) > fabs(A[pv * n + c]) ? r : pv;
		for (int k = 0; k < n; k++) {
			double t = A[c * n + k];
			A[c * n + k] = A[pv * n + k], A[pv * n + k] = t;
		}
		double t = b[c];
		b[c] = b[pv], b[pv] = t;
		for (int r = c + 1; r < n; r++) {
			double f = A[r * n + c] / A[c * n + c];
			for (int k = c; k < n; k++)
				A[r * n + k] -= f * A[c * n + k];
			b[r] -= f * b[c];
		}
	}
	for (int r = n - 1; r >= 0; r--) {
		for (int k = r + 1; k < n; k++)
			b[r] -= A[r * n + k] * b[k];
		b[r] /= A[r * n + r];
	}
}

static void softmax_p(const double *W, const double *x, double *p)
{
	double z[SK], mx = -1e300, s = 0;
	for (int k = 0; k < SK; k++) {
		z[k] = 0;
		for (int f = 0; f < SF; f++)
			z[k] += W[k * SF + f] * x[f];
		mx = z[k] > mx ? z[k] : mx;
	}
	for (int k = 0; k < SK; k++)
		s += p[k] = exp(z[k] - mx);
	for (int k = 0; k < SK; k++)
		p[k] /= s;
}

/* The Hessian of the mean loss + (reg/2)|W|^2 over the points not skipped (H [SP,SP]) and the gradient. */
static void softmax_hg(double X[SN][SF], const int *y, int skip, double reg, const double *W, double *H, double *g)
{
	int n = 0;
	memset(H, 0, sizeof(double) * SP * SP);
	memset(g, 0, sizeof(double) * SP);
	for (int i = 0; i < SN; i++) {
		if (i == skip)
			continue;
		n++;
		double p[SK];
		softmax_p(W, X[i], p);
		for (int a = 0; a < SK; a++)
			for (int f = 0; f < SF; f++) {
				g[a * SF + f] += (p[a] - (a == y[i])) * X[i][f];
				for (int b = 0; b < SK; b++)
					for (int e = 0; e < SF; e++)
						H[(a * SF + f) * SP + b * SF + e] += (p[a] * (a == b) - p[a] * p[b]) * X[i][f] * X[i][e];
			}
	}
	for (int u = 0; u < SP; u++) {
		g[u] = g[u] / n + reg * W[u];
		for (int v = 0; v < SP; v++)
			H[u * SP + v] = H[u * SP + v] / n + (u == v ? reg : 0);
	}
}

static void softmax_fit(double X[SN][SF], const int *y, int skip, double reg, double *W)
{
	static double H[SP * SP];
	double g[SP];
	for (int it = 0; it < 30; it++) {
		softmax_hg(X, y, skip, reg, W, H, g);
		gauss_solve(SP, H, g);
		for (int u = 0; u < SP; u++)
			W[u] -= g[u];
	}
}

static double softmax_loss(const double *W, const double *x, int y)
{
	double p[SK];
	softmax_p(W, x, p);
	return -log(p[y]);
}

static void softmax_reg(const char *path, const trail_tokenizer *tk)
{
	static double X[SN][SF], H[SP * SP];
	int y[SN];
	double Wt[SP], W[SP] = {0}, reg = 1e-2, g[SP];
	for (int u = 0; u < SP; u++)
		Wt[u] = 1.5 * nrand();
	for (int i = 0; i < SN; i++) {
		double p[SK], u = urand(), c = 0;
		for (int f = 0; f < SF; f++)
			X[i][f] = nrand() * (1 + 0.5 * f); /* features of different scales: a factor worth correcting */
		softmax_p(Wt, X[i], p);
		y[i] = SK - 1;
		for (int k = 0; k < SK; k++)
			if (u < (c += p[k])) {
				y[i] = k;
				break;
			}
	}
	softmax_fit(X, y, -1, reg, W);
	trail_dataset *d = dataset(SN, tk, 0);
	trail_attr_ident id = {.model = "sha256:0"};
	memcpy(id.root, d->root, 44);
	trail_attr_params pa = {.seed = 1, .k_in = SF, .k_out = SK, .damping = 1e-2};
	trail_attr_builder *b = NULL;
	trail_attr_index *x = NULL;
	int rc = trail_attr_builder_new(path, NULL, &id, &pa, SN, 1, &b, NULL);
	for (int i = 0; !rc && i < SN; i++) { /* G_i = (p_i - e_y) x_i^T [SK,SF]: the layer's output gradient times its input */
		float gi[SP];
		double p[SK];
		softmax_p(W, X[i], p);
		for (int a = 0; a < SK; a++)
			for (int f = 0; f < SF; f++)
				gi[a * SF + f] = (float)((p[a] - (a == y[i])) * X[i][f]);
		rc = trail_attr_builder_add(b, 0, (size_t)i, gi, NULL);
	}
	rc = rc ? rc : trail_attr_builder_finish(b, d, NULL);
	ok(!rc && !trail_attr_index_open(path, &x, NULL), "an index of softmax-regression gradients (%d classes x %d features)",
	   SK, SF);
	double xq[SF], pq[SK];
	int yq = 0;
	for (int f = 0; f < SF; f++)
		xq[f] = nrand() * (1 + 0.5 * f);
	softmax_p(W, xq, pq);
	float q[SP];
	for (int a = 0; a < SK; a++)
		for (int f = 0; f < SF; f++)
			q[a * SF + f] = (float)((pq[a] - (a == yq)) * xq[f]);
	float ek[SN], inf[SN];
	double sref[SN], e[SN], fi[SN], ih[SN], loo[SN];
	ok(x && !trail_attr_score(x, TRAIL_ATTR_EKFAC, q, 1, ek, NULL) && !trail_attr_score(x, TRAIL_ATTR_INFLUENCE, q, 1, inf, NULL) &&
	   !trail_attr_score_ref(x, TRAIL_ATTR_EKFAC, q, 1, sref, NULL), "ekfac and influence scores");
	double worst = 0, scale = 0;
	for (int i = 0; i < SN; i++)
		scale = fmax(scale, fabs(sref[i]));
	for (int i = 0; i < SN; i++)
		worst = fmax(worst, fabs(ek[i] - sref[i]) / scale);
	ok(worst < 1e-4, "ekfac equals the double-precision reference of its formula (max rel %.2g)", worst);
	softmax_hg(X, y, -1, reg, W, H, g);
	for (int i = 0; i < SN; i++) {
		static double A[SP * SP];
		double v[SP], p[SK], Wi[SP];
		softmax_p(W, X[i], p);
		for (int a = 0; a < SK; a++)
			for (int f = 0; f < SF; f++)
				v[a * SF + f] = (p[a] - (a == y[i])) * X[i][f];
		memcpy(A, H, sizeof A);
		gauss_solve(SP, A, v);
		ih[i] = 0;
		for (int u = 0; u < SP; u++)
			ih[i] += q[u] * v[u];
		memcpy(Wi, W, sizeof Wi);
		softmax_fit(X, y, i, reg, Wi);
		loo[i] = softmax_loss(Wi, xq, yq) - softmax_loss(W, xq, yq);
		e[i] = ek[i], fi[i] = inf[i];
	}
	double r1 = pearson(e, ih, SN), r2 = pearson(e, loo, SN), r3 = pearson(fi, ih, SN), r4 = pearson(fi, loo, SN);
	ok(r1 > 0.85 && r1 > r3 - 0.02, "ekfac agrees with the exact inverse-Hessian solution (Pearson %.4f; "
	   "influence's full block: %.4f)", r1, r3);
	ok(r2 > 0.85, "ekfac predicts exact leave-one-out loss changes (Pearson %.4f; influence: %.4f)", r2, r4);
	trail_attr_index_free(x);
	trail_dataset_free(d);
}

/* ---- one summation order: thread count, kernel and batching give the same bits ------------------ */

/* Scores of every method for nq queries [nq, sets x D] with `threads` and the SIMD (or portable) kernel. */
static int score_all(const trail_attr_index *x, const float *q, int nq, int threads, int portable, float *out)
{
	size_t N = trail_attr_index_info(x)->nrecords, D = trail_attr_index_info(x)->dim;
	int S = trail_attr_index_info(x)->nsets, rc = 0;
	float *qq = malloc(sizeof(float) * (size_t)nq * D);
	trail_blas_threads(threads);
	if (portable)
		setenv("TRAIL_ATTR_SCALAR", "1", 1);
	for (int m = 0; m < 5; m++) {
		const float *qm = q;
		if (m != TRAIL_ATTR_TRACIN) { /* the final set's row of each query */
			for (int k = 0; k < nq; k++)
				memcpy(qq + (size_t)k * D, q + ((size_t)k * S + (size_t)S - 1) * D, sizeof(float) * D);
			qm = qq;
		}
		rc |= trail_attr_score(x, m, qm, nq, out + (size_t)m * nq * N, NULL);
	}
	unsetenv("TRAIL_ATTR_SCALAR");
	trail_blas_threads(1);
	free(qq);
	return rc;
}

static void same_bits(const trail_attr_index *x, const char *what)
{
	uint64_t saved = rs; /* its own draws: the other tests' data stay as they were */
	size_t N = trail_attr_index_info(x)->nrecords, D = trail_attr_index_info(x)->dim;
	int S = trail_attr_index_info(x)->nsets, nq = 5;
	float *q = malloc(sizeof(float) * nq * S * D), *ref = malloc(sizeof(float) * 5 * nq * N);
	float *got = malloc(sizeof(float) * 5 * nq * N);
	for (size_t i = 0; i < (size_t)nq * S * D; i++)
		q[i] = (float)nrand();
	int rc = score_all(x, q, nq, 1, 0, ref);
	static const struct {
		int threads, portable;
		const char *name;
	} cf[] = {{2, 0, "2 threads"}, {1, 1, "the portable kernel"}, {2, 1, "the portable kernel on 2 threads"}};
	for (int c = 0; c < 3; c++) {
		int r2 = score_all(x, q, nq, cf[c].threads, cf[c].portable, got);
		ok(!rc && !r2 && !memcmp(ref, got, sizeof(float) * 5 * nq * N), "%s: every method with %s gives the same bits",
		   what, cf[c].name);
	}
	/* each query alone, as in attr-score, against its row of the batch */
	int same = 1;
	for (int k = 0; k < nq; k++) {
		rc |= score_all(x, q + (size_t)k * S * D, 1, 2, k & 1, got);
		for (int m = 0; m < 5; m++)
			same &= !memcmp(got + (size_t)m * N, ref + ((size_t)m * nq + (size_t)k) * N, sizeof(float) * N);
	}
	ok(!rc && same, "%s: a query alone gives the bits of its row of a batch", what);
	free(q), free(ref), free(got);
	rs = saved;
}

/* ---- scoring against the reference --------------------------------------------------------- */

static void scoring(const char *path, const trail_tokenizer *tk)
{
	size_t N = 300;
	int S = 3, KI = 4, KO = 8, D = KI * KO;
	trail_dataset *d = dataset(N, tk, 0);
	trail_attr_ident id = {.model = "sha256:0"};
	memcpy(id.root, d->root, 44);
	trail_attr_params p = {.seed = 1, .k_in = KI, .k_out = KO, .damping = 0.05};
	trail_attr_builder *b = NULL;
	int rc = trail_attr_builder_new(path, NULL, &id, &p, N, S, &b, NULL);
	float *g = malloc(sizeof(float) * D);
	/* low-rank structure plus noise, scales from 1e-4 to 1e2, so fp16 scaling and damping both matter */
	for (int s = 0; s < S && !rc; s++) {
		rc = trail_attr_builder_set(b, s, NULL, 0.5 + s, NULL);
		for (size_t i = 0; i < N && !rc; i++) {
			double a = nrand(), c = nrand(), sc = pow(10, -4 + 6 * urand());
			for (int e = 0; e < D; e++)
				g[e] = (float)(sc * (a * sin(e + s) + c * cos(3 * e) + 0.3 * nrand()));
			rc = trail_attr_builder_add(b, s, i, g, NULL);
		}
	}
	free(g);
	ok(!rc, "rows of three gradient sets added");
	ok(!trail_attr_builder_finish(b, d, NULL), "finished");
	trail_attr_index *x = NULL;
	ok(!trail_attr_index_open(path, &x, NULL), "opens and its digest checks");
	int nq = 3;
	float *q = malloc(sizeof(float) * nq * S * D), *sc = malloc(sizeof(float) * nq * N);
	double *ref = malloc(sizeof(double) * nq * N);
	for (int i = 0; i < nq * S * D; i++)
		q[i] = (float)nrand();
	for (int m = 0; m < 5; m++) {
		int rows = trail_attr_query_rows(x, m);
		/* queries laid out as the method wants: nq blocks of rows x D */
		float *qq = malloc(sizeof(float) * nq * rows * D);
		memcpy(qq, q, sizeof(float) * nq * rows * D);
		int r1 = trail_attr_score(x, m, qq, nq, sc, NULL), r2 = trail_attr_score_ref(x, m, qq, nq, ref, NULL);
		double worst = 0, scale = 0;
		for (size_t i = 0; i < nq * N; i++)
			scale = fabs(ref[i]) > scale ? fabs(ref[i]) : scale;
		for (size_t i = 0; i < nq * N; i++)
			worst = fabs(sc[i] - ref[i]) / scale > worst ? fabs(sc[i] - ref[i]) / scale : worst;
		ok(!r1 && !r2 && worst < 1e-4, "%s: blocked fp16 scoring matches the double reference (max rel %.2g)",
		   trail_attr_method_name(m), worst);
		/* one query alone gives the same scores as inside a batch, to rounding */
		float *one = malloc(sizeof(float) * N);
		trail_attr_score(x, m, qq + (size_t)rows * D, 1, one, NULL);
		double w2 = 0;
		for (size_t i = 0; i < N; i++)
			w2 = fabs(one[i] - sc[N + i]) / scale > w2 ? fabs(one[i] - sc[N + i]) / scale : w2;
		ok(w2 < 1e-5, "%s: a query alone scores as in a batch (max rel %.2g)", trail_attr_method_name(m), w2);
		free(one);
		free(qq);
	}
	/* self-influence against the reference with q = g_i */
	float self[300];
	ok(!trail_attr_self_influence(x, self, NULL), "self-influence");
	double worst = 0;
	for (size_t i = 0; i < N; i += 37) {
		/* the dequantised row i of the final set, as a query */
		float gi[32];
		double r;
		char idb[72];
		const char *who;
		trail_attr_index_record(x, i, idb, &who);
		(void)who;
		/* score_ref of every record against e_i would be costly; use the reference solve directly */
		float *all = malloc(sizeof(float) * N);
		for (int e = 0; e < D; e++)
			gi[e] = 0;
		/* recover g_i from graddot scores against unit vectors */
		for (int e = 0; e < D; e++) {
			float u[32] = {0};
			u[e] = 1;
			trail_attr_score(x, TRAIL_ATTR_GRADDOT, u, 1, all, NULL);
			gi[e] = all[i];
		}
		double *rr = malloc(sizeof(double) * N);
		trail_attr_score_ref(x, TRAIL_ATTR_INFLUENCE, gi, 1, rr, NULL);
		r = rr[i];
		worst = fabs(r - self[i]) / fabs(r) > worst ? fabs(r - self[i]) / fabs(r) : worst;
		free(rr);
		free(all);
	}
	ok(worst < 1e-3, "self-influence is g^T (F + lambda I)^-1 g (max rel %.2g)", worst);
	same_bits(x, "300 records x 32");
	free(q), free(sc), free(ref);
	trail_attr_index_free(x);
	/* the same rows give the same bytes */
	trail_map m1;
	trail_map_file(path, &m1, NULL);
	char d1[72];
	trail_digest_str(m1.data, m1.len, d1);
	trail_unmap(&m1);
	ok(strlen(d1) == 71, "index digest %s", d1);
	trail_dataset_free(d);
}

/* 2,100 records (three DataInf chunks, several row blocks a thread) of 21 coordinates (a partial lane group) */
static void bits_chunks(const trail_tokenizer *tk)
{
	size_t N = 2100;
	int S = 2, D = 21;
	uint64_t saved = rs;
	trail_dataset *d = dataset(N, tk, 0);
	trail_attr_ident id = {.model = "sha256:0"};
	memcpy(id.root, d->root, 44);
	trail_attr_params p = {.seed = 1, .k_in = 3, .k_out = 7, .damping = 0.05};
	char path[] = "/tmp/trail-attr-XXXXXX";
	close(mkstemp(path));
	trail_attr_builder *b = NULL;
	trail_attr_index *x = NULL;
	int rc = trail_attr_builder_new(path, NULL, &id, &p, N, S, &b, NULL);
	float g[21];
	for (int s = 0; s < S && !rc; s++) {
		rc = trail_attr_builder_set(b, s, NULL, 1.0 + s, NULL);
		for (size_t i = 0; i < N && !rc; i++) {
			double sc = pow(10, -3 + 4 * urand());
			for (int e = 0; e < D; e++)
				g[e] = (float)(sc * nrand());
			rc = trail_attr_builder_add(b, s, i, g, NULL);
		}
	}
	ok(!rc && !trail_attr_builder_finish(b, d, NULL) && !trail_attr_index_open(path, &x, NULL),
	   "an index of 2,100 records x 21");
	if (x)
		same_bits(x, "2,100 records x 21");
	trail_attr_index_free(x);
	unlink(path);
	trail_dataset_free(d);
	rs = saved;
}

/* ---- the file's checks ------------------------------------------------------------------------ */

static void damage(const char *path)
{
	void *buf;
	size_t len;
	trail_error e = {0};
	trail_attr_index *x = NULL;
	trail_read_file(path, 0, &buf, &len, NULL);
	char bad[256];
	snprintf(bad, sizeof bad, "%s.bad", path);
	((uint8_t *)buf)[len / 2] ^= 1;
	trail_write_atomic(bad, buf, len, 0644, NULL);
	ok(trail_attr_index_open(bad, &x, &e) == TRAIL_EDATA && strstr(e.msg, "digest"), "a flipped bit: %s", e.msg);
	((uint8_t *)buf)[len / 2] ^= 1;
	trail_write_atomic(bad, buf, len - 100, 0644, NULL);
	ok(trail_attr_index_open(bad, &x, &e) == TRAIL_EDATA, "truncated: %s", e.msg);
	((uint8_t *)buf)[8] = 9;
	trail_write_atomic(bad, buf, len, 0644, NULL);
	ok(trail_attr_index_open(bad, &x, &e) == TRAIL_EDATA && strstr(e.msg, "rebuild"), "another version: %s", e.msg);
	memcpy(buf, "GARBAGE!", 8);
	trail_write_atomic(bad, buf, len, 0644, NULL);
	ok(trail_attr_index_open(bad, &x, &e) == TRAIL_EDATA && strstr(e.msg, "magic"), "not an index: %s", e.msg);
	ok(trail_attr_index_open("/nonexistent/idx", &x, &e) == TRAIL_ENOINPUT, "missing: %s", e.msg);
	unlink(bad);
	trail_free(buf);
}

/* ---- projections on a GPT-2 with LoRA ------------------------------------------------------------ */

static void projections(const trail_tokenizer *tk)
{
	trail_model_cfg c = {.n_layer = 2, .n_head = 2, .n_embd = 16, .n_positions = 32, .vocab_size = 257};
	trail_model *m = NULL;
	trail_lora_config lc = {.r = 4, .alpha = 8, .targets = TRAIL_LORA_C_ATTN | TRAIL_LORA_C_FC | TRAIL_LORA_MLP_PROJ};
	ok(!trail_model_init(&c, 3, &m, NULL) && !trail_model_add_lora(m, &lc, 3, NULL), "a small GPT-2 with LoRA");
	/* B is zero after init: give it values so the LoRA path matters */
	size_t np;
	float *pp = trail_model_params(m, &np);
	for (size_t i = 0; i < np; i++)
		pp[i] = (float)(0.05 * nrand());
	trail_attr_params p = {.seed = 7, .k_in = 3, .k_out = 5, .targets = lc.targets};
	trail_attr_proj *pr = NULL;
	trail_attr_params pa = {.seed = 7, .targets = lc.targets}; /* 0 x 0: the automatic size */
	ok(!trail_attr_proj_new(m, &pa, &pr, NULL) && trail_attr_proj_dim(pr) == 6 * 64 * 64,
	   "the automatic projection of 6 layers is 64 x 64 each");
	trail_attr_proj_free(pr);
	pr = NULL;
	ok(!trail_attr_proj_new(m, &p, &pr, NULL) && trail_attr_proj_nlayers(pr) == 6 && trail_attr_proj_dim(pr) == 90,
	   "projection of the 6 LoRA layers, 90 dimensions");
	trail_dataset *d = dataset(3, tk, 0);
	int T = 24;
	int32_t x[3 * 24], y[3 * 24];
	long cnt[3];
	for (int b = 0; b < 3; b++) {
		for (int t = 0; t < T; t++) {
			x[b * T + t] = d->tok[b][t];
			y[b * T + t] = t + 1 < T ? d->tok[b][t + 1] : -1;
		}
		if (b == 1) /* a shorter loss span */
			for (int t = 0; t < 10; t++)
				y[b * T + t] = -1;
		cnt[b] = 0;
		for (int t = 0; t < T; t++)
			cnt[b] += y[b * T + t] >= 0;
	}
	float loss, g[3 * 90], gr[3 * 90], g1[90];
	trail_model_keep_linear_io(m, 1);
	trail_model_zero_grad(m);
	int rc = trail_model_forward(m, x, y, 3, T, &loss, NULL) || trail_model_backward(m, NULL) ||
		 trail_attr_project(pr, m, 3, T, cnt, g, NULL) || trail_attr_project_ref(pr, m, 3, T, cnt, gr, NULL);
	double md = 0;
	ok(!rc && tap_close(g, gr, 270, 1e-4, &md), "factored projection equals P_out dW^T P_in^T of the explicit dW (maxdiff %.2g)", md);
	/* a record's row in a batch equals its gradient alone */
	int32_t first = 11;
	int32_t seq[24];
	memcpy(seq, x + T, sizeof seq);
	ok(!trail_attr_grad(pr, m, seq, (size_t)T, (size_t)first, g1, NULL), "one sequence alone");
	double mx = 0;
	for (int i = 0; i < 90; i++)
		mx = fabs(g[90 + i]) > mx ? fabs(g[90 + i]) : mx;
	ok(tap_close(g1, g + 90, 90, 1e-4 * mx, &md), "equals its row of the batch (maxdiff %.2g of %.2g)", md, mx);
	/* an index over the model's six layers: block-diagonal influence and datainf against the reference */
	trail_dataset *d2 = dataset(40, tk, 0);
	trail_attr_ident id = {.model = "sha256:0"};
	memcpy(id.root, d2->root, 44);
	char path[] = "/tmp/trail-attr-XXXXXX";
	close(mkstemp(path));
	trail_attr_builder *b = NULL;
	trail_attr_index *ix = NULL;
	p.seq = 24;
	ok(!trail_attr_builder_new(path, m, &id, &p, d2->n, 1, &b, NULL) && !trail_attr_builder_pass(b, 0, m, d2, 7, 1.0, NULL) &&
	   !trail_attr_builder_finish(b, d2, NULL) && !trail_attr_index_open(path, &ix, NULL), "an index of 40 records through the model");
	for (int meth = 0; ix && meth < 5; meth++) {
		if (meth == TRAIL_ATTR_TRACIN)
			continue;
		float sc[40];
		double ref[40], worst = 0, scale = 0;
		trail_attr_score(ix, meth, g1, 1, sc, NULL);
		trail_attr_score_ref(ix, meth, g1, 1, ref, NULL);
		for (int i = 0; i < 40; i++)
			scale = fmax(scale, fabs(ref[i]));
		for (int i = 0; i < 40; i++)
			worst = fmax(worst, fabs(sc[i] - ref[i]) / scale);
		ok(worst < 1e-4, "%s over 6 layer blocks matches the reference (max rel %.2g)", trail_attr_method_name(meth), worst);
	}
	/* a record's row equals its gradient computed alone */
	float gr2[90];
	int32_t xs[24];
	for (int t = 0; t < 24; t++)
		xs[t] = d2->tok[5][t];
	trail_attr_grad(pr, m, xs, 24, 1, gr2, NULL);
	float one[40];
	trail_attr_score(ix, TRAIL_ATTR_GRADDOT, gr2, 1, one, NULL);
	int best = 0;
	for (int i = 1; i < 40; i++)
		best = one[i] > one[best] ? i : best;
	ok(best == 5, "graddot of a record's own gradient ranks it first");
	if (ix)
		same_bits(ix, "6 layer blocks of 15");
	trail_attr_index_free(ix);
	unlink(path);
	trail_dataset_free(d2);
	trail_attr_proj_free(pr);
	trail_model_free(m);
	trail_dataset_free(d);
}

static void clusters(const trail_tokenizer *tk)
{
	trail_dataset *d = dataset(12, tk, 1);
	trail_attr_ctx c = {.data = d, .near = 0.8};
	size_t recs[2] = {11, 4};
	json_t *cl = trail_attr_clusters(&c, recs, 2);
	char *s = NULL;
	size_t n;
	trail_jcs(cl, &s, &n, NULL);
	ok(json_array_size(cl) == 1, "one cluster: %s", s ? s : "");
	json_t *c0 = json_array_get(cl, 0);
	ok(json_array_size(json_object_get(c0, "records")) == 2 &&
	   !strcmp(json_string_value(json_array_get(json_object_get(c0, "members"), 0)), "c1") &&
	   !strcmp(json_string_value(json_object_get(c0, "first")), "c1") &&
	   !strcmp(json_string_value(json_array_get(json_object_get(c0, "members"), 1)), "c9"),
	   "the copy names both contributors, the earliest first");
	trail_free(s);
	json_decref(cl);
	trail_dataset_free(d);
}

/* The confidence: the top score's z over all scores, independent of their scale. */
static void test_confidence(void)
{
	float flat[8] = {2, 2, 2, 2, 2, 2, 2, 2}, spike[8] = {0.1f, -0.2f, 0.05f, 9, 0, -0.1f, 0.2f, 0.1f}, big[8];
	for (int i = 0; i < 8; i++)
		big[i] = spike[i] * 1000;
	float z = trail_attr_confidence(spike, 8);
	ok(trail_attr_confidence(flat, 8) == 0, "equal scores: confidence 0");
	ok(z > 2.4f && z < 2.5f, "one record far above the rest: z %g (the most 8 scores allow is 7/sqrt(8))", (double)z);
	ok(fabsf(trail_attr_confidence(big, 8) - z) < 1e-5f, "the same for scores 1000 times larger");
}

int main(void)
{
	trail_init();
	test_confidence();
	/* fp16: every half survives f32 and back; rounding is to nearest even */
	int bad = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		float f = trail_attr_f32((uint16_t)h);
		if (f == f && trail_attr_f16(f) != h)
			bad++;
	}
	ok(!bad, "all 63,488 finite and infinite halves round-trip (%d bad)", bad);
	ok(trail_attr_f16(1.0f + 1.0f / 2048) == 0x3c00 && trail_attr_f16(1.0f + 3.0f / 2048) == 0x3c02 &&
	   trail_attr_f16(65520.0f) == 0x7c00 && trail_attr_f16(1e-8f) == 0 && trail_attr_f16(-2.0f) == 0xc000,
	   "ties to even, overflow to infinity, underflow to zero");
	trail_tokenizer *tk = NULL;
	trail_tokenizer_bytes(&tk);
	char path[] = "/tmp/trail-attr-XXXXXX";
	int fd = mkstemp(path);
	close(fd);
	projections(tk);
	scoring(path, tk);
	bits_chunks(tk);
	damage(path);
	logistic(path, tk);
	softmax_reg(path, tk);
	clusters(tk);
	unlink(path);
	trail_tokenizer_free(tk);
	return tap_done();
}
