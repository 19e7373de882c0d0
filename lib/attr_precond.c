/*
 * Curvature in the projected space and scoring: the damped projected
 * covariance F + lambda I with its Cholesky factor (LAPACKE), DataInf's
 * per-layer closed form, and the blocked fp16 -> fp32 scoring passes.
 */
#include <math.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "attr_int.h"

/* Rows per block: one query streams through cache-sized blocks; many queries amortise sgemm packing. */
static size_t block_rows(size_t D, int nq)
{
	size_t r = nq > 1 ? ((size_t)8 << 20) / (D * 4) : ((size_t)256 << 10) / (D * 4);
	return r < 8 ? 8 : r;
}

/* Rows [i0, i0+n) of set s, dequantised (times their scales when `scaled`). */
static void rows_f32(const uint16_t *grads, const float *scales, size_t D, size_t i0, size_t n, float *buf,
		     int scaled)
{
	trail_attr_f16_to_f32(grads + i0 * D, buf, n * D);
	if (scaled)
		for (size_t r = 0; r < n; r++)
			cblas_sscal((int)D, scales[i0 + r], buf + r * D, 1);
}

/*
 * Per layer l (blocks of per = D/L coordinates): F_l = (1/N) sum_i g_il g_il^T,
 * lambda_l = damping * tr(F_l) / per, and the lower Cholesky factor of
 * F_l + lambda_l I. Block-diagonal, as K-FAC and LoGra treat layers: a
 * query's solve reads L per^2 floats instead of D^2.
 */
int trail_attr_curvature(uint8_t *map, const trail_attr_hdr *h, const trail_attr_off *o, trail_error *err)
{
	size_t N = h->nrecords, D = h->dim, L = (size_t)h->nlayers, per = D / L, last = (size_t)h->nsets - 1;
	const uint16_t *grads = (const uint16_t *)(map + o->grads) + last * N * D;
	const float *scales = (const float *)(map + o->scales) + last * N;
	const float *norms = (const float *)(map + o->norms) + last * N * L;
	float *F = (float *)(map + o->chol), *lambda = (float *)(map + o->lambda);
	size_t R = block_rows(D, 2);
	float *buf = trail_malloc(R * D * sizeof *buf);
	if (!buf)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	memset(F, 0, L * per * per * sizeof *F);
	for (size_t i = 0; i < N; i += R) {
		size_t n = N - i < R ? N - i : R;
		rows_f32(grads, scales, D, i, n, buf, 1);
		for (size_t l = 0; l < L; l++)
			cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)per, (int)n, 1.0f / (float)N, buf + l * per,
				    (int)D, 1.0f, F + l * per * per, (int)per);
	}
	trail_free(buf);
	for (size_t l = 0; l < L; l++) {
		float *Fl = F + l * per * per;
		double tr = 0;
		for (size_t d = 0; d < per; d++)
			tr += Fl[d * per + d];
		double lam = h->damping * tr / (double)per;
		if (!(lam > 0))
			lam = h->damping; /* every gradient of the layer is zero: any positive damping will do */
		for (size_t d = 0; d < per; d++) {
			Fl[d * per + d] += (float)lam;
			for (size_t e = d + 1; e < per; e++)
				Fl[d * per + e] = 0; /* only the factor's triangle, so the file is deterministic */
		}
		lapack_int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)per, Fl, (lapack_int)per);
		if (info)
			return trail_error_set(err, TRAIL_EINTERNAL, "layer %zu: the damped covariance is not positive definite (%d)",
					       l, (int)info);
		lambda[L + l] = (float)lam;
	}
	/* DataInf: lambda_l = 0.1 x mean squared norm of layer l's blocks */
	for (size_t l = 0; l < L; l++) {
		double sum = 0;
		for (size_t i = 0; i < N; i++)
			sum += norms[i * L + l];
		lambda[l] = (float)(sum > 0 ? 0.1 * sum / (double)N : 1e-30);
	}
	return TRAIL_OK;
}

int trail_attr_method(const char *name)
{
	static const char *names[] = {"influence", "graddot", "datainf", "tracin"};
	for (int i = 0; i < 4; i++)
		if (!strcmp(name, names[i]))
			return i;
	return -1;
}

