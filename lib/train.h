/*
 * Training on an exact list of records: tokenise, batch in a seeded order,
 * AdamW with warmup + cosine, gradient clipping, a loss curve, and the
 * training.json manifest that ties the weights to the records.
 *
 * Ownership: a trail_dataset owns its records (json references) and token
 * arrays; trail_dataset_free releases them.
 */
#ifndef TRAIL_TRAIN_H
#define TRAIL_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "model.h"
#include "tokenizer.h"

typedef struct trail_dataset {
	size_t n;
	int32_t **tok;    /* per record: tokens then end-of-text */
	size_t *len;
	int32_t *first;   /* first token that counts in the loss (instruct: the completion) */
	char (*id)[72];   /* record ids */
	char **contributor; /* or NULL entries */
	char root[64];    /* base64 RFC 9162 root over the record ids */
	char order[72];   /* digest of the ids, one per line, in order */
} trail_dataset;

/*
 * Build from records ({"text"} or {"prompt","completion"}, optional
 * "contributor" and, from snapshots, "record"). TRAIL_EDATA names the
 * record that is neither; an empty list is TRAIL_EDATA too.
 */
int trail_dataset_from_records(const json_t *records, const trail_tokenizer *tk,
			       trail_dataset **out, trail_error *err);
void trail_dataset_free(trail_dataset *d);

typedef struct trail_train_opts {
	int batch, seq;
	long steps;   /* total optimiser steps */
	double lr;    /* peak */
	long warmup;
	double clip;
	uint64_t seed;
	FILE *metrics; /* one NDJSON line per step, or NULL */
	FILE *progress; /* progress bar, or NULL */
	volatile int *stop; /* set (e.g. by SIGINT) to stop after the current step */
} trail_train_opts;

/*
 * Train m on d. losses (if not NULL) gets one mean loss per step
 * (trail_malloc'd, *nsteps long). A non-finite loss stops with TRAIL_EDATA
 * and the weights of the last good step.
 */
int trail_train(trail_model *m, const trail_dataset *d, const trail_train_opts *o, float **losses,
		long *nsteps, trail_error *err);

/* Mean loss of the model over the whole dataset (batches of o->batch). */
int trail_eval_loss(trail_model *m, const trail_dataset *d, int batch, int seq, double *loss,
		    trail_error *err);

/*
 * The training.json manifest: the records (ids in training order with their
 * contributors), the Merkle root over them and the digest of their order,
 * the hyper-parameters, the loss curve, and `extra` members (datanet,
 * tree size, base model...). New reference.
 */
json_t *trail_training_manifest(const trail_dataset *d, const trail_train_opts *o,
				const float *curve, long nsteps, const json_t *extra);

/* Set the BLAS thread count (results are reproducible for a given count). */
void trail_blas_threads(int n);

#endif
