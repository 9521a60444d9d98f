"""Milestone 5 — evaluation: token-weighted perplexity (M5.1) and greedy decoding that returns
only the answer and stops at the end-of-turn token (M5.2).

Batches are padded here (not with milestone 1's ``collate``), so each check exercises its
own task only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from ftlab.course.standins import right_pad
from ftlab.course.teaching import expect, explained
from ftlab.evaluate import greedy_decode, perplexity
from ftlab.models.tiny import tiny_config, tiny_examples, tiny_model

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
    per_row = [_reference_nll(model, [{k: v[r:r + 1] for k, v in b.items()}], response_only)
               for b in batches for r in range(len(b["input_ids"]))]
    row_means = [t / c for t, c in per_row if c]
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
                  "mean of per-sequence means: a long reply must weigh more than a short one; "
                  "sum -log p over every scored token, divide once by their number"
                  if math.isclose(got.loss, sum(row_means) / len(row_means), rel_tol=1e-5) else
                  "score logits[:, t] against labels[:, t + 1] with log_softmax, float32"))
    expect(math.isclose(got.perplexity, math.exp(total / count), rel_tol=1e-5), task="M5.1",
           what="perplexity", expected=f"{math.exp(total / count):.4f}",
           got=f"{got.perplexity:.4f}", cause="perplexity = exp(mean NLL per token)")


def _batched_reference(model, batches, response_only):
    """Sum of -log p (float64) over scored tokens and their count, from one eval-mode forward
    of each batch as given, position by position; the model's mode is left as found."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            labels = batch["labels"] if response_only else ids.masked_fill(mask == 0, -100)
            log_p = model(input_ids=ids, attention_mask=mask).logits.double().log_softmax(-1)
            for row in range(len(ids)):
                for t in range(ids.shape[1] - 1):
                    if labels[row, t + 1] != -100:
                        total -= float(log_p[row, t, labels[row, t + 1]])
                        count += 1
    model.train(was_training)
    return total, count


def _attention_dropout_llama(p):
    config = tiny_config("llama")
    config.attention_dropout = p
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


PERPLEXITY_CASES = {
    "a batch with no response token": (
        "a batch whose labels are all -100 adds nothing to the sums; a per-batch mean "
        "(F.cross_entropy's default reduction, or the model's own loss) is 0/0 = NaN there: "
        "sum -log p over the scored tokens (reduction='sum') and count them"),
    "the model passed in train mode (attention dropout 0.5)": (
        "dropout still active: call model.eval() before the forward passes — in train mode "
        "dropout changes the logits at random and the perplexity with them"),
    "a bfloat16 model": (
        "log-probabilities in bfloat16: cast the logits to float32 (.float()) before "
        "log_softmax; bfloat16 keeps 3 significant digits, too few for a mean NLL"),
}


def _perplexity_case(case):
    examples = tiny_examples(6, seed=3, lengths=(6, 40))
    for e in examples[:2]:  # id 0, the padding id, is also a real target token here
        e["input_ids"][-2] = e["labels"][-2] = PAD
    batches = [right_pad(examples[:3], PAD), right_pad(examples[3:], PAD)]
    model = tiny_model("llama")
    if case.startswith("a batch with no response"):
        prompts = [dict(e, labels=[-100] * len(e["labels"])) for e in tiny_examples(2, seed=4)]
        batches.insert(1, right_pad(prompts, PAD))
    elif case.startswith("the model passed in train mode"):
        model = _attention_dropout_llama(0.5)
    else:
        model = _decoder("llama").to(torch.bfloat16)  # large logits: bf16 rounding shows
    return model, batches


@pytest.mark.parametrize("case", list(PERPLEXITY_CASES))
def test_m5_1_perplexity_edge_cases(case):
    model, batches = _perplexity_case(case)
    total, count = _batched_reference(model, batches, response_only=True)
    originals = [{k: v.clone() for k, v in b.items()} for b in batches]
    model.train(case.startswith("the model passed in train mode"))
    with explained(task="M5.1", what=f"perplexity with {case}",
                   expected="a Perplexity(loss, perplexity, tokens)", cause=PERPLEXITY_CASES[case]):
        got = perplexity(model, batches, response_only=True)
    kinds = tuple(type(x).__name__ for x in (got.loss, got.perplexity, got.tokens))
    expect(kinds == ("float", "float", "int"), task="M5.1",
           what="types of Perplexity's loss, perplexity and tokens",
           expected="(float, float, int): plain Python numbers", got=kinds,
           cause="tensors returned: convert the sums with float(...) and the count with int(...); "
                 "a tensor in the result breaks json.dumps of the metrics")
    changed = [k for b, o in zip(batches, originals) for k in o if not torch.equal(b[k], o[k])]
    expect(not changed, task="M5.1", what="the batches passed in, after perplexity",
           expected="unchanged", got=f"changed: {sorted(set(changed))}",
           cause="labels written in place (e.g. targets[~scored] = 0 on a view of the batch's "
                 "labels): use targets.clamp(min=0), which returns a new tensor; the caller "
                 "reuses its batches")
    expect(got.tokens == count, task="M5.1", what=f"scored tokens with {case}",
           expected=count, got=got.tokens,
           cause="count the labels that are not -100 (IGNORE_INDEX) after the shift, over every "
                 "batch; a label equal to the pad id (0 here) is a real target, not padding")
    expect(math.isclose(got.loss, total / count, rel_tol=1e-5), task="M5.1",
           what=f"mean negative log-likelihood with {case}", expected=f"{total / count:.6f}",
           got=f"{got.loss:.6f}", cause=PERPLEXITY_CASES[case])


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


