// llama.cpp's greedy tokens for a GGUF file written by trail (tests/tools/st2gguf),
// to compare with trail's on the same ids: node llamacpp_greedy.mjs FILE.gguf N ID...
// Needs node-llama-cpp (3.21.1 was used; it is not among the pinned test packages).
import {getLlama} from "node-llama-cpp";
const [,, path, n, ...ids] = process.argv;
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath: path});
const context = await model.createContext({contextSize: 128});
const seq = context.getSequence();
const out = [];
for await (const t of seq.evaluate(ids.map(Number), {temperature: 0})) {
	out.push(t);
	if (out.length >= Number(n)) break;
}
console.log(out.join(" "));
process.exit(0);
