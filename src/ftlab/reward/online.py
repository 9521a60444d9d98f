"""Online DPO as a trainer objective (given): preferences from AI feedback, made as it trains.

Each :class:`~ftlab.train.Trainer` step the current policy samples two replies to every prompt
of the step (:func:`ftlab.rl.sample_groups`, ``group_size`` 2), a judge
(:mod:`ftlab.reward.judges`) says which is better, and C.2's DPO loss learns from those
fresh pairs against the reference — the policy with its adapters switched off, the model
the stage received. Pairs the judge calls a tie are left out of the step (counted as
``ties``); a step of ties only trains nothing (loss 0, no gradient). Sequence log-probs are sums over each completion's tokens through its stop token,
from the logits as they are (no temperature), as TRL's ``OnlineDPOTrainer`` computes them;
the judge reads the replies as decoded, unstripped, as TRL's reward models do; the loss is
the mean over the step's decided pairs, so it does not depend on the split into
micro-batches. ``sft_weight`` adds the chosen replies' cross-entropy per token (0: TRL's
online DPO). Sampling draws from torch's global RNG, which checkpoints restore, and a step
carries nothing to the next: a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.align.loss import dpo_loss
from ftlab.lora import adapters_disabled
from ftlab.reward.judges import TIE, Judge, JudgeError, VerifierJudge
from ftlab.rl.objective import token_logprobs
from ftlab.rl.rewards import correct_strict
from ftlab.rl.prompts import collate_prompt_indices, names_fact, prompt_examples
from ftlab.rl.sampling import sample_groups
from ftlab.train.step import Accumulated

def sequence_logprobs(model: nn.Module, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(B,) sum of each completion's token log-probs (through its stop token) given its
    prompt: ``tensors`` is (prompt_ids, prompt_mask, completion_ids, completion_mask)."""
    logps, _ = token_logprobs(model, *tensors)
    return (logps * tensors[3]).sum(-1)


def order_pairs(verdicts: Sequence[int], size: int) -> tuple[list[int], list[int], list[int]]:
    """(chosen rows, rejected rows, decided pair indices) of ``size`` pairs sampled as rows
    ``2i`` (reply a) and ``2i + 1`` (reply b), from the judge's verdicts (0: a, 1: b, TIE)."""
    chosen, rejected, decided = [], [], []
    for i, verdict in enumerate(verdicts[:size]):
        if verdict == TIE:
            continue
        a, b = 2 * i, 2 * i + 1
        chosen.append(a if verdict == 0 else b)
        rejected.append(b if verdict == 0 else a)
        decided.append(i)
    return chosen, rejected, decided


