/*
 * The attribution report: one self-contained HTML page (no scripts, no
 * network) from attribution records, inference events, training records and
 * settlement lines — each answer with its matched spans highlighted and
 * linked to their records, a bar chart of contributor shares, the proof
 * chain with its verification status, and the epoch's payouts.
 *
 * Ownership: the report takes its own references to the JSON values it is
 * given (json_incref); the caller keeps its own.
 */
#ifndef TRAIL_REPORT_H
#define TRAIL_REPORT_H
#include <stdio.h>

#include <jansson.h>

#include "ledger/ledger.h"
#include "core/core.h"

typedef struct trail_report trail_report;

trail_report *trail_report_new(const char *title);
void trail_report_free(trail_report *r);

/*
 * Add one NDJSON value of any kind the pipeline produces; it is sorted by
 * shape: an attribution record (has "contributors"), an inference event or
 * a lora-serve response (has "event" with output tokens, or "output_text"),
 * a settlement line ("type": "payout" or "epoch"), or a training record
 * (has "record" and "text"/"prompt"). TRAIL_EDATA for anything else.
 */
int trail_report_add(trail_report *r, json_t *v, trail_error *err);

/* Receipts in proof chains are checked against these keys (offline). */
void trail_report_set_verifiers(trail_report *r, const trail_verifier *const *vs, size_t n);

int trail_report_write(trail_report *r, FILE *out, trail_error *err);

#endif
