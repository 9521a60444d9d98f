"""M1.3 — labels: the assistant's tokens and each end-of-turn are trained, nothing else.

These checks grade M1.3 alone: while they run, ``render`` (M1.2) is the chat template
applied directly, so a slip in M1.2 is reported by M1.2's checks, not here. A failure
compares your tokens and labels with the template's own assistant mask, position by
position, and names every mistake it saw.
"""

from __future__ import annotations

import copy
import difflib
import json

import pytest
from tokenizers import processors

from ftlab.course.teaching import expect, explained
from ftlab.data.labels import IGNORE_INDEX, tokenize_with_labels
from ftlab.paths import data_dir

pytestmark = pytest.mark.m1
TASK = "M1.3"


def _template_render(conversation, tokenizer, generation_prompt=False):
    """A known-good ``render`` (M1.2), so that these checks see M1.3 only."""
    turns = conversation
    if generation_prompt and turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    return tokenizer.apply_chat_template(turns, tokenize=False,
                                         add_generation_prompt=generation_prompt)


@pytest.fixture(autouse=True)
def _grade_m1_3_alone(monkeypatch):
    monkeypatch.setattr("ftlab.data.labels.render", _template_render)


def _oracle(conv, tokenizer):
    """The template's own assistant mask ({% generation %} markers): an independent answer."""
    enc = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return enc["input_ids"], [i if m else IGNORE_INDEX
                              for i, m in zip(enc["input_ids"], enc["assistant_masks"])]


