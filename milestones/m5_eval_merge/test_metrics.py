"""Milestone 5 — evaluation: token-weighted perplexity (M5.1) and greedy decoding that returns
only the answer and stops at the end-of-turn token (M5.2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ftlab.course.teaching import expect
from ftlab.data import collate
from ftlab.evaluate import greedy_decode, perplexity
from ftlab.models.tiny import tiny_examples, tiny_model

pytestmark = pytest.mark.m5

PAD = 0


def _reference_nll(model, batches, response_only):
    """Sum of -log p over scored tokens and their count, computed example by example."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            for row in range(len(batch["input_ids"])):
                real = int(batch["attention_mask"][row].sum())
                ids = batch["input_ids"][row, :real]
                labels = batch["labels"][row, :real] if response_only else ids
                logits = model(input_ids=ids[None]).logits[0, :-1]
                keep = labels[1:] != -100
                total += float(F.cross_entropy(logits[keep], labels[1:][keep], reduction="sum"))
                count += int(keep.sum())
    return total, count


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    examples = tiny_examples(9, seed=8, lengths=(6, 60))
    examples.sort(key=lambda e: len(e["input_ids"]))
    batches = [collate(examples[:6], PAD), collate(examples[6:], PAD)]  # short vs long tokens
    return model, batches


@pytest.mark.parametrize("response_only", [True, False], ids=["response", "all"])
def test_m5_1_perplexity_is_token_weighted(setup, response_only):
    model, batches = setup
    total, count = _reference_nll(model, batches, response_only)
    got = perplexity(model, batches, response_only=response_only)
    per_batch = [_reference_nll(model, [b], response_only) for b in batches]
    mean_of_means = sum(t / c for t, c in per_batch) / len(per_batch)
    expect(got.tokens == count, task="M5.1",
           what=f"scored tokens ({'response tokens' if response_only else 'all real tokens'})",
           expected=count, got=got.tokens,
           cause="count the labels that are not -100 after the shift (logits at t predict the "
                 "label at t + 1); for all tokens, score every non-padding token")
    expect(math.isclose(got.loss, total / count, rel_tol=1e-5), task="M5.1",
           what="mean negative log-likelihood", expected=f"{total / count:.6f}",
           got=f"{got.loss:.6f}",
           cause=("mean of batch means: sum -log p over every scored token of all batches, "
                  "divide once by the number of scored tokens"
                  if math.isclose(got.loss, mean_of_means, rel_tol=1e-5) else
                  "score logits[:, t] against labels[:, t + 1] with log_softmax, float32"))
    expect(math.isclose(got.perplexity, math.exp(total / count), rel_tol=1e-5), task="M5.1",
           what="perplexity", expected=f"{math.exp(total / count):.4f}",
           got=f"{got.perplexity:.4f}", cause="perplexity = exp(mean NLL per token)")


def _left_padded(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(4, 96, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # RoPE and absolute positions
def test_m5_2_greedy_decode_returns_only_the_answer_equal_to_generate(arch):
    model = tiny_model(arch)
    ids, mask = _left_padded([5, 11, 8])
    got = greedy_decode(model, ids, mask, max_new_tokens=6, stop_ids=[2], pad_id=PAD)
    expect(got.shape[0] == 3 and got.shape[1] <= 6, task="M5.2",
           what="shape of the returned tokens for 3 prompts of width 11, 6 new tokens",
           expected="(3, 6): new tokens only", got=tuple(got.shape),
           cause="prompt echoed into the answer: return only the generated tokens, never the "
                 "prompt (decoding them would repeat the question in every reply)")
    want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                          eos_token_id=[2], pad_token_id=PAD)[:, ids.shape[1]:]
    expect(torch.equal(got, want), task="M5.2", what="tokens vs model.generate(do_sample=False)",
           expected=want.tolist(), got=got.tolist(),
           cause="with left padding, position ids must count real tokens only "
                 "(attention_mask.cumsum(-1) - 1), the mask must grow by one column per step, "
                 "and each step feeds only the newest token with the cache")


def test_m5_2_stops_at_the_end_of_turn_token():
    model = tiny_model("llama")
    ids, mask = _left_padded([7, 4], seed=3)
    free = greedy_decode(model, ids, mask, max_new_tokens=8, stop_ids=[2], pad_id=PAD)
    stop = int(free[0, 2])  # pretend the third token of row 0 is the end-of-turn token
    got = greedy_decode(model, ids, mask, max_new_tokens=8, stop_ids=[stop], pad_id=PAD)
    row0 = got[0].tolist()
    expect(row0[:3] == free[0, :3].tolist() and all(t == PAD for t in row0[3:]), task="M5.2",
           what=f"row 0 when token {stop} (its 3rd) is the stop token",
           expected=f"{free[0, :3].tolist()} then padding", got=row0,
           cause="keep the stop token, then pad that row (it is finished) while others go on; "
                 "an answer that runs past the end of turn is judged on words it never meant")
    if stop not in free[1].tolist():
        expect(got.shape[1] == 8, task="M5.2", what="decoding length while row 1 has not stopped",
               expected=8, got=got.shape[1], cause="stop only when every row has produced a "
               "stop token")
