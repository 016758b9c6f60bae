// Load time and greedy decode speed of an exported model in a JavaScript runtime, for benchmarks/bench_runtimes.py.
//
// usage: node runtime_bench.mjs llama-cpp MODEL.gguf N ID,ID,...   (node-llama-cpp from .ci/node, one thread)
//        node runtime_bench.mjs transformersjs DIR DTYPE N PROMPT   (transformers.js from .ci/node-transformersjs)
// Prints one JSON line: {"load_s", "first_token_s", "decode_tokens_per_s", "tokens", ...}.
//   load_s               model file(s) to a ready session (the runtime's modules already imported)
//   first_token_s        the prompt's forward and the first token
//   decode_tokens_per_s  the other N - 1 tokens, one forward each with the KV cache
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const [mode, ...args] = process.argv.slice(2);

function rates(start, times) {
  const n = times.length;
  return { tokens: n, first_token_s: (times[0] - start) / 1000,
           decode_tokens_per_s: n > 1 ? (n - 1) / ((times[n - 1] - times[0]) / 1000) : null };
}

async function llamaCpp(modelPath, n, ids) {
  const require = createRequire(path.resolve(here, "../../.ci/node/package.json"));
  const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));
  const llama = await getLlama({ gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
    progressLogs: false, logLevel: LlamaLogLevel.error, maxThreads: 1 });
  let start = performance.now();
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  const context = await model.createContext({ contextSize: ids.length + n + 8, batchSize: ids.length + 8,
    sequences: 1, threads: 1 });
  const sequence = context.getSequence();
  const load = (performance.now() - start) / 1000;
  const times = [];
  let input = ids;
  start = performance.now();
  while (times.length < n) {  // greedy, token by token, as the GGUF tests decode
    const last = [input.at(-1), { generateNext: { token: true, options: { temperature: 0 } } }];
    const results = await sequence.controlledEvaluate([...input.slice(0, -1), last]);
    input = [results.at(-1).next.token];
    times.push(performance.now());
  }
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  return { load_s: load, ...rates(start, times), llama_cpp: llama.llamaCppRelease?.release ?? "unknown" };
}

async function transformersJs(dir, dtype, n, prompt) {
  const entry = path.resolve(here, "../../.ci/node-transformersjs/node_modules/@huggingface/transformers/dist/"
    + "transformers.node.mjs");
  const { env, pipeline, TextStreamer } = await import(pathToFileURL(entry).href);
  env.allowRemoteModels = false;
  env.useFSCache = false;
  env.localModelPath = path.dirname(path.resolve(dir)) + path.sep;
  let start = performance.now();
  const generator = await pipeline("text-generation", path.basename(path.resolve(dir)), { dtype, device: "cpu",
    local_files_only: true, session_options: { intraOpNumThreads: 1, interOpNumThreads: 1 } });
  const load = (performance.now() - start) / 1000;
  const times = [];
  const streamer = new TextStreamer(generator.tokenizer, { skip_prompt: true, callback_function: () => {},
    token_callback_function: () => times.push(performance.now()) });
  start = performance.now();
  await generator(prompt, { max_new_tokens: n, min_new_tokens: n, do_sample: false, streamer });
  await generator.dispose();
  return { load_s: load, ...rates(start, times) };
}

const result = mode === "llama-cpp"
  ? await llamaCpp(path.resolve(args[0]), Number(args[1]), args[2].split(",").map(Number))
  : await transformersJs(args[0], args[1], Number(args[2]), args[3]);
console.log(JSON.stringify(result));