def _embedded(n=40):
    lines = (data_dir() / "sft/messages.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["messages"] for line in lines]


def _learner(conv, tokenizer, max_length=512, what="tokens and labels of one conversation"):
    """The learner's ``{"input_ids", "labels"}`` as int lists; a crash becomes a teaching
    message."""
    with explained(task=TASK, what=what, expected='{"input_ids": [...], "labels": [...]}',
                   cause="tokenize render(conversation) once (add_special_tokens=False, "
                         "return_offsets_mapping=True); compare offsets with assistant_spans"):
        ex = tokenize_with_labels(conv, tokenizer, max_length=max_length)
        ids, labels = list(ex["input_ids"]), list(ex["labels"])
    expect(None not in ids, task=TASK, what=what, expected="token ids (ints)",
           got=f"None in input_ids at {ids.index(None) if None in ids else -1}",
           cause="a BOS added: this tokenizer has none (bos_token_id is None) and the chat "
                 "template needs none; add no token to the rendered text")
    with explained(task=TASK, what=what, expected="lists of ints", cause="return plain lists"):
        ids, labels = [int(t) for t in ids], [int(t) for t in labels]
    expect(len(ids) == len(labels), task=TASK, what=what, expected="one label per token",
           got=f"{len(ids)} input_ids, {len(labels)} labels",
           cause="labels are as long as input_ids: IGNORE_INDEX where not trained")
    return ids, labels


def _align(want_ids, ids):
    """Pairs (i in the reference, j in the learner's) of matching tokens, the learner's
    positions with no match (added tokens), and the count of reference tokens missing."""
    if ids == want_ids:
        return [(i, i) for i in range(len(ids))], [], 0
    pairs, added, missing = [], [], 0
    matcher = difflib.SequenceMatcher(a=want_ids, b=ids, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs += zip(range(i1, i2), range(j1, j2))
        else:
            added += range(j1, j2)
            missing += i2 - i1
    return pairs, added, missing


def _diagnose(ids, labels, want_ids, want_labels, tokenizer):
    """Every mistake visible in the learner's (ids, labels) against the reference."""
    eos = tokenizer.eos_token_id

    def show(positions):
        return [tokenizer.decode([ids[j]]) for j in positions][:8]

    causes = []
    pairs, added, missing = _align(want_ids, ids)
    first = pairs[0][1] if pairs else len(ids)
    front = [j for j in added if j < first]
    extra_eos = [j for j in added if j >= first and ids[j] == eos]
    other = [j for j in added if j >= first and ids[j] != eos]
    if front:
        causes.append(f"a BOS or other token added in front ({show(front)}): the rendered text "
                      "already holds every special token; tokenize it with "
                      "add_special_tokens=False and add nothing")
    if any(labels[j] != IGNORE_INDEX for j in extra_eos):
        causes.append("EOS trained twice: an end-of-turn token was added after the template's "
                      "own <|im_end|>, which already closes each turn and is the one to train")
    elif extra_eos:
        causes.append("an extra EOS token added: the template already closes each turn")
    if other or missing:
        causes.append(f"input_ids are not the rendered text tokenized once ({len(other)} tokens "
                      f"added, {missing} missing): tokenize render(conversation) in one call")

    wrong_value = [j for _, j in pairs if labels[j] not in (IGNORE_INDEX, ids[j])]
    if wrong_value:
        nxt = sum(j + 1 < len(ids) and labels[j] == ids[j + 1] for j in wrong_value)
        prev = sum(j > 0 and labels[j] == ids[j - 1] for j in wrong_value)
        if max(nxt, prev) >= len(wrong_value) / 2:
            which = "next" if nxt >= prev else "previous"
            causes.append(f"labels shifted by one (off-by-one): each trained label holds the "
                          f"{which} token; labels[i] is input_ids[i] itself, the model shifts "
                          "them when computing the loss")
        else:
            causes.append(f"trained labels that are not their own token id ({len(wrong_value)}): "
                          "labels[i] is input_ids[i] or IGNORE_INDEX")
        return causes

    trained = [lab != IGNORE_INDEX for lab in want_labels]

    def at_boundary(i):
        return any(0 <= k < len(trained) and trained[k] != trained[i] for k in (i - 1, i + 1))

    prompt_trained = [(i, j) for i, j in pairs if labels[j] != IGNORE_INDEX and not trained[i]]
    eos_masked = [(i, j) for i, j in pairs if labels[j] == IGNORE_INDEX and trained[i]
                  and want_ids[i] == eos]
    reply_masked = [(i, j) for i, j in pairs if labels[j] == IGNORE_INDEX and trained[i]
                    and want_ids[i] != eos]
    if prompt_trained and all(want_ids[i] == eos for i, _ in prompt_trained):
        causes.append(f"every <|im_end|> trained, also the {len(prompt_trained)} closing "
                      "system and user turns: an end-of-turn token is a target only inside an "
                      "assistant span (a token's id says nothing about whose turn it closes)")
        prompt_trained = []
    if eos_masked:
        total = sum(t and want_ids[i] == eos for i, t in enumerate(trained))
        causes.append(f"EOS masked ({len(eos_masked)} of {total} end-of-turn tokens not "
                      "trained): the model never learns to stop; each assistant turn's "
                      "<|im_end|> is a target (the spans include it)")
    for found, kind, fix in (
            (prompt_trained, "prompt tokens trained",
             "system, user and markup tokens get IGNORE_INDEX (-100)"),
            (reply_masked, "reply tokens masked", "every token of an assistant reply is a target")):
        if not found:
            continue
        tokens = show([j for _, j in found])
        if all(at_boundary(i) for i, _ in found):
            causes.append(f"off-by-one at the boundary ({kind}: {tokens}, next to a reply's "
                          "start or end): a token is trained when its character range lies "
                          "inside a span, from the span's first character to its last")
        else:
            causes.append(f"{kind} ({len(found)}: {tokens}): {fix}")
    return causes


def _cause(ids, labels, conv, tokenizer):
    want_ids, want_labels = _oracle(conv, tokenizer)
    causes = _diagnose(ids, labels, want_ids, want_labels, tokenizer)
    return "; ".join(causes) or "labels differ from the template's assistant mask"


def _untruncated_cause(ids, labels, conv, tokenizer):
    """The diagnosis of an untruncated result when it is already wrong, else None (so a
    truncation check blames truncation only when the rest is right)."""
    want_ids, want_labels = _oracle(conv, tokenizer)
    if (ids, labels) == (want_ids, want_labels):
        return None
    return "before any truncation: " + _cause(ids, labels, conv, tokenizer)


def test_m1_3_input_ids_are_the_rendered_text_tokenized_once(tokenizer, multi_turn):
    ids, labels = _learner(multi_turn, tokenizer)
    want_ids, _ = _oracle(multi_turn, tokenizer)
    expect(ids == want_ids, task=TASK, what="input_ids of a two-answer conversation",
           expected=f"{len(want_ids)} tokens, starting {tokenizer.decode(want_ids[:3])!r}, "
                    f"ending {tokenizer.decode(want_ids[-3:])!r}",
           got=f"{len(ids)} tokens, starting {tokenizer.decode(ids[:3])!r}, "
               f"ending {tokenizer.decode(ids[-3:])!r}",
           cause=_cause(ids, labels, multi_turn, tokenizer))


def test_m1_3_every_end_of_turn_is_trained(tokenizer, multi_turn):
    ids, labels = _learner(multi_turn, tokenizer)
    eos = tokenizer.eos_token_id
    want_ids, want_labels = _oracle(multi_turn, tokenizer)
    trained_eos = [j for j, (t, lab) in enumerate(zip(ids, labels)) if t == eos and lab == eos]
    want_eos = [i for i, lab in enumerate(want_labels) if lab == eos]
    expect(trained_eos == want_eos, task=TASK,
           what="trained <|im_end|> tokens in a two-answer conversation",
           expected=f"{len(want_eos)}, at positions {want_eos}",
           got=f"{len(trained_eos)}, at positions {trained_eos}",
           cause=_cause(ids, labels, multi_turn, tokenizer))


def test_m1_3_no_prompt_token_is_trained(tokenizer, multi_turn):
    ids, labels = _learner(multi_turn, tokenizer)
    want_ids, want_labels = _oracle(multi_turn, tokenizer)
    pairs, _, _ = _align(want_ids, ids)
    in_reply = {j for i, j in pairs if want_labels[i] != IGNORE_INDEX}
    extra = [tokenizer.decode([ids[j]]) for j, lab in enumerate(labels)
             if lab != IGNORE_INDEX and j not in in_reply]
    expect(not extra, task=TASK, what="tokens trained outside replies", expected="none",
           got=extra[:12], cause=_cause(ids, labels, multi_turn, tokenizer))


def test_m1_3_labels_equal_the_templates_assistant_mask(tokenizer, multi_turn):
    for conv in [multi_turn] + _embedded():
        ids, labels = _learner(conv, tokenizer)
        want_ids, want = _oracle(conv, tokenizer)
        got_text = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
        want_text = tokenizer.decode([t for t in want if t != IGNORE_INDEX])
        expect(labels == want and ids == want_ids, task=TASK,
               what="labels of one conversation", expected=repr(want_text), got=repr(got_text),
               cause=_cause(ids, labels, conv, tokenizer))


def test_m1_3_truncation_keeps_the_response_and_its_eos(tokenizer):
    long_prompt = " ".join(["The capital of France is Paris."] * 60)
    conv = [{"role": "user", "content": long_prompt},
            {"role": "assistant", "content": "Sure! The capital of France is Paris."}]
    full_ids, full_labels = _learner(conv, tokenizer, max_length=4096)
    ids, labels = _learner(conv, tokenizer, max_length=64)
    trained_full = [t for t in full_labels if t != IGNORE_INDEX]
    trained = [t for t in labels if t != IGNORE_INDEX]
    cause = _untruncated_cause(full_ids, full_labels, conv, tokenizer)
    if cause:
        pass
    elif len(ids) > 64:
        cause = "input_ids longer than max_length: cut the start of the prompt"
    elif ids == full_ids[:len(ids)]:
        cause = ("truncation dropped the response: it kept the start; keep the window that "
                 "ends with the last trained token, cutting the start of the prompt")
    else:
        cause = ("truncation dropped the response or shortened the window: keep the "
                 "max_length tokens that end with the last trained token")
    expect(len(ids) == 64 and trained == trained_full, task=TASK,
           what="64-token truncation of a long prompt with a short answer",
           expected=f"64 tokens, all {len(trained_full)} reply tokens trained",
           got=f"{len(ids)} tokens, {len(trained)} trained", cause=cause)

    reply = [{"role": "user", "content": "Say it."},
             {"role": "assistant", "content": long_prompt}]
    full_ids, full_labels = _learner(reply, tokenizer, max_length=4096)
    ids, labels = _learner(reply, tokenizer, max_length=32)
    eos = tokenizer.eos_token_id
    cause = _untruncated_cause(full_ids, full_labels, reply, tokenizer)
    if cause:
        pass
    elif len(ids) != 32:
        cause = f"returned {len(ids)} tokens for max_length 32: keep exactly max_length"
    elif labels[-1] == IGNORE_INDEX and eos in labels:
        cause = ("the window ends after the last trained token (the untrained tokens after "
                 "the final <|im_end|> kept): end it with the last trained token")
    else:
        cause = ("truncation dropped the end of the response: keep the window that ends with "
                 "the last trained token (the final EOS)")
    expect(len(labels) == 32 and labels[-1] == eos, task=TASK,
           what="a response longer than max_length", expected="32 tokens ending with a trained EOS",
           got=f"{len(labels)} tokens, last label {labels[-1] if labels else None}", cause=cause)


def _truncation_cause(ids, labels, want_ids, max_length):
    """Why a truncated window (the result is longer than ``max_length`` untruncated) is wrong."""
    if len(ids) != max_length:
        return (f"returned {len(ids)} tokens for max_length {max_length}: a conversation "
                "longer than max_length keeps exactly max_length tokens")
    if labels and labels[-1] == IGNORE_INDEX and any(t != IGNORE_INDEX for t in labels):
        return ("the window ends after the last trained token (the untrained tokens after "
                "the final <|im_end|> kept): end it with the last trained token")
    if ids == want_ids[:len(ids)]:
        return ("truncation dropped the response: it kept the start; keep the window that "
                "ends with the last trained token, cutting the start of the prompt")
    return "keep the max_length tokens that end with the last trained token (the final EOS)"


@pytest.mark.parametrize("room", ["one-to-spare", "exactly", "one-short", "two-short",
                                  "shorter-than-the-reply"])
def test_m1_3_max_length_at_and_around_the_length(tokenizer, multi_turn, room):
    want_ids, want_labels = _oracle(multi_turn, tokenizer)
    full = len(want_ids)
    end = max(i for i, lab in enumerate(want_labels) if lab != IGNORE_INDEX) + 1
    max_length = {"one-to-spare": full + 1, "exactly": full, "one-short": full - 1,
                  "two-short": full - 2, "shorter-than-the-reply": 5}[room]
    what = f"a {full}-token conversation with max_length {max_length}"
    given = copy.deepcopy(multi_turn)
    ids, labels = _learner(given, tokenizer, max_length=max_length, what=what)
    expect(given == multi_turn, task=TASK, what=f"the conversation after {what}",
           expected=multi_turn, got=given,
           cause="the conversation was modified: leave the caller's turns alone")
    want = (want_ids, want_labels)
    if full > max_length:  # here end >= max_length: the window [end - max_length, end)
        want = (want_ids[end - max_length:end], want_labels[end - max_length:end])
    expect((ids, labels) == want, task=TASK, what=what,
           expected=f"{len(want[0])} tokens, {tokenizer.decode(want[0][:2])!r} ... "
                    f"{tokenizer.decode(want[0][-2:])!r}",
           got=f"{len(ids)} tokens, {tokenizer.decode(ids[:2])!r} ... "
               f"{tokenizer.decode(ids[-2:])!r}",
           cause=(ids, labels) != want and _window_cause(ids, labels, want_ids, multi_turn,
                                                         tokenizer, max_length))


def _window_cause(ids, labels, want_ids, conv, tokenizer, max_length):
    """Why the learner's result for ``max_length`` is wrong: first any mistake it makes
    without truncation, then the fits-or-truncate rule."""
    cause = _untruncated_cause(*_learner(conv, tokenizer, max_length=4096), conv, tokenizer)
    full = len(want_ids)
    if cause:
        return cause
    if full <= max_length:
        return (f"a conversation of {'exactly ' if full == max_length else ''}"
                f"{'max_length' if full == max_length else 'fewer than max_length'} tokens "
                "fits: keep every token; truncate only when len(input_ids) > max_length "
                f"(here {full} tokens, max_length {max_length}, {len(ids)} kept)")
    return _truncation_cause(ids, labels, want_ids, max_length)


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer):
    """The embedded tokenizer, adding ``<|endoftext|>`` in front by default as Llama's adds
    its BOS: ``tokenizer(text)`` gains a token, ``add_special_tokens=False`` does not."""
    other = copy.deepcopy(tokenizer)
    backend = other.backend_tokenizer
    bos = ("<|endoftext|>", other.convert_tokens_to_ids("<|endoftext|>"))
    add_bos = processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A $B",
                                            special_tokens=[bos])
    backend.post_processor = processors.Sequence([backend.post_processor, add_bos])
    return other


def test_m1_3_no_special_token_added_by_the_tokenizer(bos_tokenizer, multi_turn):
    ids, labels = _learner(multi_turn, bos_tokenizer,
                           what="tokens of a tokenizer that adds a BOS by default")
    want_ids, want_labels = _oracle(multi_turn, bos_tokenizer)
    cause = "; ".join(_diagnose(ids, labels, want_ids, want_labels, bos_tokenizer))
    expect((ids, labels) == (want_ids, want_labels), task=TASK,
           what="tokens and labels with a tokenizer that adds a BOS by default (as Llama's)",
           expected=f"{len(want_ids)} tokens starting {bos_tokenizer.decode(want_ids[:2])!r}",
           got=f"{len(ids)} tokens starting {bos_tokenizer.decode(ids[:2])!r}",
           cause=cause or "tokenize with add_special_tokens=False: the rendered text already "
                          "holds every special token")
