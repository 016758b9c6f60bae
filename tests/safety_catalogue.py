"""The bad-input catalogue (issue 11), as data: one row per case, run by tests/test_safety_catalogue.py.

A row is the command line (``{ws}`` is the test's workspace folder, built by ``build_workspace`` there), the
expected exit code (2: the command line is wrong; 1: a runtime failure), words the one-line error must contain
(case-insensitive), and the workspace paths the command was asked to write (everything else must keep its
bytes). ``sandbox`` runs the row in a subprocess inside a private mount namespace: ``full`` mounts a 32 KiB
tmpfs at ``{ws}/full`` (a full disk), ``rofs`` remounts ``{ws}/ro`` read-only. ``env`` adds variables.

Workspace: ``corpus/`` (three .py files), ``corpus.txt``, ``empty.txt`` (0 bytes), ``blank.txt`` (white space),
``latin1.txt``, ``tok/`` (BPE, 320 tokens), ``bigtok/`` (BPE, 600 tokens), ``model/`` (scratch-gpt causal LM,
vocab 320, context 64, with tokenizer), ``run/`` (a finished training run: model + records, no checkpoints),
``gpt2/`` (GPT-2 checkpoint + tokenizer), ``gpt2_missing/`` (GPT-2 without ``h.0.mlp.c_fc.bias``), ``bert/``,
``bigvocab/`` (``model`` with ``bigtok``), ``badtypes/`` (scratch-gpt config with a string hidden size), ``truncated/`` (half a model.safetensors),
``emptydir/``, ``cls.csv``, ``cls_one.csv`` (one label), ``sms_latin1.txt``, ``instruct.json``,
``instruct_latin1.json``, ``instruct_bad.json`` (a record without output), ``instruct_empty.json`` (``[]``), ``prefs.json`` (prompt/chosen/rejected pairs), ``bad.yaml`` (max_steps: lots),
``ro/gpt2`` + ``ro/old`` (for ``rofs``), ``full/`` (for ``full``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    id: str
    args: tuple[str, ...]
    exit: int
    words: tuple[str, ...]
    writes: tuple[str, ...] = ()
    sandbox: str | None = None
    env: dict = field(default_factory=dict)


def row(id: str, cmd: str, exit: int, words: str, writes: str = "", sandbox: str | None = None, **env: str) -> Row:
    """A row from a command line and ``|``-separated words (paths in ``writes`` are workspace-relative)."""
    return Row(id, tuple(cmd.split()), exit, tuple(w for w in words.split("|") if w),
               tuple(w for w in writes.split("|") if w), sandbox, dict(env))


T = "train --preset tiny --max-steps 2 --no-malloc-tuning"
FC = "finetune classify"
FI = "finetune instruct"
FD = "finetune dpo"

ROWS = [
    # -- train ----------------------------------------------------------------------------------------------
    row("train-overwrite-typo-dataset", f"{T} --output-dir {{ws}}/run --overwrite --dataset {{ws}}/typo/", 1, "typo"),
    row("train-output-is-dataset", f"{T} --dataset {{ws}}/corpus --output-dir {{ws}}/corpus --overwrite", 1,
        "corpus|input"),
    row("train-output-inside-dataset", f"{T} --dataset {{ws}}/corpus --output-dir {{ws}}/corpus/run", 1,
        "corpus|input"),
    row("train-output-is-tokenizer", f"{T} --dataset {{ws}}/corpus --tokenizer {{ws}}/tok --output-dir {{ws}}/tok "
        "--overwrite", 1, "tok|input"),
    row("train-resume-without-checkpoint", f"{T} --dataset {{ws}}/corpus --output-dir {{ws}}/run --resume", 1,
        "checkpoint|--overwrite|--output-dir"),
    row("train-existing-output", f"{T} --dataset {{ws}}/corpus --output-dir {{ws}}/run", 1, "run|--overwrite"),
    row("train-empty-corpus", f"{T} --dataset {{ws}}/empty.txt --output-dir {{ws}}/out", 1, "empty.txt|empty"),
    row("train-blank-corpus", f"{T} --dataset {{ws}}/blank.txt --output-dir {{ws}}/out", 1, "blank.txt|empty"),
    row("train-latin1-corpus", f"{T} --dataset {{ws}}/latin1.txt --output-dir {{ws}}/out", 1,
        "latin1.txt|byte|iconv"),
    row("train-block-size-over-corpus", f"{T} --dataset {{ws}}/corpus.txt --block-size 60000 "
        "--output-dir {ws}/out", 1, "block"),
    row("train-config-wrong-type", f"{T} --config {{ws}}/bad.yaml --output-dir {{ws}}/out", 1, "max_steps|lots"),
    row("train-heads-not-divisible", f"{T} --num-attention-heads 3 --output-dir {{ws}}/out", 2, "divisible|--num-attention-heads"),
    row("train-output-under-a-file", f"{T} --dataset {{ws}}/corpus --output-dir {{ws}}/corpus.txt/run", 1,
        "corpus.txt"),
    row("train-missing-tokenizer", f"{T} --dataset {{ws}}/corpus --tokenizer {{ws}}/notok/ --output-dir {{ws}}/out",
        1, "notok"),
    # -- train-tokenizer ------------------------------------------------------------------------------------
    row("tokenizer-empty-corpus", "train-tokenizer {ws}/out --dataset {ws}/empty.txt", 1, "empty.txt|empty"),
    row("tokenizer-latin1", "train-tokenizer {ws}/out --dataset {ws}/latin1.txt", 1, "latin1.txt|byte|iconv"),
    row("tokenizer-missing-dataset", "train-tokenizer {ws}/out --dataset {ws}/nothing.txt", 1, "nothing.txt"),
    row("tokenizer-existing-output", "train-tokenizer {ws}/tok --dataset {ws}/corpus", 1, "tok|--overwrite"),
    row("tokenizer-output-is-dataset", "train-tokenizer {ws}/corpus.txt --dataset {ws}/corpus.txt --overwrite", 1,
        "corpus.txt|input"),
    row("tokenizer-overwrite-onto-a-file", "train-tokenizer {ws}/bad.yaml --dataset {ws}/corpus --overwrite", 1,
        "bad.yaml|file"),
    row("tokenizer-vocab-too-small", "train-tokenizer {ws}/out --dataset {ws}/corpus --vocab-size 1", 1,
        "--vocab-size|258"),
    row("tokenizer-model-max-length-0", "train-tokenizer {ws}/out --dataset {ws}/corpus --model-max-length 0", 2,
        "--model-max-length"),
    row("tokenizer-disk-full", "train-tokenizer {ws}/full/tok --dataset {ws}/corpus --vocab-size 2000 "
        "--min-frequency 1", 1, "no space left|full/", sandbox="full"),
    # -- corpus-stats ---------------------------------------------------------------------------------------
    row("stats-empty-corpus", "corpus-stats --dataset {ws}/empty.txt", 1, "empty.txt|empty"),
    row("stats-missing-dataset", "corpus-stats --dataset {ws}/nothing/", 1, "nothing"),
    row("stats-unknown-file-kind", "corpus-stats --dataset {ws}/bert/model.safetensors", 2, "model.safetensors|extension"),
    row("stats-latin1", "corpus-stats --dataset {ws}/latin1.txt", 1, "latin1.txt|byte|iconv"),
    row("tokenizer-hub-dataset-offline", "train-tokenizer {ws}/out --dataset nobody-here/no-such-dataset", 1,
        "nobody-here/no-such-dataset"),
    row("stats-tokenizer-is-bert-weights", "corpus-stats --dataset {ws}/corpus --tokenizer {ws}/bert", 1,
        "bert|tokenizer"),
    # -- generate -------------------------------------------------------------------------------------------
    row("generate-missing-model", "generate {ws}/nomodel/ --prompt hi", 1, "nomodel"),
    row("generate-max-new-tokens-0", "generate {ws}/model --max-new-tokens 0", 2, "--max-new-tokens"),
    row("generate-prompt-over-context", "generate {ws}/model --max-new-tokens 10 --prompt " + "x" * 400, 1,
        "context|prompt"),
    row("generate-cuda-unavailable", "generate {ws}/model --device cuda:99 --max-new-tokens 2", 1,
        "cuda|--device cpu"),
    row("generate-truncated-weights", "generate {ws}/truncated --max-new-tokens 2", 1,
        "truncated/model.safetensors|corrupt"),
    row("generate-bert-folder", "generate {ws}/bert --max-new-tokens 2", 1, "bert"),
    row("generate-config-wrong-type", "generate {ws}/badtypes --max-new-tokens 2", 1, "hidden_size"),
    row("generate-empty-folder", "generate {ws}/emptydir --max-new-tokens 2", 1, "emptydir"),
    row("generate-tokenizer-over-vocab", "generate {ws}/bigvocab --max-new-tokens 2", 1, "bigvocab|600|320"),
    row("generate-top-p", "generate {ws}/model --top-p 1.5", 2, "--top-p"),
    # -- finetune classify ----------------------------------------------------------------------------------
    row("classify-one-class", f"{FC} {{ws}}/model --dataset {{ws}}/cls_one.csv -o {{ws}}/out", 1,
        "'label'|class"),
    row("classify-output-is-base", f"{FC} {{ws}}/model --dataset {{ws}}/cls.csv -o {{ws}}/model --overwrite", 1,
        "model|input"),
    row("classify-missing-dataset", f"{FC} {{ws}}/model --dataset {{ws}}/nothing.csv -o {{ws}}/out", 1,
        "nothing.csv"),
    row("classify-sms-latin1", f"{FC} {{ws}}/model --dataset {{ws}}/sms_latin1.txt -o {{ws}}/out", 1,
        "sms_latin1.txt|byte"),
    row("classify-missing-label-column", f"{FC} {{ws}}/model --dataset {{ws}}/cls.csv --label-column nolabel "
        "-o {ws}/out", 1, "nolabel"),
    row("classify-bert-base", f"{FC} {{ws}}/bert --dataset {{ws}}/cls.csv -o {{ws}}/out", 1, "bert"),
    row("classify-tokenizer-over-vocab", f"{FC} {{ws}}/model --tokenizer {{ws}}/bigtok --dataset {{ws}}/cls.csv "
        "-o {ws}/out", 1, "600|320"),
    row("classify-truncated-weights", f"{FC} {{ws}}/truncated --dataset {{ws}}/cls.csv -o {{ws}}/out", 1,
        "truncated|corrupt"),
    row("classify-resume-without-checkpoint", f"{FC} {{ws}}/model --dataset {{ws}}/cls.csv -o {{ws}}/run "
        "--resume-from-checkpoint", 1, "run|checkpoint"),
    # -- finetune instruct ----------------------------------------------------------------------------------
    row("instruct-latin1", f"{FI} {{ws}}/model --dataset {{ws}}/instruct_latin1.json -o {{ws}}/out", 1,
        "instruct_latin1.json|byte"),
    row("instruct-record-without-output", f"{FI} {{ws}}/model --dataset {{ws}}/instruct_bad.json -o {{ws}}/out", 1,
        "record 1|output"),
    row("instruct-output-is-base", f"{FI} {{ws}}/model --dataset {{ws}}/instruct.json -o {{ws}}/model --overwrite",
        1, "model|input"),
    row("instruct-output-inside-base", f"{FI} {{ws}}/model --dataset {{ws}}/instruct.json -o {{ws}}/model/ft", 1,
        "model|input"),
    row("instruct-no-records", f"{FI} {{ws}}/model --dataset {{ws}}/instruct_empty.json -o {{ws}}/out", 1,
        "instruct_empty.json"),
    # -- finetune dpo ---------------------------------------------------------------------------------------
    row("dpo-latin1", f"{FD} {{ws}}/model --dataset {{ws}}/latin1.txt -o {{ws}}/out", 1, "latin1.txt|byte"),
    row("dpo-record-without-chosen", f"{FD} {{ws}}/model --dataset {{ws}}/instruct.json -o {{ws}}/out", 1,
        "record 0|chosen"),
    row("dpo-output-is-base", f"{FD} {{ws}}/model --dataset {{ws}}/prefs.json -o {{ws}}/model --overwrite", 1,
        "model|input"),
    # -- export / push --------------------------------------------------------------------------------------
    row("export-missing-model", "export {ws}/nomodel {ws}/out", 1, "nomodel"),
    row("export-output-is-model", "export {ws}/model {ws}/model --overwrite", 1, "model|input"),
    row("export-existing-output", "export {ws}/model {ws}/run", 1, "run|--overwrite"),
    row("export-bert-folder", "export {ws}/bert {ws}/out", 1, "bert"),
    row("export-truncated-weights", "export {ws}/truncated {ws}/out", 1, "truncated|corrupt"),
    row("push-invalid-repo-id", "push {ws}/model not/a/valid/id", 1, "repo id"),
    row("push-missing-folder", "push {ws}/noexport owner/name", 1, "noexport"),
    # -- convert-gpt2 ---------------------------------------------------------------------------------------
    row("convert-missing-source", "convert-gpt2 {ws}/nogpt2 {ws}/out", 1, "nogpt2|does not exist"),
    row("convert-empty-folder", "convert-gpt2 {ws}/emptydir {ws}/out", 1, "emptydir|empty"),
    row("convert-scratch-gpt-folder", "convert-gpt2 {ws}/model {ws}/out", 1, "model|scratch-gpt"),
    row("convert-bert-folder", "convert-gpt2 {ws}/bert {ws}/out", 1, "bert|not gpt-2"),
    row("convert-hub-id-offline", "convert-gpt2 nobody-here/no-such-gpt2 {ws}/out", 1,
        "nobody-here/no-such-gpt2|connection"),
    row("convert-missing-weight", "convert-gpt2 {ws}/gpt2_missing {ws}/out", 1, "h.0.mlp.c_fc.bias"),
    row("convert-output-inside-source", "convert-gpt2 {ws}/gpt2 {ws}/gpt2/out", 1, "gpt2|input"),
    row("convert-existing-output", "convert-gpt2 {ws}/gpt2 {ws}/run", 1, "run|--overwrite"),
    row("convert-disk-full", "convert-gpt2 {ws}/gpt2 {ws}/full/out", 1, "no space left|full/", sandbox="full"),
    row("convert-read-only-output", "convert-gpt2 {ws}/ro/gpt2 {ws}/ro/old --overwrite", 1, "ro|write",
        sandbox="rofs"),
    row("train-read-only-output", f"{T} --dataset {{ws}}/corpus --output-dir {{ws}}/ro/run", 1, "ro|write",
        sandbox="rofs"),
    row("tokenizer-read-only-output", "train-tokenizer {ws}/ro/tok --dataset {ws}/corpus", 1, "ro|write",
        sandbox="rofs"),
    row("export-disk-full", "export {ws}/model {ws}/full/export", 1, "no space left|full/", sandbox="full"),
    row("convert-config-wrong-type", "convert-gpt2 {ws}/badgpt2 {ws}/out", 1, "n_embd"),
    # -- an output folder that contains the inputs (the workspace itself), with --overwrite ------------------
    row("train-output-contains-inputs", f"{T} --dataset {{ws}}/corpus --output-dir {{ws}} --overwrite", 1,
        "contains|input"),
    row("tokenizer-output-contains-inputs", "train-tokenizer {ws} --dataset {ws}/corpus --overwrite", 1,
        "contains|input"),
    row("classify-output-contains-inputs", f"{FC} {{ws}}/model --dataset {{ws}}/cls.csv -o {{ws}} --overwrite", 1,
        "input"),
    row("classify-output-is-tokenizer", f"{FC} {{ws}}/model --dataset {{ws}}/cls.csv --tokenizer {{ws}}/tok "
        "-o {ws}/tok --overwrite", 1, "tok|input"),
    row("export-output-contains-model", "export {ws}/model {ws} --overwrite", 1, "contains|input"),
    row("convert-gpt2-output-contains-source", "convert-gpt2 {ws}/gpt2 {ws} --overwrite", 1, "contains|input"),
    row("convert-output-contains-source", "convert {ws}/gpt2 {ws} --overwrite", 1, "contains|input"),
    # -- convert (GPT-2 / Llama / Qwen family), evaluate, serve -----------------------------------------------
    row("family-missing-source", "convert {ws}/nosrc {ws}/out", 1, "nosrc|does not exist"),
    row("family-bert-folder", "convert {ws}/bert {ws}/out", 1, "bert"),
    row("family-output-inside-source", "convert {ws}/gpt2 {ws}/gpt2/out", 1, "gpt2|input"),
    row("evaluate-missing-model", "evaluate {ws}/nomodel/ --tasks lambada_openai", 1, "nomodel"),
    row("evaluate-not-a-model", "evaluate {ws}/corpus --tasks lambada_openai", 1, "corpus|config"),
    row("serve-missing-model", "serve {ws}/nomodel/", 1, "nomodel"),
    row("serve-not-a-model", "serve {ws}/emptydir", 1, "emptydir|config.json"),
    row("playground-missing-model", "playground {ws}/nomodel/ --port 0", 1, "nomodel"),
]