const char *trail_attr_method_name(int method)
{
	static const char *names[] = {"influence", "graddot", "datainf", "tracin"};
	return method >= 0 && method < 4 ? names[method] : "?";
}

int trail_attr_query_rows(const trail_attr_index *x, int method)
{
	return method == TRAIL_ATTR_TRACIN ? x->h.nsets : 1;
}

/*
 * out[k*N + i] += w * scale_i * (G_s[i] . V[k]) for nq vectors V [nq,D]:
 * dequantise a block of rows, one sgemv (one query) or sgemm (several).
 */
static int pass(const trail_attr_index *x, int set, const float *V, int nq, double w, float *out, trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim, R = block_rows(D, nq);
	const uint16_t *G = x->grads + (size_t)set * N * D;
	const float *sc = x->scales + (size_t)set * N;
	float *buf = trail_malloc(R * D * sizeof *buf), *tmp = trail_malloc(R * (size_t)nq * sizeof *tmp);
	if (!buf || !tmp) {
		trail_free(buf), trail_free(tmp);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < N; i += R) {
		size_t n = N - i < R ? N - i : R;
		rows_f32(G, sc, D, i, n, buf, 0);
		if (nq == 1)
			cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)D, 1.0f, buf, (int)D, V, 1, 0.0f, tmp, 1);
		else
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, nq, (int)D, 1.0f, buf, (int)D, V, (int)D,
				    0.0f, tmp, nq);
		for (size_t r = 0; r < n; r++)
			for (int k = 0; k < nq; k++)
				out[(size_t)k * N + i + r] += (float)(w * sc[i + r]) * tmp[r * (size_t)nq + (size_t)k];
	}
	trail_free(buf), trail_free(tmp);
	return TRAIL_OK;
}

/* Rows of V [nq,D] <- V (F + lambda I)^-1, block by block: solve Y L_l^T = V_l, then Z L_l = Y. */
static void solve(const trail_attr_index *x, float *V, int nq)
{
	int D = (int)x->h.dim, L = x->h.nlayers, per = D / L;
	for (int l = 0; l < L; l++) {
		const float *Fl = x->chol + (size_t)l * per * per;
		cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, nq, per, 1.0f, Fl, per,
			    V + (size_t)l * per, D);
		cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, nq, per, 1.0f, Fl, per,
			    V + (size_t)l * per, D);
	}
}

/*
 * DataInf, per layer l with lambda_l:
 *   H_l^-1 v_l ~ (1/lambda_l) (v_l - (1/N) sum_i g_il (g_il . v_l) / (lambda_l + |g_il|^2))
 * The sum u_l = (1/N) sum_i w_il g_il needs the dots r_il = g_il . v_l (a
 * pass with a block-diagonal right-hand side) and a transposed pass.
 */
static int datainf_vec(const trail_attr_index *x, const float *q, float *v, trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim, L = (size_t)x->h.nlayers, per = D / L, set = (size_t)x->h.nsets - 1;
	const uint16_t *G = x->grads + set * N * D;
	const float *sc = x->scales + set * N, *nr = x->norms + set * N * L;
	size_t R = block_rows(D, 2);
	float *Q = trail_calloc(L * D, sizeof *Q), *r = trail_malloc(N * L * sizeof *r);
	float *buf = trail_malloc(R * D * sizeof *buf), *tmp = trail_malloc(R * L * sizeof *tmp);
	double *u = trail_calloc(D, sizeof *u);
	if (!Q || !r || !buf || !tmp || !u) {
		trail_free(Q), trail_free(r), trail_free(buf), trail_free(tmp), trail_free(u);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	for (size_t l = 0; l < L; l++) /* row l of Q: q restricted to layer l */
		memcpy(Q + l * D + l * per, q + l * per, per * sizeof *Q);
	for (size_t i = 0; i < N; i += R) {
		size_t n = N - i < R ? N - i : R;
		rows_f32(G, sc, D, i, n, buf, 0);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)L, (int)D, 1.0f, buf, (int)D, Q, (int)D,
			    0.0f, tmp, (int)L);
		for (size_t k = 0; k < n; k++)
			for (size_t l = 0; l < L; l++) {
				size_t j = (i + k) * L + l;
				double lam = x->lambda[l];
				/* w_il = r_il / (lambda_l + |g_il|^2) / N, folded with the row scale for the next pass */
				r[j] = (float)((double)sc[i + k] * tmp[k * L + l] / (lam + nr[j]) / (double)N * sc[i + k]);
			}
		for (size_t k = 0; k < n; k++)
			for (size_t l = 0; l < L; l++) {
				float wk = r[(i + k) * L + l];
				const float *g = buf + k * D + l * per;
				for (size_t e = 0; e < per; e++)
					u[l * per + e] += (double)wk * g[e];
			}
	}
	for (size_t l = 0; l < L; l++)
		for (size_t e = 0; e < per; e++)
			v[l * per + e] = (float)(((double)q[l * per + e] - u[l * per + e]) / x->lambda[l]);
	trail_free(Q), trail_free(r), trail_free(buf), trail_free(tmp), trail_free(u);
	return TRAIL_OK;
}

