"""Capstone — preference optimisation on top of supervised fine-tuning.

Tasks (solution regions): C.1 :func:`sequence_logprobs` (response tokens only), C.2
:func:`dpo_loss` (sigmoid DPO with implicit rewards); C.3 chains the stages in
:mod:`ftlab.pipeline`. Given: preference pairs (load, check, split, tokenize), the
reference log-probs, :class:`DPOObjective` for the :class:`~ftlab.train.Trainer`, and the
TRL backends (:mod:`ftlab.align.trl_backend`).
"""

from ftlab.align.logprobs import response_logprobs, sequence_logprobs
from ftlab.align.loss import DPOOutput, dpo_loss
from ftlab.align.objective import (DPOObjective, add_reference_logprobs, collate_pairs,
                                   pair_logprobs)
from ftlab.align.preferences import (PreferencePair, PreparedPairs, load_pairs, prepare_dpo,
                                     response_only, split_pairs, tokenize_pair)

__all__ = [
    "DPOObjective", "DPOOutput", "PreferencePair", "PreparedPairs", "add_reference_logprobs",
    "collate_pairs", "dpo_loss", "load_pairs", "pair_logprobs", "prepare_dpo", "response_logprobs",
    "response_only", "sequence_logprobs", "split_pairs", "tokenize_pair",
]
