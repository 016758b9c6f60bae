"""generate() through GenerationMixin: cached == uncached, sampling, beams, penalties, stop strings, streamer."""

import pytest
import torch
from transformers import GenerationConfig, TextIteratorStreamer

from scratch_gpt import ScratchGPTForCausalLM
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_logits_close, left_padded, manual_greedy


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(make_tiny_config()).eval()


def test_greedy_with_cache_equals_manual_uncached_loop_on_left_padded_batch(model):
    rows = [[5, 17, 99, 23, 42, 8, 7], [61, 3], [200, 201, 202, 203]]
    ids, mask = left_padded(rows)
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=1
    )
    for i, row in enumerate(rows):
        assert out[i, ids.shape[1] :].tolist() == manual_greedy(model, row, 12)


def test_static_cache_matches_dynamic_cache(model):
    ids, mask = left_padded([[5, 6, 7, 8, 9], [10, 11]])
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=1)
    dynamic = model.generate(ids, **kwargs)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    assert torch.equal(dynamic, static)


def test_incremental_forward_with_cache_matches_full_forward(model):
    ids = torch.randint(2, 320, (2, 14))
    full = model(ids).logits
    prefix = model(ids[:, :9], use_cache=True)
    step = model(ids[:, 9:], cache=prefix.cache, use_cache=True)
    assert prefix.cache.get_seq_length() == 14
    assert_logits_close(step.logits, full[:, 9:], model.config, 14)


def test_seeded_sampling_is_reproducible_and_seed_dependent(model):
    ids = torch.tensor([[5, 6, 7]])
    kwargs = dict(do_sample=True, max_new_tokens=20, top_k=50, top_p=0.95, temperature=1.5, eos_token_id=None)
    torch.manual_seed(123)
    a = model.generate(ids, **kwargs)
    torch.manual_seed(123)
    b = model.generate(ids, **kwargs)
    torch.manual_seed(7)
    c = model.generate(ids, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_beam_search_returns_ranked_distinct_sequences(model):
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(
        ids,
        num_beams=4,
        num_return_sequences=3,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape == (3, 10)
    assert len({tuple(s.tolist()) for s in out.sequences}) == 3
    scores = out.sequences_scores.tolist()
    assert scores == sorted(scores, reverse=True)
    # the best beam scores at least as well as greedy under the model (length-normalised log-prob)
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)

    def logprob(seq):
        logits = model(seq[None]).logits[0, 3:-1].log_softmax(-1)
        return logits.gather(-1, seq[4:, None]).sum().item() / 6

    assert logprob(out.sequences[0]) >= logprob(greedy[0]) - 1e-4


def test_repetition_penalty_reduces_repeats(model):
    ids = torch.tensor([[5, 6, 7]])
    plain = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None)[0, 3:].tolist()
    penalised = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, repetition_penalty=5.0)
    penalised = penalised[0, 3:].tolist()
    assert len(set(penalised)) > len(set(plain))


def test_stop_strings_and_streamer(model, tiny_tokenizer):
    prompt = tiny_tokenizer("def add(a, b):", return_tensors="pt")
    free = model.generate(**prompt, max_new_tokens=25, do_sample=False, eos_token_id=None, pad_token_id=1)
    text = tiny_tokenizer.decode(free[0, prompt.input_ids.shape[1] :])
    assert len(text) >= 4
    stop = text[2:4]  # a string the free run is certain to produce
    stopped = model.generate(
        **prompt,
        max_new_tokens=25,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=1,
        stop_strings=[stop],
        tokenizer=tiny_tokenizer,
    )
    stopped_text = tiny_tokenizer.decode(stopped[0, prompt.input_ids.shape[1] :])
    assert stopped.shape[1] < free.shape[1]
    assert stop in stopped_text and text.startswith(stopped_text)

    streamer = TextIteratorStreamer(tiny_tokenizer, skip_prompt=True)
    model.generate(**prompt, max_new_tokens=25, do_sample=False, eos_token_id=None, pad_token_id=1, streamer=streamer)
    assert "".join(streamer) == text


def test_generation_config_defaults_come_from_model_config(model, tmp_path):
    model.generation_config = GenerationConfig(max_new_tokens=5, eos_token_id=0, pad_token_id=1)
    model.save_pretrained(tmp_path)
    reloaded = ScratchGPTForCausalLM.from_pretrained(tmp_path)
    assert reloaded.generation_config.max_new_tokens == 5
    out = reloaded.generate(torch.tensor([[5, 6]]), do_sample=False)
    assert out.shape[1] <= 7
