"""Plausible wrong answers to milestone 4 (CURRICULUM.md); each must fail with a teaching message.

Where a wrong answer is the reference with one mistake, ``variant`` derives it from the code.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

WRONG_ANSWERS = [
    WrongAnswer(task="M4.1", label="off-by-one at the warm-up end",
                message_contains=("off-by-one",),
                code=variant(ROOT, "M4.1", "return step / warmup_steps",
                             "return (step + 1) / warmup_steps")),
    WrongAnswer(task="M4.1", label="decay past the floor (progress not clamped)",
                message_contains=("decay past the floor",),
                code=variant(ROOT, "M4.1",
                             "min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))",
                             "(step - warmup_steps) / max(1, total_steps - warmup_steps)")),
    WrongAnswer(task="M4.1", label="cosine decays to zero, floor ignored",
                message_contains=("min_lr_ratio",),
                code=variant(ROOT, "M4.1",
                             "min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(",
                             "0.5 * (1 + math.cos(")),
    WrongAnswer(task="M4.2", label="averaging micro-batch means",
                message_contains=("averaging micro-batch means",),
                code=variant(ROOT, "M4.2", "part = target_loss_sum(model, mb) / total",
                             "part = (target_loss_sum(model, mb) / count_targets(mb)"
                             " / len(micro_batches))")),
    WrongAnswer(task="M4.2", label="summing micro-batch means (loss grows with accumulation)",
                message_contains=("summing micro-batch means",),
                code=variant(ROOT, "M4.2", "part = target_loss_sum(model, mb) / total",
                             "part = target_loss_sum(model, mb) / count_targets(mb)")),
    WrongAnswer(task="M4.3", label="clipping after step()",
                message_contains=("clipping after step()",),
                code='''
                    if not math.isfinite(loss):
                        optimizer.zero_grad(set_to_none=True)
                        return StepOutcome(grad_norm=math.nan, stepped=False)
                    optimizer.step()
                    norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
                    optimizer.zero_grad(set_to_none=True)
                    return StepOutcome(grad_norm=norm, stepped=True)
                '''),
    WrongAnswer(task="M4.3", label="post-clip norm reported",
                message_contains=("norm before clipping",),
                code=variant(ROOT, "M4.3", "optimizer.step()\n",
                             "norm = float(torch.nn.utils.clip_grad_norm_(parameters, "
                             "max_grad_norm))\noptimizer.step()\n")),
    WrongAnswer(task="M4.3", label="non-finite loss not checked",
                message_contains=("non-finite loss not checked",),
                code=variant(ROOT, "M4.3", "if not math.isfinite(loss):", "if False:")),
    WrongAnswer(task="M4.3", label="non-finite gradient norm not checked",
                message_contains=("non-finite gradient norm not checked",),
                code=variant(ROOT, "M4.3", "if not math.isfinite(norm):", "if False:")),
    WrongAnswer(task="M4.4", label="RNG not restored", message_contains=("RNG not restored",),
                code=variant(ROOT, "M4.4", 'set_rng_state(checkpoint.state["rng"])\n', "")),
    WrongAnswer(task="M4.4", label="data position not restored",
                message_contains=("data position not restored",),
                code=variant(ROOT, "M4.4", 'loader.load_state_dict(checkpoint.state["data"])\n',
                             "")),
    WrongAnswer(task="M4.4", label="optimizer not restored",
                message_contains=("optimizer not restored",),
                code=variant(ROOT, "M4.4",
                             'optimizer.load_state_dict(checkpoint.state["optimizer"])\n', "")),
    WrongAnswer(task="M4.5", label="stopping on training loss",
                message_contains=("stopping on training loss",),
                code=variant(ROOT, "M4.5", 'loss = metrics["val_loss"]',
                             'loss = metrics["train_loss"]')),
    WrongAnswer(task="M4.5", label="min_delta ignored", message_contains=("min_delta",),
                code=variant(ROOT, "M4.5", "if loss < self.best - self.min_delta:",
                             "if loss < self.best:")),
    WrongAnswer(task="M4.5", label="bad evaluations not reset on improvement",
                message_contains=("resets bad_evals",),
                code=variant(ROOT, "M4.5", "self.best, self.bad_evals = loss, 0",
                             "self.best = loss")),
    WrongAnswer(task="M4.5", label="patience counted in steps (steps since the best)",
                message_contains=("patience counted in steps",),
                code='''
                    loss = metrics["val_loss"]
                    if loss < self.best - self.min_delta:
                        self.best, self.bad_evals = loss, 0
                        self.best_step = metrics["step"]
                        return True
                    self.bad_evals = metrics["step"] - self.best_step
                    return False
                '''),
    WrongAnswer(task="M4.5", label="patience counted in steps (steps added per evaluation)",
                message_contains=("patience counted in steps",),
                code='''
                    loss = metrics["val_loss"]
                    steps = metrics["step"] - getattr(self, "last_step", 0)
                    self.last_step = metrics["step"]
                    if loss < self.best - self.min_delta:
                        self.best, self.bad_evals = loss, 0
                        return True
                    self.bad_evals += steps
                    return False
                '''),
    WrongAnswer(task="M4.5", label="best follows every fall, even one below min_delta",
                message_contains=("best keeps the lowest validation loss that counted",),
                code='''
                    loss = metrics["val_loss"]
                    improved = loss < self.best - self.min_delta
                    self.best = min(self.best, loss)
                    if improved:
                        self.bad_evals = 0
                        return True
                    self.bad_evals += 1
                    return False
                '''),
    WrongAnswer(task="M4.6", label="dividing by the local count (averaging the processes' means)",
                message_contains=("each process divided by its own trained tokens",),
                code=variant(ROOT, "M4.6", "return total, total / world",
                             "return total, local_targets")),
    WrongAnswer(task="M4.6", label="forgetting that DDP averages gradients (update off by N)",
                message_contains=("off by the world size",),
                code=variant(ROOT, "M4.6", "return total, total / world", "return total, total")),
    WrongAnswer(task="M4.6", label="the count not all-reduced",
                message_contains=("was not all-reduced",),
                code=variant(ROOT, "M4.6", "total = int(round(all_sum([local_targets])[0]))",
                             "total = local_targets")),
]
