"""Plausible wrong answers to milestone 4 (CURRICULUM.md); each must fail with a teaching message.

Where a wrong answer is the reference with one mistake, ``variant`` derives it from the code.
"""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

WRONG_ANSWERS = [
    WrongAnswer(task="M4.4", label="weights rebound with .data (the parameters alias the checkpoint)",
                message_contains=("weights rebound",),
                code=variant(ROOT, "M4.4", "params[name].copy_(value)", "params[name].data = value")),
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

# -- issue #30: wrong answers the worked examples let through, caught by spec properties ----
WRONG_ANSWERS += [
    WrongAnswer(task="M4.1", label="decay length without max(1, ...) (warm-up fills the schedule)",
                message_contains=("which is 0 when warm-up fills the schedule",),
                code=variant(ROOT, "M4.1", "max(1, total_steps - warmup_steps)",
                             "(total_steps - warmup_steps)")),
    WrongAnswer(task="M4.1", label="the floor clamps the cosine instead of scaling it",
                message_contains=("the floor clamps the cosine",),
                code=variant(ROOT, "M4.1",
                             "min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi "
                             "* progress))",
                             "max(min_lr_ratio, 0.5 * (1 + math.cos(math.pi * progress)))")),
    WrongAnswer(task="M4.1", label="decay progress measured over total_steps",
                message_contains=("decay measured over total_steps",),
                code=variant(ROOT, "M4.1", "/ max(1, total_steps - warmup_steps)",
                             "/ max(1, total_steps)")),
    WrongAnswer(task="M4.2", label="trained tokens counted without the shift",
                message_contains=("counted the first label of each row",),
                code=variant(ROOT, "M4.2", "total = sum(count_targets(mb) for mb in micro_batches)",
                             "total = sum(int((mb['labels'] != -100).sum()) "
                             "for mb in micro_batches)")),
    WrongAnswer(task="M4.2", label="micro-batch mean re-weighted by its count (nan when empty)",
                message_contains=("must contribute 0, not nan",),
                code=variant(ROOT, "M4.2", "part = target_loss_sum(model, mb) / total",
                             "part = (target_loss_sum(model, mb) / count_targets(mb)"
                             " * (count_targets(mb) / total))")),
    WrongAnswer(task="M4.2", label="a step without trained tokens reports loss 0.0",
                message_contains=("report loss nan",),
                code=variant(ROOT, "M4.2", "return Accumulated(loss=math.nan, targets=0)",
                             "return Accumulated(loss=0.0, targets=0)")),
    WrongAnswer(task="M4.2", label="no early return without trained tokens (nan gradients)",
                message_contains=("return before any backward",),
                code=variant(ROOT, "M4.2", "if total == 0:", "if False:")),
    WrongAnswer(task="M4.2", label="gradients zeroed before each micro-batch",
                message_contains=("gradients zeroed between micro-batches",),
                code=variant(ROOT, "M4.2", "    part = target_loss_sum(model, mb) / total",
                             "    model.zero_grad()\n    part = target_loss_sum(model, mb) / total")),
    WrongAnswer(task="M4.2", label="model switched to eval mode (dropout off while training)",
                message_contains=("model.eval() turns dropout off",),
                code=variant(ROOT, "M4.2", "loss = 0.0\n", "model.eval()\nloss = 0.0\n")),
    WrongAnswer(task="M4.2", label="the loss accumulated as a tensor",
                message_contains=("the loss is a Python float",),
                code=variant(ROOT, "M4.2", "loss += part.item()", "loss = loss + part.detach()")),
    WrongAnswer(task="M4.3", label="each parameter clipped on its own norm",
                message_contains=("each parameter clipped on its own norm",),
                code=variant(ROOT, "M4.3",
                             "norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))",
                             "norm = float(torch.nn.utils.clip_grad_norm_(parameters[:1], "
                             "max_grad_norm))\nfor p in parameters[1:]:\n"
                             "    torch.nn.utils.clip_grad_norm_([p], max_grad_norm)")),
    WrongAnswer(task="M4.3", label="gradients always scaled to max_grad_norm (scaled up too)",
                message_contains=("clipping only ever shrinks",),
                code='''
                    if not math.isfinite(loss):
                        optimizer.zero_grad(set_to_none=True)
                        return StepOutcome(grad_norm=math.nan, stepped=False)
                    norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in parameters)))
                    if not math.isfinite(norm):
                        optimizer.zero_grad(set_to_none=True)
                        return StepOutcome(grad_norm=norm, stepped=False)
                    for p in parameters:
                        p.grad.mul_(max_grad_norm / norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    return StepOutcome(grad_norm=norm, stepped=True)
                '''),
    WrongAnswer(task="M4.3", label="grad_norm returned as a tensor",
                message_contains=("grad_norm is a Python float",),
                code=variant(ROOT, "M4.3",
                             "norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))",
                             "norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)")),
    WrongAnswer(task="M4.3", label="gradient norm tested against inf only (nan steps)",
                message_contains=("non-finite gradient norm not checked",),
                code=variant(ROOT, "M4.3", "if not math.isfinite(norm):",
                             "if norm == math.inf:")),
    WrongAnswer(task="M4.3", label="loss tested for nan and +inf only (-inf steps)",
                message_contains=("non-finite loss not checked",),
                code=variant(ROOT, "M4.3", "if not math.isfinite(loss):",
                             "if math.isnan(loss) or loss == math.inf:")),
    WrongAnswer(task="M4.3", label="norm measured before the loss check and reported when skipped",
                message_contains=("report grad_norm nan",),
                code='''
                    norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
                    if not (math.isfinite(loss) and math.isfinite(norm)):
                        optimizer.zero_grad(set_to_none=True)
                        return StepOutcome(grad_norm=norm, stepped=False)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    return StepOutcome(grad_norm=norm, stepped=True)
                '''),
    WrongAnswer(task="M4.4", label="only torch's RNG restored",
                message_contains=("torch's alone is not enough",),
                code=variant(ROOT, "M4.4", 'set_rng_state(checkpoint.state["rng"])',
                             'torch.set_rng_state(checkpoint.state["rng"]["torch"])')),
    WrongAnswer(task="M4.4", label="scheduler not restored",
                message_contains=("scheduler not restored",),
                code=variant(ROOT, "M4.4",
                             'scheduler.load_state_dict(checkpoint.state["scheduler"])\n', "")),
    WrongAnswer(task="M4.4", label="parameters replaced by new ones (the optimizer keeps the old)",
                message_contains=("parameters replaced instead of restored in place",),
                code=variant(ROOT, "M4.4", "        params[name].copy_(value)",
                             '        module, _, attr = name.rpartition(".")\n'
                             "        setattr(model.get_submodule(module), attr, "
                             "torch.nn.Parameter(value.clone()))")),
    WrongAnswer(task="M4.4", label="the whole state returned instead of the trainer counters",
                message_contains=("not the whole state",),
                code=variant(ROOT, "M4.4", 'return checkpoint.state["trainer"]',
                             "return checkpoint.state")),
    WrongAnswer(task="M4.5", label="an equal loss counts as an improvement (<=)",
                message_contains=("<= instead of <",),
                code=variant(ROOT, "M4.5", "if loss < self.best - self.min_delta:",
                             "if loss <= self.best - self.min_delta:")),
    WrongAnswer(task="M4.5", label="a nan validation loss counts as an improvement",
                message_contains=("nan validation loss counted as an improvement",),
                code=variant(ROOT, "M4.5", "if loss < self.best - self.min_delta:",
                             "if not loss >= self.best - self.min_delta:")),
    WrongAnswer(task="M4.5", label="compared with the previous evaluation, not the best",
                message_contains=("compared with the previous evaluation",),
                code='''
                    loss = metrics["val_loss"]
                    previous = getattr(self, "previous", math.inf)
                    self.previous = loss
                    if loss < previous - self.min_delta:
                        self.best, self.bad_evals = min(self.best, loss), 0
                        return True
                    self.bad_evals += 1
                    return False
                '''),
    WrongAnswer(task="M4.6", label="integer division (an odd total loses half a token)",
                message_contains=("integer division",),
                code=variant(ROOT, "M4.6", "return total, total / world",
                             "return total, total // world")),
    WrongAnswer(task="M4.6", label="divided by 2 whatever the number of processes",
                message_contains=("divided by 2 whatever the number of processes",),
                code=variant(ROOT, "M4.6", "return total, total / world", "return total, total / 2")),
    WrongAnswer(task="M4.6", label="divided by LOCAL_WORLD_SIZE (wrong on several machines)",
                message_contains=("LOCAL_WORLD_SIZE",),
                code=variant(ROOT, "M4.6", "world = ranks().world_size",
                             'world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))')),
    WrongAnswer(task="M4.6", label="the empty process skips the all-reduce (a hang)",
                message_contains=("skipped the collective", "hangs"),
                code='''
                    if local_targets == 0:
                        return 0, 0.0
                    world = ranks().world_size
                    total = int(round(all_sum([local_targets])[0]))
                    return total, total / world
                '''),
    WrongAnswer(task="M4.6", label="an empty process counted as 1 token",
                message_contains=("counted 1",),
                code=variant(ROOT, "M4.6", "all_sum([local_targets])",
                             "all_sum([max(1, local_targets)])")),
    WrongAnswer(task="M4.6", label="total returned as the float all_sum gives",
                message_contains=("a Python int",),
                code=variant(ROOT, "M4.6", "total = int(round(all_sum([local_targets])[0]))",
                             "total = all_sum([local_targets])[0]")),
    WrongAnswer(task="M4.6", label="the count all-reduced in float32",
                message_contains=("float32",),
                code='''
                    world = ranks().world_size
                    count = torch.tensor([float(local_targets)])
                    if world > 1:
                        dist.all_reduce(count)
                    total = int(count.item())
                    return total, total / world
                '''),
    # -- M4.7: the re-warmup schedules of mid-training --------------------------------------
    WrongAnswer(task="M4.7", label="warm-up from 0 (the start fraction ignored)",
                message_contains=("warm-up starts at 0",),
                code=variant(ROOT, "M4.7",
                             "return s.start_fraction + (1 - s.start_fraction) * step / s.warmup_steps",
                             "return step / s.warmup_steps")),
    WrongAnswer(task="M4.7", label="the peak reached one step late",
                message_contains=("one step late",),
                code=variant(ROOT, "M4.7", "* step / s.warmup_steps",
                             "* step / (s.warmup_steps + 1)")),
    WrongAnswer(task="M4.7", label="integer division in the warm-up",
                message_contains=("integer division",),
                code=variant(ROOT, "M4.7", "* step / s.warmup_steps", "* (step // s.warmup_steps)")),
    WrongAnswer(task="M4.7", label="linear decay measured from step 0",
                message_contains=("decay measured from step 0",),
                code=variant(ROOT, "M4.7",
                             "progress = min(1.0, (step - begin) / max(1, s.total_steps - begin))",
                             "progress = min(1.0, step / s.total_steps)")),
    WrongAnswer(task="M4.7", label="cosine decay measured from step 0",
                message_contains=("decay measured from step 0",),
                code=variant(ROOT, "M4.7",
                             "return lr_factor(step, s.total_steps, s.warmup_steps, s.min_lr_ratio)",
                             "return lr_factor(step, s.total_steps, 0, s.min_lr_ratio)")),
    WrongAnswer(task="M4.7", label="wsd's stable phase skipped",
                message_contains=("stable phase is skipped",),
                code=variant(ROOT, "M4.7",
                             'begin = s.total_steps - s.decay_steps if s.shape == "wsd" else s.warmup_steps',
                             "begin = s.warmup_steps")),
    WrongAnswer(task="M4.7", label="wsd's warm-up counted twice (the stable phase too long)",
                message_contains=("warm-up counted twice",),
                code=variant(ROOT, "M4.7",
                             'begin = s.total_steps - s.decay_steps if s.shape == "wsd" else s.warmup_steps',
                             'begin = (s.warmup_steps + s.total_steps - s.decay_steps if s.shape == "wsd"'
                             " else s.warmup_steps)")),
    WrongAnswer(task="M4.7", label="wsd's decay counted twice (it starts 2 x decay_steps early)",
                message_contains=("decay is counted twice",),
                code=variant(ROOT, "M4.7",
                             'begin = s.total_steps - s.decay_steps if s.shape == "wsd" else s.warmup_steps',
                             'begin = s.total_steps - 2 * s.decay_steps if s.shape == "wsd" else s.warmup_steps')),
    WrongAnswer(task="M4.7", label="wsd's decay_steps ignored (no decay inside the run)",
                message_contains=("decay_steps ignored",),
                code=variant(ROOT, "M4.7",
                             'begin = s.total_steps - s.decay_steps if s.shape == "wsd" else s.warmup_steps',
                             'begin = s.total_steps if s.shape == "wsd" else s.warmup_steps')),
    WrongAnswer(task="M4.7", label="the floor ignored by the straight decays",
                message_contains=("floor is ignored",),
                code=variant(ROOT, "M4.7",
                             "return s.min_lr_ratio + (1 - s.min_lr_ratio) * (1 - progress)",
                             "return 1 - progress")),
    WrongAnswer(task="M4.7", label="the floor ignored by the cosine",
                message_contains=("floor is ignored",),
                code=variant(ROOT, "M4.7",
                             "return lr_factor(step, s.total_steps, s.warmup_steps, s.min_lr_ratio)",
                             "return lr_factor(step, s.total_steps, s.warmup_steps, 0.0)")),
    WrongAnswer(task="M4.7", label="decay past the floor (progress not clamped)",
                message_contains=("decay past the floor",),
                code=variant(ROOT, "M4.7",
                             "progress = min(1.0, (step - begin) / max(1, s.total_steps - begin))",
                             "progress = (step - begin) / max(1, s.total_steps - begin)")),
    WrongAnswer(task="M4.7", label="linear decays like the cosine",
                message_contains=("decays like cosine",),
                code=variant(ROOT, "M4.7", 'if s.shape == "cosine":',
                             'if s.shape in ("cosine", "linear"):')),
    WrongAnswer(task="M4.7", label="constant skips the warm-up",
                message_contains=("constant skips the warm-up",),
                code=variant(ROOT, "M4.7", "s = schedule\n",
                             's = schedule\nif s.shape == "constant":\n    return 1.0\n')),
    WrongAnswer(task="M4.7", label="a torch tensor returned instead of a float",
                message_contains=("return a Python float",),
                code=variant(ROOT, "M4.7",
                             "progress = min(1.0, (step - begin) / max(1, s.total_steps - begin))",
                             "progress = torch.tensor((step - begin) / max(1, s.total_steps - begin)"
                             ").clamp(max=1.0)")),
    # found by a helper writing wrong answers from the docstring alone, without the checks
    WrongAnswer(task="M4.7", label="the peak reached one step early",
                message_contains=("one step early",),
                code=variant(ROOT, "M4.7", "* step / s.warmup_steps",
                             "* step / (s.warmup_steps - 1)")),
    WrongAnswer(task="M4.7", label="cosine handed whole to lr_factor (its warm-up from 0)",
                message_contains=("warm-up starts at 0",),
                code=variant(ROOT, "M4.7", "s = schedule\n",
                             's = schedule\nif s.shape == "cosine":\n'
                             "    return lr_factor(step, s.total_steps, s.warmup_steps, s.min_lr_ratio)\n")),
    WrongAnswer(task="M4.7", label="wsd's decay divided by the steps after warm-up",
                message_contains=("the decay's length is decay_steps",),
                code=variant(ROOT, "M4.7", "max(1, s.total_steps - begin)",
                             "max(1, s.total_steps - s.warmup_steps)")),
    WrongAnswer(task="M4.7", label="the floor clamps the straight decay",
                message_contains=("clamps the line",),
                code=variant(ROOT, "M4.7",
                             "return s.min_lr_ratio + (1 - s.min_lr_ratio) * (1 - progress)",
                             "return max(s.min_lr_ratio, 1 - progress)")),
    WrongAnswer(task="M4.7", label="wsd with decay_steps 0 never decays",
                message_contains=("decay_steps 0 still ends at the floor",),
                code=variant(ROOT, "M4.7", "if step <= begin:",
                             'if step <= begin or (s.shape == "wsd" and not s.decay_steps):')),
    WrongAnswer(task="M4.7", label="the decay counted one step too long",
                message_contains=("one step too long",),
                code=variant(ROOT, "M4.7", "max(1, s.total_steps - begin)",
                             "max(1, s.total_steps - begin + 1)")),
    WrongAnswer(task="M4.7", label="an int returned by the constant shape",
                message_contains=("return a Python float",),
                code=variant(ROOT, "M4.7", 'if s.shape == "constant":\n    return 1.0',
                             'if s.shape == "constant":\n    return 1')),
]
