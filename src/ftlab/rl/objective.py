"""GRPO as a trainer objective (given): prompts in, C.4 and C.5 inside, reward figures out.

One :class:`~ftlab.train.Trainer` step is one optimizer update. At the start of a
generation round the objective samples ``group_size`` completions for every prompt of the
step's micro-batches with the current policy (:func:`ftlab.rl.sample_groups`), scores them
(:func:`ftlab.rl.score`), turns the rewards into group-relative advantages (C.4) and keeps
the per-token log-probs of the sampling policy and, when ``beta`` > 0, of the reference
(the model with its adapters switched off: the stage's input model). The round's rollouts
then serve ``iterations`` consecutive steps (TRL's ``num_iterations``): the first update is
on-policy (ratio 1), later ones are clipped (C.5). The prompts the trainer hands in during
those later steps are not used.

Sampling draws from torch's global RNG, which checkpoints save and restore; the rollouts of
an unfinished round are part of the objective's state (:meth:`GRPOObjective.state_dict`),
so a resumed run continues bit for bit. Old log-probs are computed in eval mode: with
adapter dropout the first update of a round would not be on-policy (the grpo stage refuses
dropout with ``iterations`` > 1). A step's ``tokens`` figures in the metrics log count the
questions' tokens; its completion tokens are ``targets``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ftlab.config import GRPOConfig
from ftlab.lora import adapters_disabled
from ftlab.rl.advantages import group_advantages, zero_spread_share
from ftlab.rl.loss import clip_fractions, grpo_loss
from ftlab.rl.prompts import collate_prompt_indices, prompt_examples
from ftlab.rl.rewards import RewardFn, by_kind, score
from ftlab.rl.sampling import Rollouts, joined, sample_groups
from ftlab.train.step import Accumulated


def token_logprobs(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, entropies), each (B, C): of every completion token under ``model`` given
    its prompt and the completion tokens before it, and the entropy (nats) of the model's
    next-token distribution there. Logits are divided by ``temperature`` (> 0) first: the
    distribution the completions were sampled from, as TRL scores them. Position ids count
    each row's real tokens from 0, as :func:`ftlab.evaluate.greedy_decode` gave them."""
    ids, mask, positions = joined(prompt_ids, prompt_mask, completion_ids, completion_mask)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   use_cache=False).logits
    width = completion_ids.shape[1]
    scores = (logits[:, -width - 1:-1].float() / (temperature or 1.0)).log_softmax(-1)
    picked = scores.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(scores.exp() * scores).sum(-1)
    return picked, entropy


class _Tally:
    """Sums of a step's token figures (KL, entropy, clipping)."""

    def __init__(self) -> None:
        self.tokens = self.kl = self.entropy = self.low = self.high = 0.0

    def figures(self) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        return {"kl": self.kl / n, "entropy": self.entropy / n,
                "clip_fraction": (self.low + self.high) / n, "clip_low": self.low / n,
                "clip_high": self.high / n}


