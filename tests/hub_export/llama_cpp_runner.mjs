// Run GGUF files in real llama.cpp (node-llama-cpp's prebuilt CPU binaries) and print what it computed as JSON.
//
// Usage: node llama_cpp_runner.mjs < jobs.json > results.json
// Threads: LLAMA_CPP_THREADS (default 1: on a busy 2-core machine llama.cpp's spinning thread pool made each
// one-token decode of a tiny model take ~0.5 s with 2 threads, ~8 ms with 1).
//   jobs.json: {"jobs": [{"model": "path/model.gguf",
//                          "tokenize": ["text", ...],          // -> "tokens": [[ids], ...] (special tokens parsed)
//                          "greedy": [{"ids": [...], "n": 24}], // -> "greedy": [[ids], ...] (temperature 0, no stop)
//                          "logits": [[ids], ...]}]}           // -> "logits": [[[vocab floats] per position], ...]
//   and per job "architecture", "pre" and "chat_template" as llama.cpp read them from the file, and
//   "greedy_seconds" (wall time of all greedy decodes, prompt evaluation included).
//   results.json: {"llama_cpp": "<release>", "node_llama_cpp": "<version>", "results": [{...per job}]}
// node-llama-cpp is resolved from .ci/node/node_modules (NODE_PATH is ignored by ES modules), never downloaded
// or built: getLlama({build: "never"}) fails instead.

import {createRequire} from "node:module";
import {readFileSync} from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.SCRATCH_GPT_NODE_DIR ?? path.resolve(here, "../../.ci/node");
const require = createRequire(path.join(nodeDir, "package.json"));
const {getLlama, LlamaLogLevel} = await import(require.resolve("node-llama-cpp"));
const nlcVersion = JSON.parse(readFileSync(path.join(nodeDir, "node_modules/node-llama-cpp/package.json"), "utf8"))
    .version;

async function greedy(sequence, ids, n) {
    // Token by token through controlledEvaluate (temperature 0 = argmax over the raw logits, no stop token).
    await sequence.clearHistory();
    const out = [];
    let input = ids;
    while (out.length < n) {
        const last = [input.at(-1), {generateNext: {token: true, options: {temperature: 0}}}];
        const results = await sequence.controlledEvaluate([...input.slice(0, -1), last]);
        const token = results.at(-1).next.token;
        out.push(token);
        input = [token];
    }
    return out;
}

async function logits(sequence, ids, vocab) {
    // Raw logits after every position, fed one token per decode as generation does (one batch of many outputs
    // came back with NaN/-Infinity rows now and then after other models had run in the same process).
    await sequence.clearHistory();
    const rows = [];
    for (const id of ids) {
        const [result] = await sequence.controlledEvaluate([[id, {generateNext: {logits: true}}]]);
        const row = new Array(vocab).fill(0);
        for (const [token, value] of result.next.logits) row[token] = value;
        if (!row.every(Number.isFinite)) throw new Error(`llama.cpp gave non-finite logits at position ${rows.length}`);
        rows.push(row);
    }
    return rows;
}

async function runJob(llama, job) {
    const model = await llama.loadModel({modelPath: job.model, gpuLayers: 0});
    const longest = Math.max(16, ...(job.greedy ?? []).map((g) => g.ids.length + g.n),
        ...(job.logits ?? []).map((ids) => ids.length));
    // An f32 KV cache (llama.cpp's default is f16), so an f32 file is compared with f32 arithmetic throughout.
    const context = await model.createContext({contextSize: longest + 8, batchSize: longest + 8, sequences: 1,
        threads: Number(process.env.LLAMA_CPP_THREADS ?? 1), flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"});
    const nVocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
    const sequence = context.getSequence();
    const tokenizer = model.fileInfo.metadata.tokenizer;
    const result = {tokens: [], greedy: [], logits: [], architecture: model.fileInfo.metadata.general.architecture,
        chat_template: tokenizer.chat_template ?? null, pre: tokenizer.ggml.pre ?? null};
    try {
        for (const text of job.tokenize ?? []) result.tokens.push(Array.from(model.tokenize(text, true)));
        const start = performance.now();
        for (const g of job.greedy ?? []) result.greedy.push(await greedy(sequence, g.ids, g.n));
        result.greedy_seconds = (performance.now() - start) / 1000;
        for (const ids of job.logits ?? []) result.logits.push(await logits(sequence, ids, nVocab));
    } finally {
        await context.dispose();
        await model.dispose();
    }
    return result;
}

const jobs = JSON.parse(readFileSync(0, "utf8")).jobs;
const llama = await getLlama({gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
    progressLogs: false, logLevel: LlamaLogLevel.error, maxThreads: Number(process.env.LLAMA_CPP_THREADS ?? 1)});
const results = [];
for (const job of jobs) results.push(await runJob(llama, job));
const buildRelease = llama.llamaCppRelease?.release ?? "unknown";
process.stdout.write(JSON.stringify({llama_cpp: buildRelease, node_llama_cpp: nlcVersion, results}));
await llama.dispose();