int trail_attr_score(const trail_attr_index *x, int method, const float *q, int nq, float *scores,
		     trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim;
	int last = x->h.nsets - 1, rc = TRAIL_OK;
	if (nq < 1)
		return trail_error_set(err, TRAIL_EUSAGE, "no query");
	memset(scores, 0, (size_t)nq * N * sizeof *scores);
	if (method == TRAIL_ATTR_TRACIN) {
		/* q holds nq blocks of nsets rows: gather each set's rows */
		size_t S = (size_t)x->h.nsets;
		float *V = trail_malloc((size_t)nq * D * sizeof *V);
		if (!V)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		for (size_t s = 0; s < S && !rc; s++) {
			for (int k = 0; k < nq; k++)
				memcpy(V + (size_t)k * D, q + ((size_t)k * S + s) * D, D * sizeof *V);
			rc = pass(x, (int)s, V, nq, trail_attr_set_weight(x, (int)s), scores, err);
		}
		trail_free(V);
		return rc;
	}
	float *V = trail_malloc((size_t)nq * D * sizeof *V);
	if (!V)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	memcpy(V, q, (size_t)nq * D * sizeof *V);
	if (method == TRAIL_ATTR_INFLUENCE)
		solve(x, V, nq);
	else if (method == TRAIL_ATTR_DATAINF)
		for (int k = 0; k < nq && !rc; k++)
			rc = datainf_vec(x, q + (size_t)k * D, V + (size_t)k * D, err);
	else if (method != TRAIL_ATTR_GRADDOT)
		rc = trail_error_set(err, TRAIL_EUSAGE, "unknown method %d", method);
	if (!rc)
		rc = pass(x, last, V, nq, 1.0, scores, err);
	trail_free(V);
	return rc;
}

int trail_attr_self_influence(const trail_attr_index *x, float *out, trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim, R = block_rows(D, 2), set = (size_t)x->h.nsets - 1;
	float *buf = trail_malloc(R * D * sizeof *buf);
	if (!buf)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t i = 0; i < N; i += R) {
		size_t n = N - i < R ? N - i : R;
		rows_f32(x->grads + set * N * D, x->scales + set * N, D, i, n, buf, 1);
		/* rows y = g L^-T per block, so |y|^2 = g^T (F + lambda I)^-1 g */
		size_t L = (size_t)x->h.nlayers, per = D / L;
		for (size_t l = 0; l < L; l++)
			cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int)n, (int)per, 1.0f,
				    x->chol + l * per * per, (int)per, buf + l * per, (int)D);
		for (size_t r = 0; r < n; r++) {
			double s = 0;
			for (size_t d = 0; d < D; d++)
				s += (double)buf[r * D + d] * buf[r * D + d];
			out[i + r] = (float)s;
		}
	}
	trail_free(buf);
	return TRAIL_OK;
}

/* ---- the naive double-precision reference ------------------------------------------ */

