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

/*
 * Answers are joined to their events by the attribution's "event_digest"
 * (the digest of the event's canonical JSON), never by id alone; an
 * attribution that matches no event, and a settlement whose inputs are not
 * the attributions given, are shown with a warning in the page and listed
 * by trail_report_warning after the write (owned by the report, valid until
 * the next write or trail_report_free).
 */
int trail_report_write(trail_report *r, FILE *out, trail_error *err);
size_t trail_report_nwarnings(const trail_report *r);
const char *trail_report_warning(const trail_report *r, size_t i);

#endif
