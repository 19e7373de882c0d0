// llama.cpp's greedy continuation of given token ids, through node-llama-cpp
// (its prebuilt CPU binaries), with or without a LoRA adapter GGUF:
//   node llamacpp_greedy.mjs NODE_MODULES MODEL.gguf ADAPTER.gguf|- N ID,ID,...
// Prints the N new token ids, comma-separated (for tests/cli/llamacpp-lora.sh).
import {pathToFileURL} from "node:url";
import {join} from "node:path";

const [nm, model, adapter, nS, idsS] = process.argv.slice(2);
if (!idsS) {
	console.error("usage: node llamacpp_greedy.mjs NODE_MODULES MODEL.gguf ADAPTER.gguf|- N ID,ID,...");
	process.exit(64);
}
const {getLlama} = await import(pathToFileURL(join(nm, "node-llama-cpp", "dist", "index.js")).href);
const n = Number(nS), ids = idsS.split(",").map(Number);
const llama = await getLlama({gpu: false, build: "never", maxThreads: 2, logLevel: "error"});
const m = await llama.loadModel({modelPath: model, gpuLayers: 0});
const lora = adapter === "-" ? undefined : {adapters: [{filePath: adapter, scale: 1}]};
const ctx = await m.createContext({contextSize: ids.length + n + 8, threads: 2, lora, sequences: 1});
const out = [];
for await (const tok of ctx.getSequence().evaluate(ids, {temperature: 0})) {
	out.push(tok);
	if (out.length >= n)
		break;
}
console.log(out.join(","));
await ctx.dispose();
await m.dispose();
