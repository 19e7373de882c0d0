/*
 * mf-train's job: a datanet snapshot (or a file of records), the base or
 * the adapter trained on it, the artefacts stored and named, the training
 * entry in the ledger and the attribution index built as it trains.
 */
#include <errno.h>
#include <math.h>
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

int trail_long_mode(const char *name)
{
	static const char *const names[] = {"truncate", "split", "error"};
	for (int i = 0; i < 3; i++)
		if (name && !strcmp(name, names[i]))
			return i;
	return -1;
}

int trail_index_at(const char *name)
{
	return !name ? -1 : !strcmp(name, "final") ? TRAIL_INDEX_AT_FINAL : !strcmp(name, "last-epoch") ? TRAIL_INDEX_AT_LAST_EPOCH : -1;
}

/*
 * Records longer than seq: refused, split into windows, or cut as ever;
 * "long" in the manifest (and so the settings) says which and how many.
 */
static int long_records(const trail_train_job *j, trail_dataset *d, int seq, json_t *extra, json_t **summary,
			trail_error *err)
{
	static const char *const names[] = {"truncate", "split", "error"};
	size_t first, n = trail_dataset_long(d, seq, &first);
	int rc;
	*summary = NULL;
	if (n && j->long_mode == TRAIL_LONG_ERROR)
		return trail_error_at(err, TRAIL_EDATA, j->data ? j->data : j->datanet, 0,
				      "record %zu (%s) has %zu tokens, more than --seq %d takes; see --long", first + 1,
				      d->id[first], d->len[first], seq);
	if (n && j->long_mode == TRAIL_LONG_SPLIT && (rc = trail_dataset_split(d, seq, err)))
		return rc;
	json_t *l = json_pack("{s:s, s:I, s:i, s:I}", "mode", names[j->long_mode], "records", (json_int_t)n, "seq", seq,
			      "rows", (json_int_t)trail_dataset_rows(d));
	if (!l || json_object_set_new(extra, "long", l))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (n)
		*summary = json_pack("{s:s, s:I, s:I, s:i, s:I}", "mode", names[j->long_mode], "records", (json_int_t)n,
				     "of", (json_int_t)d->n, "seq", seq, "rows", (json_int_t)trail_dataset_rows(d));
	return TRAIL_OK;
}

/* The attribution parameters mf-train's index has (attr-score --build-index's defaults, the run's seq). */
static trail_attr_params index_params(const trail_model *m, const trail_dataset *d, int seq)
{
	trail_attr_params ap = {.seed = 1, .damping = 0.01, .seq = seq, /* the automatic projection (attr-score's default) */
				.split = d->row_rec != NULL};
	if (trail_model_has_lora(m))
		ap.targets = trail_model_lora(m)->targets;
	return ap;
}

/*
 * The captured index finished: the rows no step visited at the final
 * weights, the identity of the files just written (the weights' digests,
 * as trail_attr_build_index_for takes them), the curvature, the record
 * table and the span index beside it.
 */
