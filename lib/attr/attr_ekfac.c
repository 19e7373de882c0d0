/*
 * Eigenvalue-corrected Kronecker-factored curvature (EK-FAC, George et al.
 * 2018) in the projected space. A layer's projected gradient is a matrix
 * G [k_out,k_in]; its Kronecker factors are taken from the records' own
 * gradients,
 *     S = (1/N) sum_i G_i G_i^T  [k_out,k_out],   A = (1/N) sum_i G_i^T G_i  [k_in,k_in],
 * so that everything comes from the index's rows (a shard's merge gives the
 * bits of the unsharded build). With S = Q_S diag Q_S^T and A = Q_A diag Q_A^T,
 * the curvature is diagonal in the basis Q_S (x) Q_A, with the eigenvalues
 * corrected to the second moments of the gradients there:
 *     Lambda_ab = (1/N) sum_i ((Q_S^T G_i Q_A)_ab)^2,
 * damped by lambda_l = damping * mean(Lambda_l) (the same relative damping as
 * the block solve: the mean of Lambda_l is tr(F_l) / (k_in k_out)). A query
 * Q is preconditioned as Q_S ((Q_S^T Q Q_A) / (Lambda + lambda)) Q_A^T and
 * then scored against the rows like influence: the index stores the bases
 * and Lambda, a few k^2 floats a layer, so the projection can grow well past
 * the dense block's 8,192 dimensions.
 */
#include <math.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "attr/attr_int.h"

size_t trail_attr_ekfac_floats(int k_in, int k_out)
{
	return (size_t)k_out * k_out + (size_t)k_in * k_in + (size_t)k_out * k_in;
}

/*
 * Eigenvectors of the symmetric s [n,n] (lower triangle read, double),
 * as the columns of q [n,n] (float, row major), eigenvalues ascending; each
 * vector's sign set so that its largest component is positive.
 */
static int eigvecs(double *s, int n, float *q)
{
	double *w = trail_malloc((size_t)n * sizeof *w);
	if (!w)
		return TRAIL_ENOMEM;
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			s[(size_t)i * n + j] = s[(size_t)j * n + i];
	lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'L', n, s, n, w);
	trail_free(w);
	if (info)
		return TRAIL_EINTERNAL;
	for (int j = 0; j < n; j++) {
		int at = 0;
		for (int i = 1; i < n; i++)
			if (fabs(s[(size_t)i * n + j]) > fabs(s[(size_t)at * n + j]))
				at = i;
		double sg = s[(size_t)at * n + j] < 0 ? -1 : 1;
		for (int i = 0; i < n; i++)
			q[(size_t)i * n + j] = (float)(sg * s[(size_t)i * n + j]);
	}
	return TRAIL_OK;
}

/* Rows [i, i+n) of the final set, layer l, in double: v [n*ko, ki] (records stacked) and h [ko, n*ki] (side by side). */
static void layer_rows(const uint16_t *G, const float *sc, size_t D, size_t l, int ko, int ki, size_t i, size_t n,
		       float *tmp, double *v, double *h)
{
	size_t per = (size_t)ko * ki;
	for (size_t r = 0; r < n; r++) {
		trail_attr_f16_to_f32(G + (i + r) * D + l * per, tmp, per);
		double s = sc[i + r];
		for (int o = 0; o < ko; o++)
			for (int a = 0; a < ki; a++) {
				double g = (double)tmp[(size_t)o * ki + a] * s;
				v[(r * ko + o) * ki + a] = g;
				if (h)
					h[(size_t)o * n * ki + r * ki + a] = g;
			}
	}
}

