/*
 * Fuzz the safetensors reader: any bytes are a safetensors file; one that
 * opens has its tensors cover the data exactly, and reading each one as
 * float, at the shape its header gives, stays inside the bytes or is
 * refused with a message (a dtype that is not F32, F16 or BF16).
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	trail_st *st;
	trail_error e = {0};
	uint8_t *copy = malloc(size ? size : 1); /* exactly size bytes, so a read past them is caught */
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	if (trail_st_parse(copy, size, "fuzz", &st, &e)) {
		if (!e.msg[0])
			__builtin_trap();
		free(copy);
		return 0;
	}
	/* the header as the reader saw it, for the shapes */
	uint64_t hl = 0;
	for (int i = 7; i >= 0; i--)
		hl = hl << 8 | copy[i];
	json_t *h = json_loadb((const char *)copy + 8, (size_t)hl, 0, NULL);
	for (size_t i = 0; i < trail_st_count(st); i++) {
		const char *nm = trail_st_name(st, i);
		if (!nm || !trail_st_has(st, nm))
			__builtin_trap();
		json_t *sh = json_object_get(json_object_get(h, nm), "shape");
		int64_t shape[8];
		int nd = (int)json_array_size(sh);
		size_t n = 1;
		for (int d = 0; d < nd && d < 8; d++)
			n *= (size_t)(shape[d] = json_integer_value(json_array_get(sh, (size_t)d)));
		if (nd > 8 || n > ((size_t)1 << 22))
			continue;
		float *d = malloc((n ? n : 1) * sizeof *d);
		e.msg[0] = 0;
		if (d && trail_st_read_f32(st, nm, shape, nd, d, &e) && !e.msg[0])
			__builtin_trap();
		free(d);
	}
	json_decref(h);
	trail_st_free(st);
	free(copy);
	return 0;
}
