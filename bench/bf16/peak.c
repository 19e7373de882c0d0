/*
 * The bf16 matrix-product peak of this machine: oneDNN's matmul, C [n,n]
 * f32 = A [n,n] bf16 B [n,n] bf16, n 1024, on 1 and on 2 OpenMP threads;
 * the best of 10 runs after a warmup. Prints one JSON line per thread
 * count.
 *
 * usage: peak [N]
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <oneapi/dnnl/dnnl.h>
#include "../bench.h"

#define CK(x)                                                          \
	do {                                                           \
		if ((x) != dnnl_success) {                             \
			fprintf(stderr, "peak: oneDNN failed: %s\n", #x); \
			return 70;                                     \
		}                                                      \
	} while (0)

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1024;
	dnnl_engine_t eng;
	dnnl_stream_t st;
	CK(dnnl_engine_create(&eng, dnnl_cpu, 0));
	CK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
	dnnl_dims_t d = {n, n}, s = {n, 1};
	dnnl_memory_desc_t a, b, c;
	CK(dnnl_memory_desc_init_by_strides(&a, 2, d, dnnl_bf16, s));
	CK(dnnl_memory_desc_init_by_strides(&b, 2, d, dnnl_bf16, s));
	CK(dnnl_memory_desc_init_by_strides(&c, 2, d, dnnl_f32, s));
	uint16_t *pa = malloc((size_t)n * n * 2), *pb = malloc((size_t)n * n * 2);
	float *pc = malloc((size_t)n * n * 4);
	for (size_t i = 0; i < (size_t)n * n; i++)
		pa[i] = 0x3f80 + (uint16_t)(i % 7), pb[i] = 0x3f80 + (uint16_t)(i % 5); /* 1.0 and a little more */
	for (int th = 1; th <= 2; th++) {
		omp_set_num_threads(th);
		dnnl_matmul_desc_t md;
		dnnl_primitive_desc_t pd;
		dnnl_primitive_t p;
		CK(dnnl_matmul_desc_init(&md, &a, &b, NULL, &c));
		CK(dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL));
		CK(dnnl_primitive_create(&p, pd));
		dnnl_memory_t ma, mb, mc;
		CK(dnnl_memory_create(&ma, &a, eng, pa));
		CK(dnnl_memory_create(&mb, &b, eng, pb));
		CK(dnnl_memory_create(&mc, &c, eng, pc));
		dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
		double best = 0;
		for (int r = 0; r < 11; r++) {
			double t = now();
			CK(dnnl_primitive_execute(p, st, 3, args));
			CK(dnnl_stream_wait(st));
			t = now() - t;
			if (r && 2.0 * n * n * n / t > best)
				best = 2.0 * n * n * n / t;
		}
		printf("{\"impl\":\"onednn-bf16-matmul\",\"n\":%d,\"threads\":%d,\"gflops\":%.1f}\n", n, th, best / 1e9);
		dnnl_memory_destroy(ma), dnnl_memory_destroy(mb), dnnl_memory_destroy(mc);
		dnnl_primitive_destroy(p);
		dnnl_primitive_desc_destroy(pd);
	}
	dnnl_stream_destroy(st);
	dnnl_engine_destroy(eng);
	free(pa), free(pb), free(pc);
	return 0;
}