def _slow_greedy(model, ids, mask, max_new_tokens, stop_ids, pad_id, pick=None):
    """The spec, one prompt at a time without padding or cache: re-run the whole sequence,
    choose ``pick(logits of the last position)``, stop after a token of ``stop_ids``; rows
    padded with ``pad_id`` to the longest. Eval mode; the model's mode is left as found."""
    choose = (lambda scores: scores.argmax(dim=-1)) if pick is None else pick
    was_training = model.training
    model.eval()
    rows = []
    with torch.no_grad():
        for row in range(len(ids)):
            sequence, new = ids[row][mask[row] == 1], []
            while len(new) < max_new_tokens and not (new and new[-1] in stop_ids):
                new.append(int(choose(model(input_ids=sequence[None]).logits[:, -1])[0]))
                sequence = torch.cat([sequence, torch.tensor(new[-1:])])
            rows.append(new)
    model.train(was_training)
    width = max(map(len, rows))
    return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])


def _first_new(free, row, step):
    """``free[row][step]`` if that token is new in its row and in no other row up to ``step``
    (so it stops only that row, there), else None."""
    token = free[row][step]
    clash = token in free[row][:step] or any(token in other[:step + 1]
                                              for r, other in enumerate(free) if r != row)
    return None if clash else token


def _stop_plan(free, steps):
    """One stop token per row, met first at about ``steps[row]`` (searching earlier steps when
    that token also occurs elsewhere): (token per row, step it ends at per row)."""
    tokens, ends = [], []
    for row, step in enumerate(steps):
        for s in range(step, 0, -1):
            token = _first_new(free, row, s)
            if token is not None and token not in tokens:
                tokens.append(token)
                ends.append(s)
                break
    return tokens, ends


def _second_best(logits):
    expect(logits.dim() == 2, task="M5.2", what="the logits passed to pick",
           expected="(B, vocab): the last position of each row", got=tuple(logits.shape),
           cause="call pick(out.logits[:, -1]) — one (B, vocab) row of logits per prompt")
    return logits.topk(2, dim=-1).indices[:, 1]


DECODE_CASES = {
    "several stop ids, every row stopping": (
        "every id of stop_ids ends a row (torch.isin(token, stops)), not only the first; a row "
        "keeps its stop token and is padded afterwards; decoding ends as soon as every row has "
        "stopped — append the step's tokens before checking that"),
    "several stop ids, the last stop exactly at max_new_tokens": (
        "the last allowed step may itself produce a stop token: keep it (append, then check); "
        "run exactly max_new_tokens steps when rows have not stopped before"),
    "stop ids inside the prompts (one prompt ends with one)": (
        "only generated tokens stop a row: stop ids inside the prompt (a chat prompt holds "
        "<|im_end|> after every earlier turn) must not finish it — start with no row done"),
    "a pad id that is also a real token": (
        "the pad id is also an ordinary token here: take the prompt mask from attention_mask, "
        "never from input_ids != pad_id, and grow it with a column of ones each step — a "
        "generated token equal to pad_id is still attended to"),
    "a pick function (sampling)": (
        "pick ignored: choose each token with pick(out.logits[:, -1]) when pick is given "
        "(argmax only when it is None); sampling passes its own chooser"),
    "the model passed in train mode (attention dropout 0.5)": (
        "dropout still active: call model.eval() before decoding; in train mode dropout "
        "changes the logits at random"),
}