static double row_at(const trail_attr_index *x, size_t set, size_t i, size_t d)
{
	size_t N = x->h.nrecords, D = x->h.dim;
	return (double)trail_attr_f32(x->grads[(set * N + i) * D + d]) * x->scales[set * N + i];
}

int trail_attr_score_ref(const trail_attr_index *x, int method, const float *q, int nq, double *scores,
			 trail_error *err)
{
	size_t N = x->h.nrecords, D = x->h.dim, L = (size_t)x->h.nlayers, per = D / L, S = (size_t)x->h.nsets;
	size_t last = S - 1;
	double *v = trail_malloc(D * sizeof *v), *F = NULL;
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (method == TRAIL_ATTR_INFLUENCE) {
		/* F + lambda I in double, its own Cholesky factor */
		if (!(F = trail_calloc(D * D, sizeof *F))) {
			trail_free(v);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		/* the block-diagonal F + lambda I in double (zero across layers), its own Cholesky factor */
		for (size_t i = 0; i < N; i++)
			for (size_t a = 0; a < D; a++) {
				double ga = row_at(x, last, i, a);
				for (size_t b = (a / per) * per; b <= a; b++)
					F[a * D + b] += ga * row_at(x, last, i, b) / (double)N;
			}
		for (size_t a = 0; a < D; a++)
			F[a * D + a] += x->lambda[L + a / per];
		for (size_t j = 0; j < D; j++) {
			double s = F[j * D + j];
			for (size_t k = 0; k < j; k++)
				s -= F[j * D + k] * F[j * D + k];
			F[j * D + j] = sqrt(s);
			for (size_t i = j + 1; i < D; i++) {
				double t = F[i * D + j];
				for (size_t k = 0; k < j; k++)
					t -= F[i * D + k] * F[j * D + k];
				F[i * D + j] = t / F[j * D + j];
			}
		}
	}
	for (int k = 0; k < nq; k++) {
		double *out = scores + (size_t)k * N;
		memset(out, 0, N * sizeof *out);
		if (method == TRAIL_ATTR_TRACIN) {
			for (size_t s = 0; s < S; s++) {
				const float *qs = q + ((size_t)k * S + s) * D;
				double w = trail_attr_set_weight(x, (int)s);
				for (size_t i = 0; i < N; i++) {
					double t = 0;
					for (size_t d = 0; d < D; d++)
						t += row_at(x, s, i, d) * qs[d];
					out[i] += w * t;
				}
			}
			continue;
		}
		const float *qk = q + (size_t)k * D;
		for (size_t d = 0; d < D; d++)
			v[d] = qk[d];
		if (method == TRAIL_ATTR_INFLUENCE) {
			for (size_t i = 0; i < D; i++) { /* L y = v */
				for (size_t j = 0; j < i; j++)
					v[i] -= F[i * D + j] * v[j];
				v[i] /= F[i * D + i];
			}
			for (size_t i = D; i-- > 0;) { /* L^T z = y */
				for (size_t j = i + 1; j < D; j++)
					v[i] -= F[j * D + i] * v[j];
				v[i] /= F[i * D + i];
			}
		} else if (method == TRAIL_ATTR_DATAINF) {
			for (size_t l = 0; l < L; l++) {
				double lam = x->lambda[l];
				double *u = trail_calloc(per, sizeof *u);
				if (!u) {
					trail_free(v), trail_free(F);
					return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				}
				for (size_t i = 0; i < N; i++) {
					double r = 0, nn = 0;
					for (size_t e = 0; e < per; e++) {
						double g = row_at(x, last, i, l * per + e);
						r += g * qk[l * per + e];
						nn += g * g;
					}
					for (size_t e = 0; e < per; e++)
						u[e] += r / (lam + nn) / (double)N * row_at(x, last, i, l * per + e);
				}
				for (size_t e = 0; e < per; e++)
					v[l * per + e] = ((double)qk[l * per + e] - u[e]) / lam;
				trail_free(u);
			}
		}
		for (size_t i = 0; i < N; i++) {
			double t = 0;
			for (size_t d = 0; d < D; d++)
				t += row_at(x, last, i, d) * v[d];
			out[i] = t;
		}
	}
	trail_free(v), trail_free(F);
	return TRAIL_OK;
}
