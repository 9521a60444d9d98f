"""C.4 — group-relative advantages, the baseline that replaces PPO's value network.

GRPO samples ``G`` completions per prompt and scores each with a reward. A completion's
advantage is how much better it did than its own group — the other answers to the same
prompt — so an easy prompt whose every answer is right teaches nothing, and a hard one
whose only right answer stands out teaches a lot.
"""

from __future__ import annotations

import torch

STD_EPSILON = 1e-4
"""Added to the standard deviation before dividing (TRL's value): a group whose rewards
are all equal gets advantages 0, not 0 / 0."""

SCALES = ("group", "batch", "none")
"""What the centred rewards are divided by: the group's std, the whole batch's, nothing."""


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group"
                     ) -> torch.Tensor:
    """Advantages (N,) of the rewards (N,) — a floating-point tensor — of
    ``N = P * group_size`` completions, stored group by group (rows ``g*G .. g*G+G-1``
    answer prompt ``g``), in the input order. ``rewards`` is not modified (a view of it
    shares its storage: no in-place maths on one).

    Each reward minus the mean of its own group (never the batch mean: a prompt's
    difficulty must not leak into another's advantages), then divided according to
    ``scale``: ``"group"`` by the group's standard deviation + :data:`STD_EPSILON`,
    ``"batch"`` by the standard deviation of all N rewards + :data:`STD_EPSILON`,
    ``"none"``: not divided (Dr. GRPO). Standard deviations are unbiased (Bessel's n - 1, as
    ``torch.std`` and TRL); a single reward has none — count it as 0, so a group of one
    (or a batch of one) gets advantage 0, never NaN; so does a group whose rewards are
    all equal (0 / (0 + 1e-4)), whatever ``scale``. Equal to the advantages TRL's
    ``GRPOTrainer`` computes from the same rewards (``scale_rewards``). Output dtype and
    device: those of ``rewards``; no graph is needed (rewards are numbers).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not make whole groups of {group_size}")
    ### BEGIN SOLUTION C.4
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        spread = (grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1)
                  if group_size > 1 else torch.zeros_like(rewards))
    else:
        spread = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    return centred / (spread + STD_EPSILON)
    ### END SOLUTION


def zero_spread_share(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal (they teach nothing this step)."""
    grouped = rewards.view(-1, group_size)
    return float((grouped == grouped[:, :1]).all(dim=1).double().mean())
