"""A training run in its own process, for the crash tests in test_train.py.

``python train_child.py RUN_DIR OUT [--kill-at-step N] [--kill-writing-step N]`` trains a tiny
LoRA Llama (dropout on, accumulation 2, length grouping) for 10 steps with a checkpoint
every 2, then writes the trainable weights to OUT (safetensors). ``--kill-at-step N`` sends
itself SIGKILL right after step N; ``--kill-writing-step N`` does so in the middle of writing
the checkpoint of step N (after the weights file, before the state file).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch
from safetensors.torch import save_file

from ftlab.config import TrainConfig
from ftlab.lora import find_target_modules, inject_lora
from ftlab.models.tiny import tiny_examples, tiny_model
from ftlab.train import Trainer
from ftlab.train import checkpoint as ckpt
from ftlab.train.checkpoint import trainable_weights

CONFIG = TrainConfig(max_steps=10, batch_size=3, grad_accum=2, lr=1e-2, save_every=2,
                     keep_last=2, warmup_ratio=0.2)


def lora_model(dropout: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Tiny Llama with LoRA on every projection; B drawn small (not zero) so A trains too."""
    model = tiny_model("llama", seed=seed)
    torch.manual_seed(seed)
    inject_lora(model, find_target_modules(model), r=4, alpha=8, dropout=dropout)
    for layer in model.modules():
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B, std=0.02)
    return model.train()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-writing-step", type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = lora_model()
    trainer = Trainer(model, tiny_examples(30, seed=11), CONFIG, args.run_dir, 0,
                      val_examples=tiny_examples(6, seed=12), progress=False)
    if args.kill_at_step:
        trainer.callbacks.append(lambda r: r["kind"] == "step" and r["step"] == args.kill_at_step
                                 and os.kill(os.getpid(), signal.SIGKILL))
    if args.kill_writing_step:
        write = ckpt.write_file

        def dying_write(path, writer):
            if path.name == ckpt.STATE and f"{args.kill_writing_step:06d}" in path.parent.name:
                os.kill(os.getpid(), signal.SIGKILL)
            write(path, writer)
        ckpt.write_file = dying_write
    trainer.fit()
    save_file(trainable_weights(model), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
