"""DPO as a trainer objective (given): pairs in, C.1 and C.2 inside, reward figures out.

Examples are tokenized pairs (:func:`ftlab.align.tokenize_pair`) carrying the reference
model's log-probs (:func:`add_reference_logprobs`, computed once before training: the
reference never changes, so there is no second model in memory during training). A
micro-batch stacks the chosen rows on top of the rejected rows, as TRL does, so one
forward pass scores both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ftlab.align.logprobs import response_logprobs
from ftlab.align.loss import DPOOutput, dpo_loss
from ftlab.data.collate import collate
from ftlab.data.labels import IGNORE_INDEX
from ftlab.progress import progress_bar
from ftlab.train.distributed import all_sum, micro_steps, ranks
from ftlab.train.step import Accumulated, count_targets

REFERENCE_KEYS = ("reference_chosen", "reference_rejected")


def collate_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch of ``n`` pairs: ``input_ids`` / ``labels`` / ``attention_mask`` of
    shape (2n, longest) — rows ``0..n-1`` chosen, ``n..2n-1`` rejected — and
    ``reference_logps`` (2n,) in the same order when the examples carry them."""
    rows = ([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
            + [{"input_ids": e["rejected_input_ids"], "labels": e["rejected_labels"]}
               for e in examples])
    batch = collate(rows, pad_id)
    if all(k in e for e in examples for k in REFERENCE_KEYS):
        batch["reference_logps"] = torch.tensor(
            [e["reference_chosen"] for e in examples]
            + [e["reference_rejected"] for e in examples], dtype=torch.float64)
    return batch


@torch.no_grad()
def score_pairs(model: nn.Module, pairs: list[dict], pad_id: int,
                score: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
                batch_size: int = 16, progress: bool = False, desc: str = "pairs"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``score(model, batch)`` of the chosen and the rejected replies of tokenized ``pairs``
    (a :func:`collate_pairs` micro-batch in, (2n,) out), each a float64 CPU tensor of shape
    (pairs,); eval mode, no gradients (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.float64)]
    try:
        for start in progress_bar(range(0, len(pairs), batch_size), desc=desc,
                                  disable=not progress):
            batch = {k: v.to(device) for k, v in
                     collate_pairs(pairs[start:start + batch_size], pad_id).items()}
            c, r = score(model, batch).double().cpu().chunk(2)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def pair_logprobs(model: nn.Module, pairs: list[dict], pad_id: int, batch_size: int = 16,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (C.1) of the chosen and the rejected replies of tokenized
    ``pairs`` under ``model`` (:func:`score_pairs`)."""
    return score_pairs(model, pairs, pad_id, response_logprobs, batch_size, progress,
                       "pair log-probs")


def add_reference_logprobs(model: nn.Module, examples: list[dict], pad_id: int,
                           batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Each example with ``reference_chosen`` / ``reference_rejected``: its sequence
    log-probs under ``model`` as it is now (:func:`pair_logprobs`). Call it on the policy
    before DPO training, while its fresh adapters are still zero, so the reference is
    exactly the starting model."""
    chosen, rejected = pair_logprobs(model, examples, pad_id, batch_size, progress)
    return [{**e, "reference_chosen": float(c), "reference_rejected": float(r)}
            for e, c, r in zip(examples, chosen, rejected)]


def _has_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per pair of a :func:`collate_pairs` micro-batch: whether its chosen reply has a
    trained token (a placeholder pair, :class:`~ftlab.train.BatchLoader`, has none)."""
    chosen = batch["labels"][:len(batch["input_ids"]) // 2, 1:]
    return (chosen != IGNORE_INDEX).any(dim=1).to(chosen.device)


class _Tally:
    """Sums of a step's or an evaluation's pair figures."""

    def __init__(self) -> None:
        self.pairs = self.tokens = 0
        self.dpo = self.nll = self.correct = self.margin = 0.0

    def add(self, out, chosen_logps: torch.Tensor, chosen_tokens: int) -> None:
        self.pairs += len(out.losses)
        self.tokens += chosen_tokens
        self.dpo += float(out.losses.detach().sum())
        self.nll -= float(chosen_logps)
        self.correct += float((out.margins > 0).sum())
        self.margin += float(out.margins.sum())

    def merge_processes(self) -> None:
        """Sum the tallies of all data-parallel processes into each (no-op alone)."""
        fields = ("pairs", "tokens", "dpo", "nll", "correct", "margin")
        for name, total in zip(fields, all_sum([getattr(self, f) for f in fields])):
            setattr(self, name, total)

    def figures(self, prefix: str = "") -> dict[str, float]:
        """Means: DPO loss and reward margin per pair, SFT loss per chosen token, accuracy."""
        return {f"{prefix}dpo_loss": self.dpo / self.pairs,
                f"{prefix}sft_loss": self.nll / max(self.tokens, 1),
                f"{prefix}reward_accuracy": self.correct / self.pairs,
                f"{prefix}reward_margin": self.margin / self.pairs}


class DPOObjective:
    """DPO (sigmoid, ``beta``) plus ``sft_weight`` x the chosen replies' cross-entropy.

    The SFT term is TRL's ``loss_type=["sigmoid", "sft"]`` with weights ``[1, sft_weight]``:
    the mean negative log-likelihood over the chosen responses' tokens. On a small model it
    keeps DPO from pushing both responses' likelihoods down (plain DPO degenerates there).

    Accumulation follows M4.2: the DPO term is a mean over all pairs of the step and the SFT
    term a mean over all chosen tokens of the step, so the gradient does not depend on the
    micro-batch split.
    """

    name = "dpo"
    supports_packing = False
    repeatable_steps = True

    def __init__(self, beta: float, sft_weight: float = 0.0) -> None:
        self.beta, self.sft_weight = beta, sft_weight

    def settings(self) -> dict:
        return {"beta": self.beta, "sft_weight": self.sft_weight}

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate_pairs(examples, pad_id)
        if "reference_logps" not in batch:
            raise ValueError("DPO examples need reference log-probs: call "
                             "ftlab.align.add_reference_logprobs(model, examples, pad_id) first")
        return batch

    def _terms(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        """(DPO output, chosen log-prob sum, chosen token count) of one micro-batch."""
        policy_chosen, policy_rejected = response_logprobs(model, batch).chunk(2)
        reference = batch["reference_logps"].to(policy_chosen.dtype)
        reference_chosen, reference_rejected = reference.chunk(2)
        out = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                       self.beta)
        chosen_tokens = count_targets({"labels": batch["labels"][:len(policy_chosen)]})
        return out, policy_chosen.sum(), chosen_tokens

    def accumulate(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> Accumulated:
        """Under data parallelism the pair and token counts are those of the whole step,
        over all processes, scaled for the engine's gradient average (as M4.6 does for
        tokens); a placeholder pair (no trained token) counts for nothing. The figures are
        the step's, the same on every process."""
        live = [_has_targets(b) for b in micro_batches]
        local = [sum(int(m.sum()) for m in live),
                 sum(count_targets({"labels": b["labels"][:len(b["input_ids"]) // 2]})
                     for b in micro_batches)]
        pairs, tokens = all_sum(local)
        if pairs == 0 or tokens == 0:
            return Accumulated(loss=math.nan, targets=0)
        world, tally = ranks().world_size, _Tally()
        for batch, mask in zip(micro_steps(model, micro_batches), live):
            out, chosen_logps, chosen_tokens = self._terms(model, batch)
            part = ((out.losses * mask).sum() / pairs
                    - self.sft_weight * chosen_logps / tokens) * world
            part.backward()
            tally.add(DPOOutput(out.losses[mask], out.chosen_rewards[mask],
                                out.rejected_rewards[mask]), chosen_logps.detach(), chosen_tokens)
        tally.merge_processes()
        figures = tally.figures()
        return Accumulated(loss=figures["dpo_loss"] + self.sft_weight * figures["sft_loss"],
                           targets=int(tokens), metrics=figures)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        tally = _Tally()
        for batch in batches:
            tally.add(*self._terms(model, batch))
        model.train(was_training)
        if not tally.pairs:
            return {"val_loss": math.nan}
        figures = tally.figures("val_")
        return {"val_loss": figures["val_dpo_loss"] + self.sft_weight * figures["val_sft_loss"],
                **figures}
