"""Capstone — stages chained from a YAML config into a run directory with a report.

``run_pipeline(load_config(path))`` plans the stages (:func:`plan`, what ``--dry-run``
prints), measures the base model, chains the stages (C.3 :func:`chain`), resumes after the
last completed stage, and writes ``report.md``, ``metrics.json`` and plots. New stage kinds
register with :func:`register_stage` (see :mod:`ftlab.pipeline.registry`).
"""

from ftlab.pipeline import (distill_stage, online_stage, reward_stage, rl_stage,  # noqa: F401
                            stages)  # (register the built-in stages)
from ftlab.pipeline.context import ModelRef, StageContext, StageResult, load_model
from ftlab.pipeline.registry import STAGES, Stage, register_stage, stage_for
from ftlab.pipeline.runner import (PlannedStage, StageRecord, chain, fingerprint, plan,
                                   read_state, run_pipeline)

__all__ = [
    "ModelRef", "PlannedStage", "STAGES", "Stage", "StageContext", "StageRecord", "StageResult",
    "chain", "fingerprint", "load_model", "plan", "read_state", "register_stage", "run_pipeline",
    "stage_for",
]
