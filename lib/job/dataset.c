/*
 * A training set from records: each record's tokens, the token where its
 * loss starts, its id (the snapshot's, else the digest of the record) and
 * contributor, and the RFC 9162 root over the ids that ties an index and a
 * training run to exactly these records.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "data/data.h"
#include "ledger/ledger.h"
#include "model/model.h"
#include "attr/attr.h"
#include "job/job.h"

static const char *str(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

int trail_dataset_from_records(const json_t *records, const trail_tokenizer *tk,
			       trail_dataset **out, trail_error *err)
{
	size_t n = json_array_size(records);
	trail_dataset *d = trail_calloc(1, sizeof *d);
	trail_hash *leaves = trail_malloc((n ? n : 1) * sizeof *leaves);
	trail_buf order = {0};
	int rc = TRAIL_OK;
	*out = NULL;
	if (!d || !leaves || !(d->tok = trail_calloc(n ? n : 1, sizeof *d->tok)) ||
	    !(d->len = trail_calloc(n ? n : 1, sizeof *d->len)) || !(d->first = trail_calloc(n ? n : 1, sizeof *d->first)) ||
	    !(d->id = trail_calloc(n ? n : 1, sizeof *d->id)) ||
	    !(d->contributor = trail_calloc(n ? n : 1, sizeof *d->contributor))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	d->n = n;
	if (!n) {
		rc = trail_error_set(err, TRAIL_EDATA, "no training records");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *r = json_array_get(records, i);
		const char *text = str(r, "text"), *pr = str(r, "prompt"), *co = str(r, "completion");
		if (!text && !(pr && co)) {
			rc = trail_error_at(err, TRAIL_EDATA, "records", (long)i + 1,
					    "a training record has \"text\" or \"prompt\" and \"completion\"");
			goto out;
		}
		/* the record id: given by a snapshot, else the digest of the record itself */
		if (str(r, "record") && !trail_digest_parse(str(r, "record"), (uint8_t[32]){0}))
			snprintf(d->id[i], 72, "%s", str(r, "record"));
		else if ((rc = trail_record_id(r, d->id[i], err)))
			goto out;
		if (str(r, "contributor") && !(d->contributor[i] = trail_strdup(str(r, "contributor")))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		int32_t *a = NULL, *b = NULL;
		size_t na = 0, nb = 0;
		if ((rc = trail_tokenizer_encode(tk, text ? text : pr, strlen(text ? text : pr), &a, &na, err)) ||
		    (!text && (rc = trail_tokenizer_encode(tk, co, strlen(co), &b, &nb, err)))) {
			trail_free(a);
			goto out;
		}
		d->tok[i] = trail_malloc((na + nb + 1) * sizeof **d->tok);
		if (!d->tok[i]) {
			trail_free(a), trail_free(b);
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		memcpy(d->tok[i], a, na * sizeof *a);
		if (nb)
			memcpy(d->tok[i] + na, b, nb * sizeof *b);
		d->tok[i][na + nb] = trail_tokenizer_eot(tk);
		d->len[i] = na + nb + 1;
		d->first[i] = text ? 0 : (int32_t)na;
		trail_free(a), trail_free(b);
		uint8_t dg[32];
		trail_digest_parse(d->id[i], dg);
		trail_merkle_leaf(dg, 32, leaves[i]);
		if (trail_buf_put(&order, d->id[i], 71) || trail_buf_put(&order, "\n", 1)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
	}
	trail_hash root;
	trail_merkle_root_of((const trail_hash *)leaves, n, root);
	trail_base64(root, 32, d->root);
	trail_digest_str(order.p, order.n, d->order);
	*out = d;
	d = NULL;
out:
	trail_buf_release(&order);
	trail_free(leaves);
	trail_dataset_free(d);
	return rc;
}
