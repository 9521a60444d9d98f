"""Milestone 5 — evaluation: token-weighted perplexity (M5.1) and greedy decoding that returns
only the answer and stops at the end-of-turn token (M5.2).

Batches are padded here (not with milestone 1's ``collate``), so each check exercises its
own task only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ftlab.course.standins import right_pad
from ftlab.course.teaching import expect, explained
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
    batches = [right_pad(examples[:6], PAD), right_pad(examples[6:], PAD)]  # short vs long tokens
    return model, batches


@pytest.mark.parametrize("response_only", [True, False], ids=["response", "all"])
def test_m5_1_perplexity_is_token_weighted(setup, response_only):
    model, batches = setup
    total, count = _reference_nll(model, batches, response_only)
    with explained(task="M5.1", what=f"perplexity(model, 2 batches, response_only="
                   f"{response_only})", expected="a Perplexity(loss, perplexity, tokens)",
                   cause="logits[:, :-1] score labels[:, 1:]; gather the log-probability of each "
                         "label (clamp -100 to a valid id before gathering, then drop those)"):
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


def _decoder(arch):
    """A tiny random ``arch`` model whose weights are large enough that its greedy tokens
    depend on positions and context (at the default scale a tiny GPT-2 repeats its last
    prompt token whatever the position ids)."""
    model = tiny_model(arch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    return model


POSITION_HINT = ("with left padding, position ids count each row's real tokens from 0: "
                 "attention_mask.cumsum(-1) - 1 is -1 on the padding — set it to 0 there "
                 "(clamp(min=0)), or GPT-2's position table raises IndexError; later steps feed "
                 "the newest token as (B, 1), each row's last position id + 1, and the mask "
                 "grown by one column")


def _decode(model, ids, mask, max_new_tokens, stop_ids, arch):
    with explained(task="M5.2", what=f"greedy_decode on {arch}, {len(ids)} left-padded prompts "
                   f"of width {ids.shape[1]}, {max_new_tokens} new tokens",
                   expected=f"({len(ids)}, <= {max_new_tokens}) new token ids",
                   cause=POSITION_HINT):
        return greedy_decode(model, ids, mask, max_new_tokens=max_new_tokens,
                             stop_ids=stop_ids, pad_id=PAD)


def _mismatch_cause(got, want, mask):
    """Why the tokens differ from generate's, from which rows and steps differ."""
    wrong = [r for r in range(len(want)) if got[r].tolist() != want[r].tolist()]
    padded = [r for r in range(len(want)) if not mask[r].all()]
    if wrong and all(r in padded for r in wrong):
        return (f"only left-padded rows differ ({wrong}; the unpadded row matches): position "
                "ids must count each row's real tokens from 0 (attention_mask.cumsum(-1) - 1, "
                "set to 0 on the padding) and be passed to the model — the model's own default "
                "0..T-1 counts the padding — with the attention mask")
    if all(got[r, 0] == want[r, 0] for r in range(len(want))):
        return ("the first tokens match, later ones do not: each step feeds only the newest "
                "token with past_key_values from the previous step, each row's position id one "
                "more than its last, and the mask grown by one column of ones")
    return ("the first new token is wrong: it is the argmax of the logits at the last prompt "
            "position (logits[:, -1]) of a forward over the whole prompt with its mask and "
            "position ids; " + POSITION_HINT)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # RoPE and absolute positions
def test_m5_2_greedy_decode_returns_only_the_answer_equal_to_generate(arch):
    model = _decoder(arch)
    ids, mask = _left_padded([5, 11, 8], seed=7)  # no row stops within 6 tokens
    got = _decode(model, ids, mask, 6, [2], arch)
    echoed = got.shape[1] >= ids.shape[1] and torch.equal(got[:, :ids.shape[1]], ids)
    expect(got.dim() == 2 and got.shape[0] == 3 and got.shape[1] <= 6, task="M5.2",
           what="shape of the returned tokens for 3 prompts of width 11, 6 new tokens",
           expected="(3, 6): new tokens only", got=tuple(got.shape),
           cause="prompt echoed into the answer: return only the generated tokens, never the "
                 "prompt (decoding them would repeat the question in every reply)" if echoed
           else "stack one (B,) token per step into (B, N), at most max_new_tokens steps")
    want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                          eos_token_id=[2], pad_token_id=PAD)[:, ids.shape[1]:]
    expect(torch.equal(got, want), task="M5.2",
           what=f"tokens vs model.generate(do_sample=False) on {arch}, prompts of 5, 11 and 8 "
                "tokens left-padded to 11",
           expected=want.tolist(), got=got.tolist(),
           cause=_mismatch_cause(got, want, mask) if got.shape == want.shape else
           "stop when every row has produced a stop token, or after max_new_tokens")


def test_m5_2_stops_at_the_end_of_turn_token():
    model = _decoder("llama")
    ids, mask = _left_padded([7, 4], seed=3)
    free = _decode(model, ids, mask, 8, [2], "llama")
    stop = int(free[0, 2])  # pretend the third token of row 0 is the end-of-turn token
    got = _decode(model, ids, mask, 8, [stop], "llama")
    row0 = got[0].tolist()
    if row0[:3] == free[0, :3].tolist():
        cause = ("finished rows not padded: keep the stop token, then pad that row (it is "
                 "finished) while others go on; an answer that runs past the end of turn is "
                 "judged on words it never meant")
    elif row0[:2] == free[0, :2].tolist():
        cause = ("the stop token was dropped: keep the stop token, then pad that row — the "
                 "caller cuts the reply at it and reports that it ended")
    else:
        cause = ("row 0 changed before its stop token: the stop ids only decide when a row is "
                 "finished (keep the stop token, then pad); decoding itself must not change")
    expect(row0[:3] == free[0, :3].tolist() and all(t == PAD for t in row0[3:]), task="M5.2",
           what=f"row 0 when token {stop} (its 3rd) is the stop token",
           expected=f"{free[0, :3].tolist()} then padding", got=row0, cause=cause)
    if stop not in free[1].tolist():
        expect(got.shape[1] == 8, task="M5.2", what="decoding length while row 1 has not stopped",
               expected=8, got=got.shape[1], cause="stop only when every row has produced a "
               "stop token")