int trail_attr_ekfac_curvature(uint8_t *map, const trail_attr_hdr *h, const trail_attr_off *o, trail_error *err)
{
	size_t N = h->nrecords, D = h->dim, L = (size_t)h->nlayers, last = (size_t)h->nsets - 1;
	int ko = h->k_out, ki = h->k_in;
	size_t per = (size_t)ko * ki, E = trail_attr_ekfac_floats(ki, ko);
	const uint16_t *G = (const uint16_t *)(map + o->grads) + last * N * D;
	const float *sc = (const float *)(map + o->scales) + last * N;
	float *out = (float *)(map + o->ekfac), *lambda = (float *)(map + o->lambda) + 2 * L;
	size_t R = ((size_t)2 << 20) / (per * 8);
	R = R < 1 ? 1 : R > N ? N : R;
	double *v = trail_malloc(R * per * sizeof *v), *hz = trail_malloc(R * per * sizeof *hz);
	double *S = trail_malloc((size_t)ko * ko * sizeof *S), *A = trail_malloc((size_t)ki * ki * sizeof *A);
	double *qa = trail_malloc((size_t)ki * ki * sizeof *qa), *qs = trail_malloc((size_t)ko * ko * sizeof *qs);
	double *lam = trail_malloc(per * sizeof *lam);
	float *tmp = trail_malloc(per * sizeof *tmp);
	int rc = TRAIL_OK;
	if (!v || !hz || !S || !A || !qa || !qs || !lam || !tmp) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t l = 0; l < L && !rc; l++) {
		float *Qs = out + l * E, *Qa = Qs + (size_t)ko * ko, *Lam = Qa + (size_t)ki * ki;
		memset(S, 0, (size_t)ko * ko * sizeof *S);
		memset(A, 0, (size_t)ki * ki * sizeof *A);
		/* the factors: A += V^T V over the stacked rows, S += H H^T over the rows side by side */
		for (size_t i = 0; i < N; i += R) {
			size_t n = N - i < R ? N - i : R;
			layer_rows(G, sc, D, l, ko, ki, i, n, tmp, v, hz);
			cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, ki, (int)(n * ko), 1.0 / (double)N, v, ki, 1.0, A, ki);
			cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, ko, (int)(n * ki), 1.0 / (double)N, hz,
				    (int)(n * ki), 1.0, S, ko);
		}
		if (eigvecs(S, ko, Qs) || eigvecs(A, ki, Qa)) {
			rc = trail_error_set(err, TRAIL_EINTERNAL, "layer %zu: the eigendecomposition of a Kronecker factor failed", l);
			break;
		}
		for (size_t e = 0; e < (size_t)ko * ko; e++)
			qs[e] = Qs[e];
		for (size_t e = 0; e < (size_t)ki * ki; e++)
			qa[e] = Qa[e];
		/* the corrected eigenvalues: the mean square of Q_S^T G_i Q_A, record by record in order */
		memset(lam, 0, per * sizeof *lam);
		for (size_t i = 0; i < N; i += R) {
			size_t n = N - i < R ? N - i : R;
			layer_rows(G, sc, D, l, ko, ki, i, n, tmp, v, NULL);
			/* hz [n*ko, ki] = V Q_A, then per record C = Q_S^T hz_r */
			cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(n * ko), ki, ki, 1.0, v, ki, qa, ki, 0.0, hz, ki);
			for (size_t r = 0; r < n; r++) {
				cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ko, ki, ko, 1.0, qs, ko, hz + r * per, ki, 0.0, v,
					    ki);
				for (size_t e = 0; e < per; e++)
					lam[e] += v[e] * v[e];
			}
		}
		double sum = 0;
		for (size_t e = 0; e < per; e++) {
			Lam[e] = (float)(lam[e] / (double)N);
			sum += Lam[e];
		}
		double d = h->damping * sum / (double)per;
		lambda[l] = (float)(d > 0 ? d : h->damping);
	}
out:
	trail_free(v), trail_free(hz), trail_free(S), trail_free(A), trail_free(qa), trail_free(qs), trail_free(lam);
	trail_free(tmp);
	return rc;
}

