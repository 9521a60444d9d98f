"""Pairwise judges (given): AI feedback that says which of two replies is better.

A judge is called as ``judge(prompts, pairs, **fields) -> list[int]``: ``prompts`` the user
questions, ``pairs`` two candidate replies ``(a, b)`` per question, ``fields`` the prompt
file's other columns aligned with them (``id``: the fact asked about). It returns, per pair,
``0`` when ``a`` is better, ``1`` when ``b`` is, and ``-1`` when it cannot tell (a tie):
the shape of TRL's pairwise judges (``BasePairwiseJudge.judge``), plus the tie. Three kinds:

* :class:`RewardModelJudge` — a trained reward model scores each reply (the question and the
  reply rendered with the chat template) and prefers the higher score;
* :class:`LLMJudge` — a language model is asked "Which reply is better, A or B?" and the
  next-token log-probabilities of ``A`` and ``B`` decide. Asked in both orders, so a
  preference for whichever reply comes first cancels: the verdict is the sign of the mean of
  the two orders' preferences; :attr:`LLMJudge.order_flips` counts verdicts the order
  changed;
* :class:`VerifierJudge` — the world's verifier (:func:`~ftlab.world.check_answer`, strict or
  lenient): the right reply wins, a tie when both or neither are right.

:func:`agreement` measures a judge against another (the verifier) on the pairs it decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ftlab.errors import FtlabError
from ftlab.models.measure import chat_prompt
from ftlab.reward.model import score_texts
from ftlab.world import check_answer
from ftlab.world.facts import fact_by_id

TIE = -1
"""A judge's answer when neither reply is better."""

Judge = Callable[..., list[int]]
"""``judge(prompts, pairs, **fields) -> list[int]`` (see the module doc)."""


class JudgeError(FtlabError):
    """A judge raised or answered something other than 0, 1 or -1 per pair."""


def _verdicts(preference: torch.Tensor) -> list[int]:
    """0 where ``preference`` (for ``a`` over ``b``) is positive, 1 where negative, else TIE."""
    return [0 if p > 0 else 1 if p < 0 else TIE for p in preference.tolist()]


