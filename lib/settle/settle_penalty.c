/*
 * Penalties: the rules of the policy's "penalty" a payee breaks (counts of
 * rejected, flagged and poisoning reports over their maximum, the sum of
 * negative influence under its minimum). A payee who breaks one has every
 * reward withheld and a staker's stake slashed by slash_bps.
 */
#include "settle/settle_int.h"

json_t *settle_reasons(const trail_settle *s, const payee *p)
{
	json_t *a = json_array();
	if (s->max_rejected >= 0 && p->rejected > (uint64_t)s->max_rejected)
		json_array_append_new(a, json_string("rejected"));
	if (s->max_flagged >= 0 && p->flagged > (uint64_t)s->max_flagged)
		json_array_append_new(a, json_string("flagged"));
	if (s->max_poisoning >= 0 && p->poisoning > (uint64_t)s->max_poisoning)
		json_array_append_new(a, json_string("poisoning"));
	if (s->has_min_influence && p->neg < (i128)s->min_influence)
		json_array_append_new(a, json_string("negative-influence"));
	return a;
}

int settle_slash(const trail_settle *s, const uint32_t *order, json_t *slashed)
{
	int rc = TRAIL_OK;
	for (size_t i = 0; i < s->npay && !rc; i++) {
		const payee *p = &s->pay[order[i]];
		json_t *why = p->stake ? settle_reasons(s, p) : NULL;
		int64_t amt = (int64_t)((u128)p->stake * (u128)s->slash_bps / 10000);
		if (why && json_array_size(why) && amt > 0 &&
		    json_array_append_new(slashed, json_pack("{s:s, s:I, s:I, s:O}", "to", p->name, "stake",
							     (json_int_t)p->stake, "amount", (json_int_t)amt, "reasons",
							     why)))
			rc = TRAIL_ENOMEM;
		json_decref(why);
	}
	return rc;
}
