/*
 * libtrail — the whole public interface, for programs that link against it.
 *
 * One header per subsystem; each includes the ones below it:
 *
 *   core/core.h      errors, allocation, JSON, option tables, digests, files
 *   ledger/ledger.h  keys and signed notes, Merkle trees, the object store, the log
 *   data/data.h      bundles, sources, validation, datanets
 *   model/model.h    tensors, architectures, LoRA, tokenizers, safetensors, training, inference
 *   attr/attr.h      the attribution index, scoring, spans
 *   serve/serve.h    the multi-adapter server
 *   settle/settle.h  epoch settlement
 *   report/report.h  the HTML report
 *   job/job.h        jobs that join subsystems (a training run on a datanet snapshot)
 *
 * Nothing inside lib/ includes this file (tests/cli/layout.sh checks it).
 */
#ifndef TRAIL_ALL_H
#define TRAIL_ALL_H

#include "core/core.h"
#include "ledger/ledger.h"
#include "data/data.h"
#include "model/model.h"
#include "attr/attr.h"
#include "serve/serve.h"
#include "settle/settle.h"
#include "report/report.h"

#endif
