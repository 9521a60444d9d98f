"""Run configs: pydantic models for every stage, YAML in and out, the one home of defaults.

The package: :mod:`~ftlab.config.fields` (shared field types and the base section),
one module per section (:mod:`~ftlab.config.model`, ``data``, ``adapters`` (lora, quant),
``train``, ``evaluate`` (eval, export), ``dpo``, ``grpo``), :mod:`~ftlab.config.pipeline`
(stages and the run), :mod:`~ftlab.config.yaml_io` (load and save),
:mod:`~ftlab.config.messages` (one line per problem) and :mod:`~ftlab.config.defaults`
(the table of defaults). A new stage kind adds its section's module and one field of
:class:`StageConfig`.

Every default ftlab uses lives in a field of a model below, with a description that
states units and typical values; :func:`defaults_table` renders them for the docs, so
code, docs and saved configs cannot drift apart.

A run is a :class:`PipelineConfig`: a base model and a list of stages (``sft``, ``dpo``, ``grpo``,
``merge``, ``export``, ``eval``), each with optional sections (``data``, ``lora``,
``quant``, ``train``, ``eval``, ``export``, ``dpo``, ``grpo``). A missing section means "all of
that section's defaults"; the stage that runs decides which sections it reads.

Invariants:

* Every model forbids unknown keys and non-finite floats.
* Data file paths (``data.path``, ``data.mixture[].path``) are resolved when validated:
  against ``context["base_dir"]`` when given (``load_config`` passes the YAML file's
  folder), else against the current directory. The stored path is absolute and must
  name an existing file.
* ``save_config`` writes data paths relative to the output file's folder, so
  ``load_config(save_config(cfg, anywhere)) == cfg``.
* ``load_config`` turns every problem into one :class:`~ftlab.errors.ConfigError` whose
  message has one line per problem:
  ``<file>:<line>: <dotted.field>: <what is wrong> (got <value>)[; hint]``.
"""

from ftlab.config.adapters import LoRAConfig, QuantConfig
from ftlab.config.data import DataConfig, MixtureSource
from ftlab.config.defaults import defaults_table
from ftlab.config.dpo import DPOConfig
from ftlab.config.evaluate import EvalConfig, ExportConfig
from ftlab.config.grpo import FACT_REWARDS, REWARD_NAMES, GRPOConfig, register_reward_name
from ftlab.config.model import ModelConfig
from ftlab.config.distill import DistillConfig
from ftlab.config.online_dpo import JUDGES, OnlineDPOConfig
from ftlab.config.reward import RewardConfig
from ftlab.config.pipeline import STAGE_KINDS, PipelineConfig, StageConfig, register_stage_kind
from ftlab.config.train import TrainConfig
from ftlab.config.yaml_io import config_line, load_config, save_config

__all__ = [
    "ModelConfig",
    "MixtureSource",
    "DataConfig",
    "LoRAConfig",
    "QuantConfig",
    "TrainConfig",
    "EvalConfig",
    "ExportConfig",
    "DPOConfig",
    "GRPOConfig",
    "RewardConfig",
    "OnlineDPOConfig",
    "DistillConfig",
    "JUDGES",
    "StageConfig",
    "PipelineConfig",
    "FACT_REWARDS",
    "REWARD_NAMES",
    "STAGE_KINDS",
    "config_line",
    "load_config",
    "register_reward_name",
    "register_stage_kind",
    "save_config",
    "defaults_table",
]
