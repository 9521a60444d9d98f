"""Capstone, advanced track — reinforcement learning with verifiable rewards (GRPO).

Tasks (solution regions): C.4 :func:`group_advantages` (centred per group, optional std
scaling), C.5 :func:`grpo_loss` (clipped policy gradient per token, k3 KL to the reference,
TRL's aggregations). Given: sampling groups of completions on M5.2's key/value-cache
decoding, reward functions and their checks, :class:`GRPOObjective` for the
:class:`~ftlab.train.Trainer`, the prompt files.
"""

from ftlab.rl.advantages import STD_EPSILON, group_advantages, zero_spread_share
from ftlab.rl.loss import AGGREGATIONS, GRPOLoss, clip_fractions, grpo_loss
from ftlab.rl.objective import GRPOObjective, token_logprobs
from ftlab.rl.rewards import (BUILTIN, RewardError, Scored, builtin_rewards, register_reward,
                              reply_text, reward_functions, score)
from ftlab.rl.sampling import (Rollouts, end_of_turn_ids, sample_groups, sampler,
                               stop_token_ids)

__all__ = [
    "AGGREGATIONS", "BUILTIN", "GRPOLoss", "GRPOObjective", "RewardError",
    "Rollouts", "STD_EPSILON", "Scored", "builtin_rewards", "clip_fractions", "end_of_turn_ids", "group_advantages",
    "grpo_loss", "register_reward", "reply_text", "reward_functions", "sample_groups", "sampler", "score", "stop_token_ids",
    "token_logprobs", "zero_spread_share",
]
