"""Rewards track — reward models learned from preference pairs.

Tasks (solution regions): C.6 :func:`last_token_rewards` (a sequence's reward is the scalar
head's score at its last real token, left or right padding), C.7 :func:`reward_loss` (the
Bradley–Terry loss with TRL's margin and centring term). Taught in
``notebooks/09_rewards_rlaif.ipynb``, graded with the capstone.
"""

from ftlab.reward.loss import last_token_rewards, reward_loss

__all__ = ["last_token_rewards", "reward_loss"]
