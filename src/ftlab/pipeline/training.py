"""The training stages' work (given): build the trainable model, train with a backend.

Two backends per objective, same data, same adapters:

* ``ftlab`` — the course's :class:`~ftlab.train.Trainer` with :class:`SFTObjective` or
  :class:`~ftlab.align.DPOObjective` (C.1, C.2), our LoRA / QLoRA layers.
* ``trl`` — ``trl.SFTTrainer`` / ``trl.DPOTrainer`` with a PEFT ``LoraConfig``, fed the same
  tokenized examples; the adapter is saved in PEFT format and read back by
  :func:`ftlab.lora.load_adapter`.

Either way the stage ends with a PEFT adapter folder and the metrics log of its run. The
folder (:func:`publish_adapter`) is the stage's whole model over the run's base: earlier
stages' adapters are combined into it, and it names a base PEFT's loaders can find.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ftlab.config import LoRAConfig, QuantConfig, StageConfig, TrainConfig
from ftlab.errors import ConfigError, Interrupted
from ftlab.lora import combine_adapters, find_target_modules, inject_lora, save_adapter
from ftlab.lora.peft_io import CONFIG
from ftlab.paths import base_model_dir
from ftlab.pipeline.context import EMBEDDED, ModelRef, load_model
from ftlab.quant import quantize_model
from ftlab.train import Trainer, seed_everything
from ftlab.train.distributed import unshard
from ftlab.train.objective import Objective


def target_names(model: nn.Module, lora: LoRAConfig) -> list[str]:
    """Full names of the linear layers that get adapters; ``ConfigError`` when the config
    asks for one LoRA never adapts (the LM head)."""
    try:
        return find_target_modules(model, None if lora.target_modules == "auto"
                                   else lora.target_modules)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules: {e}") from None


def trainable_model(ref: ModelRef, dtype: str, lora: LoRAConfig, quant: QuantConfig,
                    seed: int) -> nn.Module:
    """``ref`` loaded (earlier adapters merged), optionally quantized to 4 bits, with fresh
    LoRA adapters (seeded: ``seed``) on the target layers; only the adapters train."""
    model = load_model(ref, dtype)
    names = target_names(model, lora)
    if quant.enabled:
        model = _quantized(model, ref, names, quant)
    seed_everything(seed)
    return inject_lora(model, names, lora.r, lora.alpha, lora.dropout)


def _quantized(model: nn.Module, ref: ModelRef, names: list[str], quant: QuantConfig
               ) -> nn.Module:
    """``model`` with the target layers in 4 bits (ftlab's NF4 or bitsandbytes)."""
    compute = None if quant.compute_dtype == "auto" else getattr(torch, quant.compute_dtype)
    if quant.backend == "ftlab":
        if quant.quant_type != "nf4":
            raise ConfigError("quant.quant_type: the ftlab backend implements nf4 only; use "
                              "backend: bitsandbytes for fp4")
        return quantize_model(model, names, quant.block_size, quant.double_quant, compute)
    from ftlab.quant.bnb import load_quantized

    with tempfile.TemporaryDirectory() as folder:  # bitsandbytes quantizes while loading
        model.save_pretrained(folder)
        return load_quantized(folder, 4, quant.quant_type, quant.double_quant, compute,
                              device="cuda" if torch.cuda.is_available() else "cpu")


def train_ftlab(model: nn.Module, train: list[dict], validation: list[dict],
                config: TrainConfig, folder: Path, pad_id: int, max_length: int,
                objective: Objective, progress: bool,
                print_fn: Callable[[str], None] = print) -> dict[str, float]:
    """Train with our Trainer into ``folder/train`` (resumable; ``print_fn`` hears from
    which step); returns its figures, skipped steps included. Raises
    :class:`~ftlab.errors.Interrupted` when Ctrl-C or SIGTERM stopped the training (its
    checkpoint is written; the stage is not complete). With several processes every
    one calls it; ``model`` ends whole (unsharded) on each."""
    trainer = Trainer(model, train, config, folder / "train", pad_id, validation, max_length,
                      progress=progress, objective=objective, print_fn=print_fn)
    result = trainer.fit()
    if result.interrupted:  # never hand a half-trained model to the next stage
        where = result.checkpoint.relative_to(folder.parent) if result.checkpoint else folder.name
        raise Interrupted(f"interrupted at step {result.steps} of {result.total_steps}; "
                          f"checkpoint {where} is saved: run the same command again to resume")
    unshard(model)  # FSDP2: whole weights on every process again, so rank 0 can save them
    return {"steps": result.steps, "skipped_steps": result.skipped_steps,
            "final_loss": result.final_loss,
            **({"best_val_loss": result.best_val_loss} if result.best_val_loss is not None else {})}


PURE_SHARE = 0.9
"""A step counts as a replay step (or a task step) when at least this share of its trained
tokens comes from replay (or from the task data)."""


def training_curves(folder: Path) -> dict[str, list[list[float]]]:
    """``loss`` and ``val_loss`` as ``[step, value]`` lists from the stage's metrics log
    (a grpo stage adds ``reward``, its samples' mean reward, ``reward/<name>`` per reward
    function — the verifier's ``correct`` among them even at weight 0 — and ``val_reward``:
    greedy).

    An on-policy distillation stage adds ``loss/on_policy``: the steps on the student's own
    replies (they log ``on_policy`` 1), which the task / replay split below leaves out.
    When the stage replays general text (steps log ``targets/replay``), also
    ``loss/task`` and ``loss/replay``: the losses of steps whose trained tokens are at least
    :data:`PURE_SHARE` task data or replay text (length grouping makes most steps one or the
    other), so the two sources' losses can be plotted apart instead of as one zigzag.
    """
    path = folder / "train" / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r for r in records if r["kind"] == "step"]
    curves = {"loss": [[r["step"], r["loss"]] for r in steps],
              "val_loss": [[r["step"], r["val_loss"]] for r in records if r["kind"] == "eval"]}
    if any("reward" in r for r in steps):  # grpo: the mean reward of each step's samples
        curves["reward"] = [[r["step"], r["reward"]] for r in steps]
        curves["val_reward"] = [[r["step"], r["val_reward"]] for r in records
                                if r["kind"] == "eval" and "val_reward" in r]
        for key in sorted({k for r in steps for k in r if k.startswith("reward/")}):
            curves[key] = [[r["step"], r[key]] for r in steps if key in r]
    if any(r.get("on_policy") for r in steps):  # distillation on the student's own replies
        curves["loss/on_policy"] = [[r["step"], r["loss"]] for r in steps if r.get("on_policy")]
        steps = [r for r in steps if not r.get("on_policy")]
    if any("targets/replay" in r for r in steps):
        share = {r["step"]: r.get("targets/replay", 0) / max(r["targets"], 1) for r in steps}
        curves["loss/task"] = [[r["step"], r["loss"]] for r in steps
                               if share[r["step"]] <= 1 - PURE_SHARE]
        curves["loss/replay"] = [[r["step"], r["loss"]] for r in steps
                                 if share[r["step"]] >= PURE_SHARE]
    return curves