class OnlineDPOObjective:
    """Online DPO on prompt records (``question`` plus the judge's fields, e.g. ``id``).

    ``judge``: ``judge(prompts, pairs, **fields) -> list[int]``. ``beta``: DPO's β.
    ``sampling``: ``temperature``, ``top_p``, ``max_new_tokens``. Figures per step: the loss,
    ``ties`` (share of pairs left out), the implicit reward ``margin`` and ``accuracy`` of the
    decided pairs, the chosen and rejected log-probs, ``ended`` (share of replies that
    stopped), and, when the records name world facts, ``correct`` (share of sampled replies
    the strict verifier accepts) and ``judge_agrees`` (share of the verifier-decided pairs
    where the judge agrees with it).
    """

    name = "online_dpo"
    supports_packing = False
    repeatable_steps = False  # a step samples and calls the judge

    def __init__(self, prompts: list[dict], tokenizer: PreTrainedTokenizerBase, judge: Judge,
                 beta: float, sft_weight: float = 0.0, temperature: float = 0.7,
                 top_p: float = 1.0, max_new_tokens: int = 24) -> None:
        self.prompts, self.tokenizer, self.judge = prompts, tokenizer, judge
        self.beta, self.sft_weight = beta, sft_weight
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.verifier = VerifierJudge(strict=True)

    def settings(self) -> dict:
        return {"beta": self.beta, "sft_weight": self.sft_weight,
                "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}

    def examples(self, indices: range | list[int]) -> list[dict]:
        """Trainer examples of the prompts at ``indices`` (:func:`~ftlab.rl.prompts.prompt_examples`)."""
        return prompt_examples(self.tokenizer, self.prompts, indices)

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_prompt_indices(examples)

    def _facts_known(self, records: list[dict]) -> bool:
        return all(names_fact(r) for r in records)

    @torch.no_grad()
    def judged_pairs(self, model: nn.Module, records: list[dict]) -> dict:
        """Sample two replies per record with ``model`` and judge them: the rollout tensors,
        texts, verdicts, and chosen / rejected rows of the decided pairs."""
        questions = [r["question"] for r in records]
        rollouts = sample_groups(model, self.tokenizer, questions, 2, self.max_new_tokens,
                                 self.temperature, self.top_p, None)
        texts = rollouts.raw_texts  # as TRL hands them to reward models: unstripped
        pairs = [(texts[2 * i], texts[2 * i + 1]) for i in range(len(records))]
        fields = {k: [r.get(k) for r in records] for k in sorted({k for r in records for k in r}
                                                                   - {"question"})}
        name = getattr(self.judge, "name", type(self.judge).__name__)
        try:
            verdicts = list(self.judge(questions, pairs, **fields))
        except Exception as e:  # noqa: BLE001 - a judge may raise anything
            raise JudgeError(f"judge '{name}' raised {type(e).__name__}: {e} (first question "
                             f"of the batch: {questions[0]!r})") from e
        if len(verdicts) != len(pairs) or any(v not in (0, 1, TIE) for v in verdicts):
            raise JudgeError(f"judge '{name}' returned {verdicts[:4]} for {len(pairs)} pairs: "
                             "it must return 0, 1 or -1 (a tie) for each pair")
        chosen, rejected, decided = order_pairs(verdicts, len(pairs))
        figures = {"ended": float(torch.tensor(rollouts.ended, dtype=torch.float).mean())}
        if self._facts_known(records):
            truth = self.verifier(questions, pairs, id=fields["id"])
            right = [t for t in truth if t != TIE]
            figures["correct"] = _strict_share(rollouts.texts, fields["id"])
            if right:
                figures["judge_agrees"] = sum(
                    v == t for v, t in zip(verdicts, truth) if t != TIE) / len(right)
        return {"tensors": (rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids,
                            rollouts.completion_mask),
                "texts": rollouts.texts, "verdicts": verdicts, "chosen": chosen,
                "rejected": rejected, "decided": decided, "figures": figures}

    def accumulate(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> Accumulated:
        was_training = model.training
        model.eval()
        try:
            rounds = [self.judged_pairs(model, [self.prompts[int(i)] for i in b["prompt_index"]])
                      for b in micro_batches]
            with torch.no_grad(), adapters_disabled(model):
                for part in rounds:
                    if part["chosen"]:
                        part["reference"] = sequence_logprobs(model, part["tensors"])
        finally:
            model.train(was_training)
        pairs = sum(len(p["chosen"]) for p in rounds)
        asked = sum(len(p["verdicts"]) for p in rounds)
        chosen_tokens = sum(int(p["tensors"][3][p["chosen"]].sum()) for p in rounds)
        figures = {"ties": 1 - pairs / max(asked, 1)}
        for key in sorted({k for p in rounds for k in p["figures"]}):  # weighted by pairs asked
            have = [p for p in rounds if key in p["figures"]]
            figures[key] = (sum(p["figures"][key] * len(p["verdicts"]) for p in have)
                            / sum(len(p["verdicts"]) for p in have))
        if pairs == 0:  # all ties: nothing to learn, no gradient (not a failed step)
            return Accumulated(loss=0.0, targets=0, metrics=figures)
        loss = margin = right = logp_c = logp_r = 0.0
        for part in rounds:
            if not part["chosen"]:
                continue
            logps = sequence_logprobs(model, part["tensors"])
            ref = part["reference"]
            c, r = part["chosen"], part["rejected"]
            out = dpo_loss(logps[c], logps[r], ref[c], ref[r], self.beta)
            term = out.losses.sum() / pairs
            if self.sft_weight:
                term = term - self.sft_weight * logps[c].sum() / max(chosen_tokens, 1)
            term.backward()
            loss += float(term.detach())
            margins = out.chosen_rewards - out.rejected_rewards
            margin += float(margins.sum())
            right += float((margins > 0).sum())
            logp_c += float(logps[c].detach().sum())
            logp_r += float(logps[r].detach().sum())
        figures |= {"margin": margin / pairs, "accuracy": right / pairs,
                    "logps/chosen": logp_c / pairs, "logps/rejected": logp_r / pairs}
        return Accumulated(loss=loss, targets=pairs, metrics=figures)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]:
        """Greedy replies to the validation prompts: ``val_correct`` (strict verifier; when
        the prompts name facts) and ``val_loss = -val_correct``."""
        records = [self.prompts[int(i)] for b in batches for i in b["prompt_index"]]
        if not records or not self._facts_known(records):
            return {"val_loss": math.nan}
        was_training = model.training
        model.eval()
        rollouts = sample_groups(model, self.tokenizer, [r["question"] for r in records], 1,
                                 self.max_new_tokens, 0.0, 1.0, None)
        model.train(was_training)
        correct = _strict_share(rollouts.texts, [r["id"] for r in records])
        return {"val_loss": -correct, "val_correct": correct}


def _strict_share(texts: Sequence[str], ids: Sequence[str]) -> float:
    """Share of ``texts`` (replies to the facts ``ids``: one each, or several each in a row)
    the strict verifier accepts (the ``correct_strict`` reward)."""
    per = len(texts) // len(ids)
    right = correct_strict([], list(texts), id=[i for i in ids for _ in range(per)])
    return sum(right) / len(right)