def _decode_case(case):
    """(model, ids, mask, max_new_tokens, stop_ids, pad_id, pick) for ``case``."""
    model = _decoder("llama")
    ids, mask = _left_padded([5, 9, 7], seed=0)
    if case.startswith("several stop ids"):
        free = _slow_greedy(model, ids, mask, 8, [], PAD).tolist()
        tokens, ends = _stop_plan(free, [1, 4, 5])
        last = max(ends) + 1
        stops = tokens[-1:] + tokens[:-1]  # no row stops on its own index nor on stops[0] only
        return model, ids, mask, last if "exactly" in case else last + 2, stops, PAD, None
    if case.startswith("stop ids inside"):
        ids[0, -1], ids[1, 3] = 2, 3  # real prompt tokens (mask 1)
        return model, ids, mask, 6, [3, 2], PAD, None
    if case.startswith("a pad id"):
        free = _slow_greedy(model, ids, mask, 6, [], PAD).tolist()
        pad = free[0][1]  # row 0's second new token
        ids[1, 4] = pad   # and a real token inside prompt 1
        return model, ids.masked_fill(mask == 0, pad), mask, 6, [], pad, None
    if case.startswith("a pick"):
        return model, ids, mask, 6, [], PAD, _second_best
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    return model.train(), ids, mask, 6, [], PAD, None


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_m5_2_greedy_decode_follows_the_spec(case):
    model, ids, mask, max_new, stops, pad, pick = _decode_case(case)
    want = _slow_greedy(model, ids, mask, max_new, stops, pad, pick)
    given = (ids.clone(), mask.clone())
    with explained(task="M5.2", what=f"greedy_decode with {case}",
                   expected=f"({len(ids)}, <= {max_new}) new token ids", cause=DECODE_CASES[case]):
        got = greedy_decode(model, ids, mask, max_new_tokens=max_new, stop_ids=stops,
                            pad_id=pad, pick=pick)
    expect(torch.equal(ids, given[0]) and torch.equal(mask, given[1]), task="M5.2",
           what="input_ids and attention_mask after greedy_decode", expected="unchanged",
           got="changed", cause="build the grown mask and the sequence with torch.cat (new "
           "tensors); never write into the caller's input_ids or attention_mask")
    expect(got.dtype == torch.long, task="M5.2", what="dtype of the returned token ids",
           expected="torch.int64, like input_ids", got=got.dtype,
           cause="stack the chosen ids (argmax gives int64); a float buffer (torch.zeros(B, N)) "
                 "holds no token ids")
    expect(torch.equal(got, want), task="M5.2",
           what=f"tokens with {case} (max_new_tokens {max_new}, stop_ids {stops}, pad_id {pad})",
           expected=want.tolist(), got=got.tolist(),
           cause=_stop_cause(model, ids, mask, max_new, stops, got, want)
           if case.startswith("several stop ids") else DECODE_CASES[case])


def _stopped_by_the_prompt(ids, mask, stops, got, want):
    """Whether a row holding a stop id in its prompt came back finished before any token."""
    return any(got.dim() == 2 and got.shape[1] and int(want[r, 0]) not in stops
               and bool(torch.isin(ids[r][mask[r] == 1], torch.tensor(stops)).any())
               and got[r, 0] != want[r, 0] and (got[r] == got[r, 0]).all()
               for r in range(len(want)))


def _stop_cause(model, ids, mask, max_new, stops, got, want):
    """Which stopping mistake ``got`` shows, for the several-stop-ids cases."""
    width = want.shape[1]
    if _stopped_by_the_prompt(ids, mask, stops, got, want):
        return DECODE_CASES["stop ids inside the prompts (one prompt ends with one)"]
    if got.shape[1] > width and torch.equal(got[:, :width], want):
        return ("decoding went on after every row had stopped: end as soon as every row has "
                "produced a stop token (N < max_new_tokens then)")
    if got.shape[1] == width - 1 and torch.equal(got, want[:, :-1]):
        return ("the last stop token dropped: append the step's tokens, then check whether "
                "every row is done — the last allowed step may itself produce a stop token")
    if torch.equal(got, _slow_greedy(model, ids, mask, max_new, stops[:1], PAD)):
        return ("only the first stop id honoured: every id of stop_ids ends a row "
                "(torch.isin(token, stops)), not only stop_ids[0]")
    rows = [_slow_greedy(model, ids[r:r + 1], mask[r:r + 1], max_new, [stops[r]], PAD)[0].tolist()
            for r in range(len(ids))]
    longest = max(map(len, rows))
    if got.tolist() == [r + [PAD] * (longest - len(r)) for r in rows]:
        return ("stop ids compared element by element with the rows (token == stops pairs row i "
                "with stop_ids[i]): test membership, torch.isin(token, stops)")
    return DECODE_CASES["several stop ids, every row stopping"]