static int capture_finish(const trail_train_job *j, trail_attr_builder **ib, trail_attr_capture *cap, trail_model *m,
			  const trail_dataset *d, const char *path, const char *base_dg, json_t *result, trail_error *err)
{
	trail_attr_ident id;
	size_t ncap = 0, nrest = 0, rl;
	uint8_t root[32];
	char *ap = NULL, *sp = NULL;
	trail_map mp;
	int rc;
	memset(&id, 0, sizeof id);
	memcpy(id.root, d->root, sizeof id.root - 1);
	if (j->lora)
		snprintf(id.model, sizeof id.model, "%s", base_dg);
	else if ((rc = trail_base_digest(j->out, id.model, err)))
		return rc;
	if (j->lora) {
		if (!(ap = trail_path(j->out, "adapter_model.safetensors")))
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		if ((rc = trail_map_file(ap, &mp, err)))
			goto out;
		trail_digest_str(mp.data, mp.len, id.adapter);
		trail_unmap(&mp);
	}
	if ((rc = trail_attr_capture_rest(cap, m, j->batch, &ncap, &nrest, err)))
		goto out;
	trail_attr_builder_set_ident(*ib, &id);
	rc = trail_attr_builder_finish(*ib, d, err);
	*ib = NULL;
	if (rc)
		goto out;
	if (!(sp = trail_malloc(strlen(path) + 6))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	sprintf(sp, "%s.span", path);
	trail_unbase64(d->root, strlen(d->root), root, 32, &rl);
	if ((rc = trail_span_build((const int32_t *const *)d->tok, d->len, d->n, (uint32_t)trail_model_config(m)->vocab_size,
				   root, sp, err)))
		goto out;
	if (json_object_set_new(result, "index_rows", json_pack("{s:I, s:I}", "captured", (json_int_t)ncap, "final",
								(json_int_t)nrest)))
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	trail_free(ap), trail_free(sp);
	return rc;
}

static int add_record(void *ctx, const json_t *rec)
{
	return json_array_append((json_t *)ctx, (json_t *)rec) ? TRAIL_ENOMEM : TRAIL_OK;
}

static int write_manifest(const char *dir, const json_t *man, trail_error *err)
{
	char *p = trail_path(dir, "training.json"), *buf = NULL;
	size_t len;
	int rc = !p || !man ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : trail_jcs(man, &buf, &len, err);
	if (!rc) {
		buf[len] = '\n';
		rc = trail_write_atomic(p, buf, len + 1, 0644, err);
	}
	trail_free(p);
	trail_free(buf);
	return rc;
}

/* Every file of the output into the store, and a `model` entry naming them. */
static int record_in_store(trail_store *s, const trail_train_job *j, const json_t *man, int adapter,
			   json_t *result, trail_error *err)
{
	static const char *const model_files[] = {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "training.json",
						  "attribution.idx", "attribution.idx.span", NULL};
	static const char *const adapter_files[] = {"adapter_config.json", "adapter_model.safetensors", "training.json",
						    "attribution.idx", "attribution.idx.span", NULL};
	const char *const *files = adapter ? adapter_files : model_files;
	json_t *fo = json_object(), *entry = NULL;
	trail_ledger *l = NULL;
	uint64_t index;
	int rc = TRAIL_OK;
	for (int i = 0; files[i] && !rc; i++) {
		char *p = trail_path(j->out, files[i]), dg[72];
		struct stat sb;
		if (p && stat(p, &sb) == 0 && !(rc = trail_store_put_file(s, p, dg, err)))
			json_object_set_new(fo, files[i], json_string(dg));
		trail_free(p);
	}
	if (rc)
		goto out;
	entry = json_pack("{s:s, s:s, s:O, s:O?, s:O?, s:O?, s:O?}", "type", "model", "kind", adapter ? "adapter" : "model",
			  "files", fo, "training_root", json_object_get(man, "training_root"), "records_order_digest",
			  json_object_get(man, "records_order_digest"), "datanet", json_object_get(man, "datanet"),
			  "settings", json_object_get(man, "settings"));
	if (!entry) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	json_t *objs = json_array();
	const char *k;
	json_t *v;
	json_object_foreach(fo, k, v) json_array_append(objs, v);
	json_object_set_new(entry, "objects", objs);
	if (j->name)
		json_object_set_new(entry, "name", json_string(j->name));
	json_t *base = json_object_get(man, "base");
	if (base)
		json_object_set(entry, "base", json_object_get(base, "weights"));
	if ((rc = trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, err)) || (rc = trail_ledger_append(l, entry, &index, err)) ||
	    (rc = trail_ledger_commit(l, err)))
		goto out;
	json_object_set_new(result, "entry", json_integer((json_int_t)index));
	/* the name points at the weights file: what lora-serve and attr-score resolve */
	const char *wkey = adapter ? "adapter_model.safetensors" : "model.safetensors";
	if (j->name && (rc = trail_store_name_set(s, adapter ? "adapter" : "model", j->name,
						  json_string_value(json_object_get(fo, wkey)), err)))
		goto out;
out:
	trail_ledger_free(l);
	json_decref(entry);
	json_decref(fo);
	return rc;
}