class GRPOObjective:
    """GRPO on prompt records (see module doc).

    ``prompts``: records with a ``question`` and any fields the reward functions read
    (``id``, ``kind``, ...) — training and validation prompts in one list; the trainer's
    examples are :meth:`examples` of the indices of each (one example per prompt).
    ``rewards``: reward functions by name, weighted by ``settings.weights``; they read the
    replies as decoded, unstripped (``Rollouts.raw_texts``), as TRL hands them; ``settings``:
    the stage config's ``grpo`` section.
    ``on_round``: called with each new round's first micro-batch — its prompt records,
    :class:`Rollouts`, per-completion rewards and advantages (a report's sample groups).
    """

    name = "grpo"
    supports_packing = False
    repeatable_steps = False  # a step samples, calls reward functions, advances the round

    def __init__(self, prompts: list[dict], tokenizer: PreTrainedTokenizerBase,
                 rewards: dict[str, RewardFn], settings: GRPOConfig,
                 on_round: Callable[[list[dict], Rollouts, torch.Tensor, torch.Tensor], None]
                 | None = None) -> None:
        self.prompts, self.tokenizer, self.rewards, self.cfg = prompts, tokenizer, rewards, settings
        self.on_round = on_round
        self.round: list[dict] = []
        self.uses = 0

    def settings(self) -> dict:
        return self.cfg.model_dump(mode="json")

    def examples(self, indices: range | list[int]) -> list[dict]:
        """Trainer examples of the prompts at ``indices`` (:func:`~ftlab.rl.prompts.prompt_examples`)."""
        return prompt_examples(self.tokenizer, self.prompts, indices)

    def collate(self, examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_prompt_indices(examples)

    # -- one generation round ---------------------------------------------------------
    @staticmethod
    def _fields(records: list[dict], rollouts: Rollouts, g: int) -> dict[str, list]:
        """The reward functions' keyword arguments: every column but the question, one
        entry per completion, and each completion's token ids through its stop token."""
        keys = sorted({k for r in records for k in r} - {"question"})
        fields = {k: [r.get(k) for r in records for _ in range(g)] for k in keys}
        ids = [row[:int(n)] for row, n in zip(rollouts.completion_ids.tolist(), rollouts.lengths)]
        return {**fields, "completion_ids": ids}

    @torch.no_grad()
    def rollout(self, model: nn.Module, records: list[dict], group_size: int | None = None,
                temperature: float | None = None) -> tuple[Rollouts, object]:
        """Sample and score one group per record: (rollouts, :class:`~ftlab.rl.Scored`)."""
        g = group_size or self.cfg.group_size
        temp = self.cfg.temperature if temperature is None else temperature
        rollouts = sample_groups(model, self.tokenizer, [r["question"] for r in records], g,
                                 self.cfg.max_new_tokens, temp, self.cfg.top_p, None)
        prompts = [r["question"] for r in records for _ in range(g)]
        return rollouts, score(self.rewards, self.cfg.weights, prompts, rollouts.raw_texts,
                               self._fields(records, rollouts, g))

    @torch.no_grad()
    def _new_round(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> list[dict]:
        """Sample and score every micro-batch's groups, then the advantages over the whole
        round (``scale_rewards: batch`` divides by the std of all its rewards, as TRL does
        over its generation batch), and the old and reference log-probs."""
        cfg, g = self.cfg, self.cfg.group_size
        sampled = []
        for batch in micro_batches:
            records = [self.prompts[int(i)] for i in batch["prompt_index"]]
            sampled.append((records, *self.rollout(model, records)))
        totals = torch.cat([scored.total for _, _, scored in sampled])
        advantages = group_advantages(totals, g, cfg.scale_rewards).split(
            [len(scored.total) for _, _, scored in sampled])
        if self.on_round is not None:
            self.on_round(sampled[0][0], sampled[0][1], sampled[0][2].total, advantages[0])
        was_training = model.training
        model.eval()
        parts = []
        for (records, rollouts, scored), gain in zip(sampled, advantages):
            tensors = (rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids,
                       rollouts.completion_mask)
            old = (token_logprobs(model, *tensors, cfg.temperature)[0]
                   if cfg.iterations > 1 else None)
            ref = None
            if cfg.beta:
                with adapters_disabled(model):
                    ref = token_logprobs(model, *tensors, cfg.temperature)[0]
            parts.append({
                "tensors": tensors, "old": old, "ref": ref,
                "advantages": gain.to(rollouts.prompt_ids.device),
                "figures": {**scored.means(),
                            "reward_std_zero": zero_spread_share(scored.total, g),
                            "completion_length": float(rollouts.lengths.float().mean()),
                            "ended": float(torch.tensor(rollouts.ended).float().mean())},
                "kinds": by_kind(records, scored.total, g)})
        model.train(was_training)
        return parts

    # -- the trainer's interface ------------------------------------------------------
    def accumulate(self, model: nn.Module, micro_batches: list[dict[str, torch.Tensor]]
                   ) -> Accumulated:
        """One update: a new round when the last one has served ``iterations`` steps, then
        C.5 on each micro-batch's completions; the gradient is the step's (``dapo``: over
        all of its completion tokens; the others: the mean of the micro-batches' losses,
        as TRL accumulates them)."""
        cfg = self.cfg
        if not self.round or self.uses >= cfg.iterations:
            self.round, self.uses = self._new_round(model, micro_batches), 0
        self.uses += 1
        step_tokens = sum(float(r["tensors"][3].sum()) for r in self.round)
        if step_tokens == 0:
            return Accumulated(loss=math.nan, targets=0)
        tally, total = _Tally(), 0.0
        for part in self.round:
            prompt_ids, prompt_mask, completion_ids, completion_mask = part["tensors"]
            logps, entropy = token_logprobs(model, *part["tensors"], cfg.temperature)
            out = grpo_loss(logps, part["old"], part["ref"], part["advantages"], completion_mask,
                            cfg.beta, cfg.epsilon, cfg.epsilon_high or cfg.epsilon, cfg.loss_type,
                            cfg.max_new_tokens, step_tokens, cfg.kl_correction)
            loss = out.loss if cfg.loss_type == "dapo" else out.loss / len(self.round)
            loss.backward()
            total += float(loss.detach())
            mask = completion_mask.float()
            tokens, low, high = clip_fractions(logps, part["old"], part["advantages"], mask,
                                               cfg.epsilon, cfg.epsilon_high or cfg.epsilon)
            tally.tokens += tokens
            tally.low += low
            tally.high += high
            tally.kl += float((out.kl * mask).sum())
            tally.entropy += float((entropy.detach() * mask).sum())
        figures = {k: sum(r["figures"][k] for r in self.round) / len(self.round)
                   for k in self.round[0]["figures"]}
        kinds = defaultdict(list)
        for part in self.round:
            for kind, values in part["kinds"].items():
                kinds[kind] += values
        figures |= {f"reward_kind/{k}": sum(v) / len(v) for k, v in sorted(kinds.items())}
        return Accumulated(loss=total, targets=int(step_tokens),
                           metrics={**figures, **tally.figures()})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]:
        """Greedy replies to the validation prompts, scored: ``val_reward`` and one figure
        per reward function; ``val_loss`` is minus the mean reward (lower is better)."""
        records = [self.prompts[int(i)] for b in batches for i in b["prompt_index"]]
        if not records:
            return {"val_loss": math.nan}
        _, scored = self.rollout(model, records, group_size=1, temperature=0.0)
        figures = {f"val_{k}": v for k, v in scored.means().items()}
        return {"val_loss": -figures["val_reward"], **figures}

    # -- checkpoint state -------------------------------------------------------------
    def state_dict(self) -> dict:
        """The unfinished round (tensors and figures) and how many steps it has served."""
        return {"round": self.round, "uses": self.uses}

    def load_state_dict(self, state: dict) -> None:
        self.round = [{**part, "tensors": tuple(part["tensors"])} for part in state["round"]]
        self.uses = int(state["uses"])
