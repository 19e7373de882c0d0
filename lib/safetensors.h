/*
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {...}}, then the tensor bytes. Reading maps the file and converts F32,
 * F16 and BF16 to float; writing emits F32 with names sorted, offsets
 * contiguous and the header padded to 8 bytes, so the same tensors give the
 * same bytes.
 *
 * Ownership: a trail_st owns its mapping; trail_st_free releases it.
 */
#ifndef TRAIL_SAFETENSORS_H
#define TRAIL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "trail.h"

typedef struct trail_st trail_st;

/*
 * Map and check a file: header length and JSON, every entry's dtype, shape
 * and offsets, and that the tensors cover the data exactly (a truncated
 * file is TRAIL_EDATA here, naming the file). A missing file is
 * TRAIL_ENOINPUT.
 */
int trail_st_open(const char *path, trail_st **out, trail_error *err);
void trail_st_free(trail_st *st);
/* The "__metadata__" object (string values), or NULL; owned by st. */
const json_t *trail_st_metadata(const trail_st *st);
/* Does the file hold `name`? */
int trail_st_has(const trail_st *st, const char *name);
/* Number of tensors, and the i-th name (in header order). */
size_t trail_st_count(const trail_st *st);
const char *trail_st_name(const trail_st *st, size_t i);
/*
 * Copy tensor `name` into dst as float, checking its shape against
 * shape[0..ndim). TRAIL_EDATA for a missing tensor, a wrong shape or dtype.
 */
int trail_st_read_f32(const trail_st *st, const char *name, const int64_t *shape, int ndim,
		      float *dst, trail_error *err);

typedef struct trail_st_tensor {
	const char *name;
	int64_t shape[4];
	int ndim;
	const float *data;
} trail_st_tensor;

/* Write tensors (any order; sorted on output) atomically. metadata may be NULL. */
int trail_st_write(const char *path, const trail_st_tensor *t, size_t n, const json_t *metadata,
		   trail_error *err);

#endif
