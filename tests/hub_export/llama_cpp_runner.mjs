// Run GGUF files in real llama.cpp (node-llama-cpp's prebuilt CPU binaries) and print what it computed as JSON.
//
// Usage: node llama_cpp_runner.mjs < jobs.json > results.json
//   jobs.json: {"jobs": [{"model": "path/model.gguf",
//                          "tokenize": ["text", ...],          // -> "tokens": [[ids], ...] (special tokens parsed)
//                          "greedy": [{"ids": [...], "n": 24}], // -> "greedy": [[ids], ...] (temperature 0, no stop)
//                          "logits": [[ids], ...]}]}           // -> "logits": [[[vocab floats] per position], ...]
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

async function greedy(context, ids, n) {
    const sequence = context.getSequence();
    const out = [];
    try {
        for await (const token of sequence.evaluate(ids, {temperature: 0})) {
            out.push(token);
            if (out.length >= n) break;
        }
    } finally {
        sequence.dispose();
    }
    return out;
}

async function logits(context, ids, vocab) {
    const sequence = context.getSequence();
    try {
        const input = ids.map((id) => [id, {generateNext: {logits: true}}]);
        const results = await sequence.controlledEvaluate(input);
        return results.map((result) => {
            const row = new Array(vocab).fill(0);
            for (const [token, value] of result.next.logits) row[token] = value;
            return row;
        });
    } finally {
        sequence.dispose();
    }
}

async function runJob(llama, job) {
    const model = await llama.loadModel({modelPath: job.model, gpuLayers: 0});
    const longest = Math.max(16, ...(job.greedy ?? []).map((g) => g.ids.length + g.n),
        ...(job.logits ?? []).map((ids) => ids.length));
    const context = await model.createContext({contextSize: longest + 8, batchSize: longest + 8, sequences: 1,
        threads: Number(process.env.LLAMA_CPP_THREADS ?? 2)});
    const nVocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
    const result = {tokens: [], greedy: [], logits: []};
    try {
        for (const text of job.tokenize ?? []) result.tokens.push(Array.from(model.tokenize(text, true)));
        for (const g of job.greedy ?? []) result.greedy.push(await greedy(context, g.ids, g.n));
        for (const ids of job.logits ?? []) result.logits.push(await logits(context, ids, nVocab));
    } finally {
        await context.dispose();
        await model.dispose();
    }
    return result;
}

const jobs = JSON.parse(readFileSync(0, "utf8")).jobs;
const llama = await getLlama({gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
    progressLogs: false, logLevel: LlamaLogLevel.error, maxThreads: Number(process.env.LLAMA_CPP_THREADS ?? 2)});
const results = [];
for (const job of jobs) results.push(await runJob(llama, job));
const buildRelease = llama.llamaCppRelease?.release ?? "unknown";
process.stdout.write(JSON.stringify({llama_cpp: buildRelease, node_llama_cpp: nlcVersion, results}));
await llama.dispose();