/* v [ko,ki] <- Q_S ((Q_S^T v Q_A) / (Lambda + lambda)) Q_A^T, in double, in a fixed order. */
static void precond_block(const float *Qs, const float *Qa, const float *Lam, double lambda, int ko, int ki, float *v,
			  double *t, double *c)
{
	for (int o = 0; o < ko; o++) /* t = v Q_A */
		for (int j = 0; j < ki; j++) {
			double s = 0;
			for (int i = 0; i < ki; i++)
				s += (double)v[o * ki + i] * Qa[i * ki + j];
			t[o * ki + j] = s;
		}
	for (int a = 0; a < ko; a++) /* c = Q_S^T t, scaled */
		for (int j = 0; j < ki; j++) {
			double s = 0;
			for (int o = 0; o < ko; o++)
				s += (double)Qs[o * ko + a] * t[o * ki + j];
			c[a * ki + j] = s / ((double)Lam[a * ki + j] + lambda);
		}
	for (int a = 0; a < ko; a++) /* t = c Q_A^T */
		for (int i = 0; i < ki; i++) {
			double s = 0;
			for (int j = 0; j < ki; j++)
				s += c[a * ki + j] * Qa[i * ki + j];
			t[a * ki + i] = s;
		}
	for (int o = 0; o < ko; o++) /* v = Q_S t */
		for (int i = 0; i < ki; i++) {
			double s = 0;
			for (int a = 0; a < ko; a++)
				s += (double)Qs[o * ko + a] * t[a * ki + i];
			v[o * ki + i] = (float)s;
		}
}

int trail_attr_ekfac_precond(const trail_attr_index *x, float *V, int nq, trail_error *err)
{
	const trail_attr_hdr *h = &x->h;
	size_t L = (size_t)h->nlayers, per = h->dim / L, E = trail_attr_ekfac_floats(h->k_in, h->k_out);
	double *t = trail_malloc(2 * per * sizeof *t);
	if (!t)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	/* a query's blocks one after another: 4 k^3 multiply-adds a layer, small beside the pass over the rows */
	for (size_t u = 0; u < (size_t)nq * L; u++) {
		size_t l = u % L;
		const float *Qs = x->ekfac + l * E, *Qa = Qs + (size_t)h->k_out * h->k_out, *Lam = Qa + (size_t)h->k_in * h->k_in;
		precond_block(Qs, Qa, Lam, x->lambda[2 * L + l], h->k_out, h->k_in, V + u / L * h->dim + l * per, t, t + per);
	}
	trail_free(t);
	return TRAIL_OK;
}

/* ---- the reference: the same formula from the rows, in double, with its own (Jacobi) eigenvectors ---- */

/* Cyclic Jacobi on the symmetric a [n,n] (destroyed): eigenvectors as the columns of q. */
static void jacobi(double *a, int n, double *q)
{
	for (int i = 0; i < n; i++)
		for (int j = 0; j < n; j++)
			q[i * n + j] = i == j;
	for (int sweep = 0; sweep < 100; sweep++) {
		double off = 0, all = 0;
		for (int i = 0; i < n; i++)
			for (int j = 0; j < n; j++) {
				all += a[i * n + j] * a[i * n + j];
				if (i != j)
					off += a[i * n + j] * a[i * n + j];
			}
		if (off <= 1e-30 * all)
			break;
		for (int p = 0; p < n; p++)
			for (int r = p + 1; r < n; r++) {
				double apr = a[p * n + r];
				if (fabs(apr) < 1e-300)
					continue;
				double th = (a[r * n + r] - a[p * n + p]) / (2 * apr);
				double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1)), cs = 1 / sqrt(t * t + 1), sn = t * cs;
				for (int k = 0; k < n; k++) { /* columns p, r */
					double akp = a[k * n + p], akr = a[k * n + r];
					a[k * n + p] = cs * akp - sn * akr;
					a[k * n + r] = sn * akp + cs * akr;
				}
				for (int k = 0; k < n; k++) { /* rows p, r */
					double apk = a[p * n + k], ark = a[r * n + k];
					a[p * n + k] = cs * apk - sn * ark;
					a[r * n + k] = sn * apk + cs * ark;
				}
				for (int k = 0; k < n; k++) {
					double qkp = q[k * n + p], qkr = q[k * n + r];
					q[k * n + p] = cs * qkp - sn * qkr;
					q[k * n + r] = sn * qkp + cs * qkr;
				}
			}
	}
}