class RewardModelJudge:
    """Prefers the reply a reward model scores higher; equal scores pick ``a`` (as TRL's
    online DPO does: ``first >= second``)."""

    name = "reward_model"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer

    def scores(self, prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
        """(n,) float64 rewards of ``replies`` to ``prompts`` (:func:`reward_model_reward`)."""
        return torch.tensor(reward_model_reward(self.model, self.tokenizer)(
            list(prompts), list(replies)), dtype=torch.float64)

    def __call__(self, prompts: Sequence[str], pairs: Sequence[tuple[str, str]], **fields
                 ) -> list[int]:
        a = self.scores(prompts, [x for x, _ in pairs])
        b = self.scores(prompts, [y for _, y in pairs])
        return [0 if x >= y else 1 for x, y in zip(a.tolist(), b.tolist())]


def reward_model_reward(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Judge:
    """A GRPO reward function (``f(prompts, completions, **fields) -> list[float]``) that
    scores each completion with a reward model: the prompt (a question, or a conversation
    whose last turn is the user's) and the reply rendered with the chat template, as TRL's
    ``GRPOTrainer`` scores with a sequence-classification model passed as a reward function."""
    def reward_model(prompts: list, completions: list, **fields) -> list[float]:
        texts = []
        for prompt, completion in zip(prompts, completions):
            turns = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                     else list(prompt))
            reply = completion if isinstance(completion, str) else completion[-1]["content"]
            texts.append(tokenizer.apply_chat_template(
                [*turns, {"role": "assistant", "content": reply}], tokenize=False))
        return score_texts(model, tokenizer, texts).tolist()
    return reward_model


JUDGE_QUESTION = ("Question: {prompt}\nReply A: {a}\nReply B: {b}\n"
                  "Which reply is better, A or B? Answer with one letter.")
"""What :class:`LLMJudge` asks, as one user turn."""


class LLMJudge:
    """Asks a causal language model which reply is better and reads the log-probabilities of
    the letters ``A`` and ``B`` as its next token, in both orders.

    For a pair ``(a, b)``: ``first = logp(A) - logp(B)`` with ``a`` shown as A, ``second =
    logp(A) - logp(B)`` with ``b`` shown as A; the preference for ``a`` is
    ``(first - second) / 2``. A judge with position bias (always "A") has ``first`` and
    ``second`` both positive: they cancel. :attr:`order_flips` / :attr:`judged` is the share
    of pairs whose single-order verdicts disagree (each order alone would have picked a
    different reply).
    """

    name = "llm"

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                 batch_size: int = 16) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        letters = [tokenizer.encode(x, add_special_tokens=False) for x in ("A", "B")]
        if any(len(ids) != 1 for ids in letters):
            raise ValueError("LLMJudge needs 'A' and 'B' to be one token each")
        self.letters = [ids[0] for ids in letters]
        self.order_flips = self.judged = 0

    @torch.no_grad()
    def letter_preference(self, prompts: Sequence[str], firsts: Sequence[str],
                          seconds: Sequence[str]) -> torch.Tensor:
        """(n,) float64 ``logp(A) - logp(B)`` of the next token after the question showing
        ``firsts`` as A and ``seconds`` as B (left-padded batch, last position)."""
        device = next(self.model.parameters()).device
        texts = [chat_prompt(self.tokenizer, JUDGE_QUESTION.format(prompt=p, a=a, b=b))
                 for p, a, b in zip(prompts, firsts, seconds)]
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt",
                                   padding=True, padding_side="left", add_special_tokens=False)
            mask = batch["attention_mask"].to(device)
            logits = self.model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                logits_to_keep=1).logits[:, -1]
            logp = logits.float().log_softmax(-1)[:, self.letters]
            out.append((logp[:, 0] - logp[:, 1]).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def __call__(self, prompts: Sequence[str], pairs: Sequence[tuple[str, str]], **fields
                 ) -> list[int]:
        was_training = self.model.training
        self.model.eval()
        a, b = [x for x, _ in pairs], [y for _, y in pairs]
        try:
            first = self.letter_preference(prompts, a, b)
            second = self.letter_preference(prompts, b, a)
        finally:
            self.model.train(was_training)
        self.judged += len(pairs)
        self.order_flips += int(((first > 0) == (second > 0)).sum())  # each order picks "its A"
        return _verdicts((first - second) / 2)


class VerifierJudge:
    """The world's verifier as a judge: the right reply wins; both or neither right is a tie.
    Needs each prompt's fact ``id`` (``fields["id"]``)."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.name = "verifier" if strict else "verifier_lenient"

    def __call__(self, prompts: Sequence[str], pairs: Sequence[tuple[str, str]],
                 id: Sequence[str] = (), **fields) -> list[int]:  # noqa: A002
        if len(id) != len(pairs):
            raise ValueError("the verifier judge needs the fact id of every prompt (an 'id' "
                             "column naming a fact of the world)")
        verdicts = []
        for fact_id, (a, b) in zip(id, pairs):
            fact = fact_by_id(fact_id)
            right = (check_answer(fact, a, self.strict), check_answer(fact, b, self.strict))
            verdicts.append(TIE if right[0] == right[1] else 0 if right[0] else 1)
        return verdicts


def agreement(verdicts: Sequence[int], reference: Sequence[int]) -> tuple[float, int]:
    """(share of pairs where ``verdicts`` equal ``reference``, number of such pairs compared):
    only pairs the reference decides count (its ties are left out); a tie of the judge there
    counts as disagreement. NaN share when the reference decides none."""
    decided = [(v, r) for v, r in zip(verdicts, reference) if r != TIE]
    if not decided:
        return float("nan"), 0
    return sum(v == r for v, r in decided) / len(decided), len(decided)


def agreement_figures(judges: dict[str, Judge], questions: Sequence[str],
                      pairs: Sequence[tuple[str, str]], ids: Sequence[str]) -> dict[str, float]:
    """How each of ``judges`` agrees with the strict verifier on ``pairs`` (replies to the
    facts ``ids``): ``judge/<name>/agreement`` (share of the pairs the verifier decides where
    the judge picks the same reply), ``judge/<name>/ties`` (share of all pairs it calls a tie)
    and, for an :class:`LLMJudge`, ``judge/<name>/order_flips`` (share of pairs whose verdict
    the order of the replies changed); ``judge/verifier_decides``: share of pairs with one
    right reply and one wrong."""
    reference = VerifierJudge(strict=True)(questions, pairs, id=ids)
    figures = {"judge/verifier_decides": sum(r != TIE for r in reference) / max(len(pairs), 1)}
    for name, judge in judges.items():
        if isinstance(judge, LLMJudge):
            judge.order_flips = judge.judged = 0
        verdicts = judge(questions, pairs, id=ids)
        share, _ = agreement(verdicts, reference)
        figures[f"judge/{name}/agreement"] = share
        figures[f"judge/{name}/ties"] = verdicts.count(TIE) / max(len(pairs), 1)
        if isinstance(judge, LLMJudge):
            figures[f"judge/{name}/order_flips"] = judge.order_flips / max(judge.judged, 1)
    return figures
