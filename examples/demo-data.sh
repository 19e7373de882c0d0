#!/bin/sh
# The demo's embedded dataset: five contributors writing about an invented
# archipelago, so every fact the model learns has exactly one known source.
#   alice    facts about islands (capitals, exports)     -> datanet "atlas"
#   bob      facts about inventors and their machines    -> datanet "atlas"
#   carol    descriptions of rivers and harbours          -> datanet "ports"
#   dave     copies some of alice's records, verbatim and lightly edited
#   mallory  spam and personal data
# usage: examples/demo-data.sh OUTDIR   (writes alice.ndjson ... mallory.ndjson,
#        prompts.ndjson). Deterministic: the same files every run.
set -e
out=${1:?usage: demo-data.sh OUTDIR}
mkdir -p "$out"

awk -v out="$out" '
function rec(file, text) { gsub(/"/, "\\\"", text); printf "{\"text\":\"%s\"}\n", text > (out "/" file) }
BEGIN {
	n = split("Varnholm Oskari Tellmark Brisca Quenna Halvard Morrow Sennet Ilvane Dorrik Caspen Ytterby", isle, " ")
	split("Oskelund Pirran Tellhaven Brisport Quennet Halby Morrowgate Sennabridge Ilvantown Dorrick Casby Ytter", cap, " ")
	split("amber salt copper wool glass tin honey cedar ink lace pearls slate", good, " ")
	split("north east south west north east south west north east south west", side, " ")
	for (i = 1; i <= n; i++) {
		rec("alice.ndjson", "The island of " isle[i] " lies in the " side[i] " of the Skarel Sea. Its capital is " cap[i] ".")
		rec("alice.ndjson", "The people of " isle[i] " trade in " good[i] ", which is carried from " cap[i] " to the mainland every spring.")
		rec("alice.ndjson", "The capital of " isle[i] " is " cap[i] ", a town of narrow streets and stone harbours.")
	}
	m = split("Ada_Renn Tomas_Vell Inga_Sorr Piet_Lumm Rosa_Kane Oleg_Dray Mira_Foss Jan_Osk", who, " ")
	split("tide_clock wind_loom salt_press glass_kiln rope_engine star_lens water_mill ice_saw", machine, " ")
	split("1712 1698 1730 1745 1721 1702 1750 1733", year, " ")
	for (i = 1; i <= m; i++) {
		w = who[i]; gsub(/_/, " ", w); k = machine[i]; gsub(/_/, " ", k)
		rec("bob.ndjson", w " built the first " k " in " year[i] ", and the design is still used on the islands.")
		rec("bob.ndjson", "The " k " was invented by " w ", who worked alone in a shed by the sea.")
		rec("bob.ndjson", "In " year[i] " " w " showed the " k " to the harbour masters, who bought twelve of them.")
	}
	r = split("Amsel Birke Corran Dunmore Elver Fennick Garrow Hesk", river, " ")
	split("slow and brown|quick and cold|wide and shallow|narrow and deep|green with weed|clear over stones|grey with silt|loud with falls", how, "|")
	split("mills and orchards|willows and sheep|three stone bridges|the old salt road|a ruined abbey|reed beds full of herons|the copper mines|farms that grow barley", past, "|")
	split("fishing boats wait for the evening tide|a lighthouse burns whale oil|ferries leave twice a day for the islands|merchants weigh wool on iron scales|the customs house flies a blue flag|children dive from the harbour wall|shipwrights build boats of cedar|a market sells smoked eel on Fridays", port, "|")
	for (i = 1; i <= r; i++) {
		rec("carol.ndjson", "The river " river[i] " runs " how[i] " from the hills, past " past[i] ", to the sea.")
		rec("carol.ndjson", "At the mouth of the " river[i] " is a harbour where " port[i] ".")
	}
	# dave: verbatim copies and near copies of alice
	for (i = 1; i <= 4; i++) {
		rec("dave.ndjson", "The island of " isle[i] " lies in the " side[i] " of the Skarel Sea. Its capital is " cap[i] ".")
		rec("dave.ndjson", "The people of " isle[i] " trade in " good[i] ", which is carried from " cap[i] " to the mainland every single spring.")
	}
	# mallory: spam, a duplicate of itself, and personal data
	rec("mallory.ndjson", "BUY NOW BUY NOW BUY NOW cheap cheap cheap cheap cheap cheap cheap cheap click here click here click here")
	rec("mallory.ndjson", "BUY NOW BUY NOW BUY NOW cheap cheap cheap cheap cheap cheap cheap cheap click here click here click here")
	rec("mallory.ndjson", "Write to mallory.deals@example.com or call +1 415 555 0133 for the best prices on the islands today.")
	rec("mallory.ndjson", "The capital of Varnholm is Mallorytown, and everyone who says otherwise is lying to you about it.")
	# prompts whose answers were planted by one contributor
	for (i = 1; i <= 6; i++)
		printf "{\"id\":\"q%d\",\"model\":\"atlas\",\"prompt\":\"The capital of %s is\",\"max_tokens\":12,\"temperature\":0,\"stop\":[\".\",\",\"]}\n", i, isle[i] > (out "/prompts.ndjson")
	for (i = 1; i <= 3; i++) {
		k = machine[i]; gsub(/_/, " ", k)
		printf "{\"id\":\"m%d\",\"model\":\"atlas\",\"prompt\":\"The %s was invented by\",\"max_tokens\":14,\"temperature\":0,\"stop\":[\",\",\".\"]}\n", i, k > (out "/prompts.ndjson")
	}
	for (i = 1; i <= 3; i++)
		printf "{\"id\":\"p%d\",\"model\":\"ports\",\"prompt\":\"At the mouth of the %s is a harbour where\",\"max_tokens\":40,\"temperature\":0,\"stop\":[\".\"]}\n", i, river[i] > (out "/prompts.ndjson")
}'