static double ref_row(const trail_attr_index *x, size_t i, size_t d)
{
	size_t N = x->h.nrecords, D = x->h.dim, last = (size_t)x->h.nsets - 1;
	return (double)trail_attr_f32(x->grads[(last * N + i) * D + d]) * x->scales[last * N + i];
}

int trail_attr_ekfac_ref(const trail_attr_index *x, const float *q, int nq, double *V, trail_error *err)
{
	const trail_attr_hdr *h = &x->h;
	size_t N = h->nrecords, D = h->dim, L = (size_t)h->nlayers;
	int ko = h->k_out, ki = h->k_in;
	size_t per = (size_t)ko * ki;
	double *S = trail_calloc((size_t)ko * ko, sizeof *S), *A = trail_calloc((size_t)ki * ki, sizeof *A);
	double *qs = trail_malloc((size_t)ko * ko * sizeof *qs), *qa = trail_malloc((size_t)ki * ki * sizeof *qa);
	double *lam = trail_malloc(per * sizeof *lam), *g = trail_malloc(per * sizeof *g), *c = trail_malloc(per * sizeof *c);
	if (!S || !A || !qs || !qa || !lam || !g || !c) {
		trail_free(S), trail_free(A), trail_free(qs), trail_free(qa), trail_free(lam), trail_free(g), trail_free(c);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	for (size_t l = 0; l < L; l++) {
		memset(S, 0, (size_t)ko * ko * sizeof *S);
		memset(A, 0, (size_t)ki * ki * sizeof *A);
		for (size_t i = 0; i < N; i++) {
			for (size_t e = 0; e < per; e++)
				g[e] = ref_row(x, i, l * per + e);
			for (int a = 0; a < ko; a++)
				for (int b = 0; b < ko; b++)
					for (int k = 0; k < ki; k++)
						S[a * ko + b] += g[a * ki + k] * g[b * ki + k] / (double)N;
			for (int a = 0; a < ki; a++)
				for (int b = 0; b < ki; b++)
					for (int k = 0; k < ko; k++)
						A[a * ki + b] += g[k * ki + a] * g[k * ki + b] / (double)N;
		}
		jacobi(S, ko, qs);
		jacobi(A, ki, qa);
		/* c = Q_S^T g Q_A for each record: the corrected eigenvalues and their mean */
		memset(lam, 0, per * sizeof *lam);
		double sum = 0;
		for (size_t i = 0; i < N; i++) {
			for (size_t e = 0; e < per; e++)
				g[e] = ref_row(x, i, l * per + e);
			for (int a = 0; a < ko; a++)
				for (int b = 0; b < ki; b++) {
					double s = 0;
					for (int o = 0; o < ko; o++)
						for (int k = 0; k < ki; k++)
							s += qs[o * ko + a] * g[o * ki + k] * qa[k * ki + b];
					lam[a * ki + b] += s * s / (double)N;
				}
		}
		for (size_t e = 0; e < per; e++)
			sum += lam[e];
		double damp = h->damping * sum / (double)per;
		if (!(damp > 0))
			damp = h->damping;
		for (int k = 0; k < nq; k++) {
			const float *v = q + (size_t)k * D + l * per;
			for (int a = 0; a < ko; a++)
				for (int b = 0; b < ki; b++) {
					double s = 0;
					for (int o = 0; o < ko; o++)
						for (int m = 0; m < ki; m++)
							s += qs[o * ko + a] * v[o * ki + m] * qa[m * ki + b];
					c[a * ki + b] = s / (lam[a * ki + b] + damp);
				}
			double *w = V + (size_t)k * D + l * per;
			for (int o = 0; o < ko; o++)
				for (int m = 0; m < ki; m++) {
					double s = 0;
					for (int a = 0; a < ko; a++)
						for (int b = 0; b < ki; b++)
							s += qs[o * ko + a] * c[a * ki + b] * qa[m * ki + b];
					w[o * ki + m] = s;
				}
		}
	}
	trail_free(S), trail_free(A), trail_free(qs), trail_free(qa), trail_free(lam), trail_free(g), trail_free(c);
	return TRAIL_OK;
}
