// Greedy text generation with transformers.js in Node, fully offline, for tests/hub_export/test_onnx.py.
//
// usage: node transformersjs_runner.mjs MODEL_DIR DTYPE MAX_NEW_TOKENS PROMPT
//   MODEL_DIR  an export folder written by `scratch-gpt export --format onnx` (config.json, tokenizer, onnx/)
//   DTYPE      fp32 (onnx/model.onnx) or q8 (onnx/model_quantized.onnx)
// Prints one JSON line: {"generated_text": ..., "dtype": ..., "seconds": ...}.
// Resolved from .ci/node-transformersjs/node_modules (NODE_PATH does not apply to ES modules, so the test passes
// the package's entry file in TRANSFORMERSJS_ENTRY).
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modelDir, dtype, maxNewTokens, prompt] = process.argv.slice(2);
const { env, pipeline } = await import(pathToFileURL(process.env.TRANSFORMERSJS_ENTRY).href);

env.allowRemoteModels = false; // never the Hub
env.allowLocalModels = true;
env.useBrowserCache = false;
env.useFSCache = false;
env.localModelPath = path.dirname(path.resolve(modelDir)) + path.sep;

const start = performance.now();
const generator = await pipeline("text-generation", path.basename(path.resolve(modelDir)), {
  dtype,
  device: "cpu",
  local_files_only: true,
});
const [output] = await generator(prompt, { max_new_tokens: Number(maxNewTokens), do_sample: false });
console.log(JSON.stringify({ generated_text: output.generated_text, dtype, seconds: (performance.now() - start) / 1000 }));
await generator.dispose();