def resolvable_base(path: str) -> str:
    """The name PEFT's loaders can resolve for a model path: ``embedded`` -> the absolute
    folder of the embedded base model, a folder -> its absolute path, a Hub id unchanged."""
    if path == EMBEDDED:
        return str(base_model_dir().resolve())
    return str(Path(path).resolve()) if Path(path).is_dir() else path


def publish_adapter(ref: ModelRef, own: Path, out: Path) -> Path:
    """Write ``out``: the adapter a stage trained on ``ref`` (the PEFT folder ``own``) as a
    folder that stands for the stage's whole model over ``ref.path``.

    Earlier adapters of ``ref`` (the stage trained on the model with them merged) are
    combined with ``own`` into one adapter whose update is their sum
    (:func:`ftlab.lora.combine_adapters`), so ``PeftModel.from_pretrained(base, out)`` and
    ``AutoPeftModelForCausalLM.from_pretrained(out)`` give the stage's model — not the
    stage's update alone on the plain base. ``base_model_name_or_path`` is
    :func:`resolvable_base` of ``ref.path``. ``own`` may be ``out`` (replaced in place).
    """
    base = resolvable_base(ref.path)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / "adapter"
        if ref.adapters:
            combine_adapters([Path(a) for a in ref.adapters] + [own], staged, base)
        else:
            shutil.copytree(own, staged)
            config = json.loads((staged / CONFIG).read_text())
            (staged / CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": base},
                                                    indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return out


def save_trained_adapter(model: nn.Module, folder: Path, ref: ModelRef) -> Path:
    """Write the stage's adapter as ``folder/adapter`` (see :func:`publish_adapter`)."""
    with tempfile.TemporaryDirectory() as tmp:
        own = save_adapter(model, Path(tmp) / "own")
        return publish_adapter(ref, own, folder / "adapter")


def stage_train_config(stage: StageConfig) -> TrainConfig:
    """The stage's train section (defaults when absent)."""
    return stage.train or TrainConfig()
