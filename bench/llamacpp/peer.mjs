// llama.cpp's decode speed through node-llama-cpp (its prebuilt CPU
// binaries), greedy, on the same GGUF weights trail serves:
//   node peer.mjs MODEL.gguf THREADS PROMPT_TOKENS NEW_TOKENS [ADAPTER.gguf...]
// No adapter: one request on the base. One adapter: one request with it.
// Several: one request per adapter; llama.cpp applies adapters per context,
// so requests for different adapters cannot share a batch and run one after
// another, each in a context holding its adapter (made before the clock
// starts). Prints one JSON line: decode tokens/s over all requests, the
// prefill time, and the tokens of the first request (to compare with trail).
import {getLlama} from "node-llama-cpp";

const [model, threadsS, promptS, newS, ...adapters] = process.argv.slice(2);
if (!model || !newS) {
	console.error("usage: node peer.mjs MODEL.gguf THREADS PROMPT_TOKENS NEW_TOKENS [ADAPTER.gguf...]");
	process.exit(64);
}
const threads = Number(threadsS), nprompt = Number(promptS), nnew = Number(newS);
const llama = await getLlama({gpu: false, build: "never", maxThreads: threads, logLevel: "error"});
const m = await llama.loadModel({modelPath: model, gpuLayers: 0, useMmap: true});
const sets = adapters.length ? adapters.map((a) => ({adapters: [{filePath: a, scale: 1}]})) : [undefined];
const ctxs = [];
for (const lora of sets)
	ctxs.push(await m.createContext({contextSize: nprompt + nnew + 8, batchSize: Math.max(nprompt, 8), threads, lora,
					 sequences: 1}));
// a fixed prompt of token ids 10, 11, ... (inside every vocabulary), as trail's bench uses
const prompt = Array.from({length: nprompt}, (_, i) => 10 + (i % 1000));
let decodeNs = 0n, prefillNs = 0n, made = 0, first = null;
for (const ctx of ctxs) {
	const seq = ctx.getSequence();
	const out = [];
	const t0 = process.hrtime.bigint();
	let t1 = 0n;
	for await (const tok of seq.evaluate(prompt, {temperature: 0})) {
		if (!out.length)
			t1 = process.hrtime.bigint();
		out.push(tok);
		if (out.length >= nnew)
			break;
	}
	const t2 = process.hrtime.bigint();
	prefillNs += t1 - t0;
	decodeNs += t2 - t1;
	made += out.length - 1; // the first token comes with the prefill
	if (!first)
		first = out;
	seq.dispose();
}
console.log(JSON.stringify({peer: "llama.cpp (node-llama-cpp 3.21.1)", threads, requests: ctxs.length,
	prompt_tokens: nprompt, new_tokens: nnew, decode_tok_s: made / (Number(decodeNs) / 1e9),
	prefill_ms: Number(prefillNs) / 1e6 / ctxs.length, first_tokens: first}));
for (const c of ctxs)
	await c.dispose();
await m.dispose();