int trail_train_job_run(const trail_train_job *j, json_t **result, trail_error *err)
{
	trail_model *m = NULL;
	char base_dg[72] = "";
	trail_tokenizer *tk = NULL;
	trail_dataset *d = NULL;
	trail_store *s = NULL;
	trail_train_run run = {0};
	trail_attr_builder *ib = NULL;
	trail_attr_capture *cap = NULL;
	trail_train_hook hook;
	char *ipath = NULL;
	json_t *recs = json_array(), *extra = json_object(), *man = NULL, *cj = NULL, *longs = NULL;
	FILE *metrics = NULL;
	void *buf = NULL;
	size_t len;
	char *name = NULL, *ckpt = NULL;
	uint64_t size = 0;
	int rc, trc;
	*result = NULL;
	if (!recs || !extra) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	/* the model first: cheap failures before reading the data */
	if (j->init) {
		trail_model_cfg gc;
		if (!(rc = trail_read_file(j->init, 1 << 20, &buf, &len, err)) &&
		    !(rc = trail_json_parse(buf, len, j->init, &cj, err)) && (rc = trail_model_config_parse(cj, &gc, err)))
			trail_error_at(err, rc, j->init, 0, "%s", err ? err->msg : "bad config");
		if (!rc)
			rc = trail_model_init(&gc, j->seed, &m, err);
		json_object_set_new(extra, "init", trail_model_config_json(&gc));
	} else if (!(rc = trail_model_load(j->base, &m, err))) {
		if (!(rc = trail_base_digest(j->base, base_dg, err))) /* model.safetensors, its shards or the GGUF file */
			json_object_set_new(extra, "base", json_pack("{s:s, s:s}", "dir", j->base, "weights", base_dg));
	}
	if (rc)
		goto out;
	const trail_model_cfg *gc = trail_model_config(m);
	if (j->merge) {
		if (!(rc = trail_model_load_adapter(m, j->adapter, err)) && !(rc = trail_model_merge_lora(m, err)) &&
		    !(rc = trail_model_save(m, j->out, err)) &&
		    !(rc = trail_tokenizer_load(j->tokenizer ? j->tokenizer : j->base, &tk, err)) &&
		    !(rc = trail_tokenizer_save(tk, j->out, err)))
			*result = json_pack("{s:s, s:s, s:s}", "output", j->out, "base", j->base, "adapter", j->adapter);
		goto out;
	}
	/* the tokenizer: given, else the base model's, else bytes */
	const char *tks = j->tokenizer ? j->tokenizer : "bytes";
	if (!j->tokenizer && j->base && !trail_tokenizer_load(j->base, &tk, NULL))
		tks = NULL;
	if ((tks && (rc = trail_tokenizer_load(tks, &tk, err))))
		goto out;
	if ((size_t)gc->vocab_size < trail_tokenizer_vocab_size(tk)) {
		rc = trail_error_at(err, TRAIL_EDATA, j->init ? j->init : j->base, 0,
				    "vocab_size %d is smaller than the tokenizer's %zu", gc->vocab_size,
				    trail_tokenizer_vocab_size(tk));
		goto out;
	}
	json_object_set_new(extra, "tokenizer", json_string(trail_tokenizer_kind(tk)));
	int seq = j->seq ? j->seq : gc->n_positions;
	if (seq > gc->n_positions) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "--seq %d is over the model's n_positions %d", seq, gc->n_positions);
		goto out;
	}
	/* the records */
	trail_free(buf);
	buf = NULL;
	if (j->data) {
		char dg[72];
		if ((rc = trail_read_file(j->data, (size_t)1 << 34, &buf, &len, err)) ||
		    (rc = trail_source_records(buf, len, j->data, 0, recs, err)))
			goto out;
		trail_digest_str(buf, len, dg);
		json_object_set_new(extra, "data", json_pack("{s:s, s:s}", "file", j->data, "sha256", dg));
	} else {
		trail_ledger *l;
		if ((rc = trail_datanet_spec(j->datanet, &name, &size, err)) || (rc = trail_store_open(j->home, &s, err)))
			goto out;
		if (!size && !(rc = trail_ledger_open(s, 0, &l, err))) {
			size = trail_ledger_size(l);
			trail_ledger_free(l);
		}
		if (rc || (rc = trail_datanet_snapshot(s, name, size, add_record, recs, err)))
			goto out;
		json_object_set_new(extra, "datanet", json_pack("{s:s, s:I}", "name", name, "tree_size", (json_int_t)size));
	}
	if ((rc = trail_dataset_from_records(recs, tk, &d, err)) || (rc = long_records(j, d, seq, extra, &longs, err)))
		goto out;
	if (j->eval) {
		double el;
		if ((!j->adapter || !(rc = trail_model_load_adapter(m, j->adapter, err))) &&
		    !(rc = trail_eval_loss(m, d, j->batch, seq, &el, err)))
			*result = json_pack("{s:f, s:I, s:O?}", "loss", round(el * 1e6) / 1e6, "records", (json_int_t)d->n,
					    "long", longs);
		goto out;
	}
	trail_lora_config lc;
	if (j->lora) {
		if ((rc = trail_lora_spec_parse(j->lora, &lc, err)) || (rc = trail_model_add_lora(m, &lc, j->seed, err)))
			goto out;
		lc = *trail_model_lora(m); /* the targets resolved for the architecture */
		json_t *pc = trail_lora_config_json(&lc, NULL);
		json_object_set_new(extra, "lora", json_pack("{s:i, s:f, s:O?, s:b}", "r", lc.r, "alpha", lc.alpha,
							     "target_modules", json_object_get(pc, "target_modules"),
							     "rslora", lc.rslora));
		json_decref(pc);
	}
	json_object_set_new(extra, "model", trail_model_config_json(gc));
	json_object_set_new(extra, "kind", json_string(j->lora ? "adapter" : "model"));
	trail_train_opts o = {
		.batch = j->batch, .seq = seq, .lr = j->lr > 0 ? j->lr : j->lora ? 1e-3 : 3e-4, .clip = 1.0,
		.seed = j->seed, .threads = j->threads, .stop = j->stop, .progress = j->progress,
		.checkpoint_every = j->checkpoint_every,
	};
	long per_epoch = (long)((trail_dataset_rows(d) + (size_t)o.batch - 1) / (size_t)o.batch);
	o.steps = j->steps ? j->steps : per_epoch * j->epochs;
	o.warmup = j->warmup >= 0 ? j->warmup : o.steps / 20;
	if ((rc = trail_mkdirs(j->out, 0755, err)) || !(ckpt = trail_path(j->out, "checkpoint.safetensors"))) {
		rc = rc ? rc : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	o.checkpoint = ckpt;
	/* rows captured in the run's own steps: the base's digest names the index (attr-score --build-index refuses none) */
	int capture = !j->no_index && j->index_at == TRAIL_INDEX_AT_LAST_EPOCH && (!j->lora || j->base);
	if (capture && json_object_set_new(extra, "index", json_pack("{s:s}", "at", "last-epoch"))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	char settings[72];
	trail_train_settings(d, &o, extra, settings);
	struct stat sb;
	if (j->resume && stat(ckpt, &sb)) {
		rc = trail_error_at(err, TRAIL_ENOINPUT, ckpt, 0, "no checkpoint to resume from");
		goto out;
	}
	if ((rc = j->resume ? trail_train_checkpoint_load(ckpt, m, &o, settings, &run, err)
			    : trail_train_run_init(&run, m, &o, settings, err)))
		goto out;
	if (j->metrics && !(metrics = fopen(j->metrics, j->resume ? "a" : "w"))) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", j->metrics);
		goto out;
	}
	o.metrics = metrics;
	if (capture) {
		trail_attr_params ap = index_params(m, d, seq);
		trail_attr_ident id;
		memset(&id, 0, sizeof id); /* known once the weights are written */
		if (!(ipath = trail_path(j->out, "attribution.idx"))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		if ((rc = trail_attr_builder_new(ipath, m, &id, &ap, d->n, 1, &ib, err)) ||
		    (rc = trail_attr_capture_new(ib, d, o.batch, o.seed, run.step, o.steps, &cap, err)))
			goto out;
		trail_attr_capture_hook(cap, &hook);
		o.hook = &hook;
	}
	trc = trail_train(m, d, &o, &run, err);
	if (trc == TRAIL_EAGAIN || trc == TRAIL_EDATA) {
		trail_error_set(err, trc, "%s; %s in %s", err ? err->msg : "stopped",
				trc == TRAIL_EAGAIN ? "continue with --resume from the checkpoint"
						    : "the state of the last good step is the checkpoint",
				ckpt);
		rc = trc;
		goto out;
	}
	if ((rc = trc) || (rc = j->lora ? trail_model_save_adapter(m, j->out, j->base, err) : trail_model_save(m, j->out, err)) ||
	    (!j->lora && (rc = trail_tokenizer_save(tk, j->out, err))))
		goto out;
	man = trail_training_manifest(d, &o, &run, extra);
	if ((rc = write_manifest(j->out, man, err)))
		goto out;
	unlink(ckpt); /* the run is complete: nothing to resume */
	if (!j->no_index && !capture) { /* the attribution index over the same records (attr-score(1)) */
		trail_attr_opts ao = {.model = j->lora ? j->base : j->out, .adapter = j->lora ? j->out : NULL,
				      .data = j->data, .datanet = j->datanet, .home = j->home};
		trail_attr_params ap = index_params(m, d, seq);
		ap.targets = 0; /* the build takes the adapter's own */
		/* the trained model as it is in memory: what ao's directories now hold, not loaded again */
		if ((rc = trail_attr_build_index_for(&ao, &ap, j->batch, m, tk, j->lora ? base_dg : NULL, err)))
			goto out;
	}
	*result = json_pack("{s:s, s:s, s:I, s:f, s:I, s:s, s:s}", "output", j->out, "kind", j->lora ? "adapter" : "model",
			    "steps", (json_int_t)run.step, "loss", run.step ? round(run.curve[run.step - 1] * 1e6) / 1e6 : 0.0,
			    "records", (json_int_t)d->n, "training_root", d->root, "settings", settings);
	if (*result && longs)
		json_object_set(*result, "long", longs);
	if (*result && capture && (rc = capture_finish(j, &ib, cap, m, d, ipath, base_dg, *result, err)))
		goto out;
	if (*result && !j->no_index) {
		char *ip = trail_path(j->out, "attribution.idx");
		json_object_set_new(*result, "index", ip ? json_string(ip) : json_null());
		trail_free(ip);
	}
	if (s && *result)
		rc = record_in_store(s, j, man, j->lora != NULL, *result, err);
out:
	if (metrics && fclose(metrics) && !rc)
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", j->metrics);
	if (rc) {
		json_decref(*result);
		*result = NULL;
	} else if (!*result) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	trail_train_run_release(&run);
	trail_attr_capture_free(cap);
	trail_attr_builder_free(ib);
	trail_free(ipath);
	json_decref(recs), json_decref(extra), json_decref(man), json_decref(cj), json_decref(longs);
	trail_free(buf), trail_free(name), trail_free(ckpt);
	trail_model_free(m);
	trail_tokenizer_free(tk);
	trail_dataset_free(d);
	trail_store_free(s);
	return rc;
}
