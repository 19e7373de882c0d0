/*
 * Training on an exact list of records: tokenise, batch in a seeded order,
 * AdamW with warmup + cosine, gradient clipping, a loss curve, checkpoints
 * to resume from, and the training.json manifest that ties the weights to
 * the records.
 *
 * Ownership: a trail_dataset owns its records (json references) and token
 * arrays; trail_dataset_free releases them.
 */
#ifndef TRAIL_TRAIN_H
#define TRAIL_TRAIN_H

#include <signal.h>
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
	int threads;  /* BLAS threads, recorded: the bits depend on it */
	FILE *metrics;  /* one NDJSON line per step, or NULL */
	FILE *progress; /* progress bar, or NULL */
	volatile sig_atomic_t *stop; /* set (e.g. by SIGINT) to stop after the current step */
	const char *checkpoint; /* where checkpoints go, or NULL */
	long checkpoint_every;  /* also every so many steps (0: only when stopping early) */
} trail_train_opts;

/*
 * A run in progress: steps done, the optimiser state and the loss curve.
 * Record g = step * batch + b of the run is record perm_e[g mod n] of
 * epoch e = g / n, each epoch's permutation seeded by (seed, e): the data
 * order is a function of the step, so a run continues from any step.
 */
typedef struct trail_train_run {
	long step;
	trail_adamw opt;
	float *curve; /* [steps] */
	char settings[72]; /* digest of everything the result depends on */
} trail_train_run;

/*
 * The digest of the settings a run's result depends on: the records and
 * their order, the hyper-parameters and `extra` (model configuration, base
 * weights, LoRA). A checkpoint only resumes a run with the same digest.
 */
void trail_train_settings(const trail_dataset *d, const trail_train_opts *o, const json_t *extra,
			  char out[72]);
/* A fresh run for the model's trainable parameters. */
int trail_train_run_init(trail_train_run *r, trail_model *m, const trail_train_opts *o,
			 const char settings[72], trail_error *err);
void trail_train_run_release(trail_train_run *r);
/*
 * Checkpoints: a safetensors file with the trainable parameters, the
 * optimiser moments and the loss curve; the step and settings digest in its
 * metadata. Loading restores the model's trainable parameters and the run;
 * TRAIL_EDATA for a damaged file or other settings (the message says which).
 */
int trail_train_checkpoint_save(const char *path, trail_model *m, const trail_train_run *r,
				trail_error *err);
int trail_train_checkpoint_load(const char *path, trail_model *m, const trail_train_opts *o,
				const char settings[72], trail_train_run *r, trail_error *err);

/*
 * Train m on d from r->step to o->steps. Stops early when *o->stop is set
 * (TRAIL_EAGAIN) or the loss or gradient is not finite (TRAIL_EDATA, the
 * weights and r those of the last good step); in both cases, and every
 * o->checkpoint_every steps, r is saved to o->checkpoint (but never weights
 * that are not finite: an earlier checkpoint is kept then).
 */
int trail_train(trail_model *m, const trail_dataset *d, const trail_train_opts *o, trail_train_run *r,
		trail_error *err);

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
				const trail_train_run *r, const json_t *extra);

/*
 * What mf-train does, as one call: the records (an NDJSON file or a
 * datanet snapshot from the store), the tokenizer, the model (from a config
 * or a base directory), optionally LoRA, training with checkpoints and
 * resume, then the model or adapter directory with training.json; with a
 * store, the output's files as objects and a `model` ledger entry. Also
 * --eval (mean loss) and --merge (base + adapter folded). *result gets the
 * line to print (new reference).
 */
typedef struct trail_train_job {
	const char *init, *base, *adapter, *data, *datanet, *home, *out, *tokenizer, *metrics, *lora, *name;
	long steps, epochs, warmup, checkpoint_every; /* warmup < 0: 5% of the steps */
	int batch, seq, threads;                      /* seq 0: the model's n_positions */
	double lr;                                    /* 0: 3e-4, or 1e-3 for LoRA */
	uint64_t seed;
	int resume, eval, merge, no_index;
	FILE *progress;
	volatile sig_atomic_t *stop;
} trail_train_job;
int trail_train_job_run(const trail_train_job *j, json_t **result, trail_error *err);
/* Parse "r=8,alpha=16,targets=c_attn,c_proj,rslora=1" (defaults r 8, alpha 16, all four layers). */
int trail_lora_spec_parse(const char *spec, trail_lora_config *lc, trail_error *err);

/* Set the BLAS thread count (results are reproducible for a given count). */
void trail_blas_threads(int n);

#endif
