"""Data parallelism, tried on this 2-core machine with 2 gloo processes x 1 thread: N
processes give the update of one process over the same batch (DDP, FSDP2, SFT, DPO,
length grouping, packing, a micro-batch with fewer rows than processes), a killed process
stops the others and the rerun is bit-identical, a run resumes with another number of
processes, and ``ftlab run --nproc`` / ``accelerate launch`` run real stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_child import lora_model

from ftlab.align import DPOObjective, add_reference_logprobs
from ftlab.cli import main
from ftlab.config import TrainConfig
from ftlab.models.tiny import tiny_examples
from ftlab.paths import data_dir
from ftlab.train import Trainer
from ftlab.train.checkpoint import trainable_weights
from ftlab.train.distributed import joined, ranks, run_processes, unshard

PAD = 0
EXAMPLES = 29
"""With micro-batches of 4, each epoch ends with a micro-batch of 1 row: one process gets a
placeholder row that trains nothing."""


def _examples():
    return tiny_examples(EXAMPLES, seed=5, lengths=(6, 60))


def _pairs(model):
    """DPO pairs of unequal lengths with the model's reference log-probs."""
    chosen, rejected = tiny_examples(EXAMPLES, seed=6), tiny_examples(EXAMPLES, seed=7)
    pairs = [{**c, "rejected_input_ids": r["input_ids"], "rejected_labels": r["labels"]}
             for c, r in zip(chosen, rejected)]
    return add_reference_logprobs(model, pairs, PAD, progress=False)


def _train(run_dir: str, dtype: torch.dtype = torch.float32, objective: str = "sft",
           dropout: float = 0.0, stop_at: int | None = None, **settings) -> dict | None:
    """Train the tiny LoRA Llama 10 steps (batch 4 x accumulation 2, length grouping) in
    ``run_dir``; the trained weights on rank 0, None elsewhere. ``stop_at``: ask the run
    to stop after that step (Ctrl-C's way), which every process follows."""
    model = lora_model(dropout=dropout).to(dtype)
    examples = _examples() if objective == "sft" else _pairs(model)
    # precision pinned: the one-process run would time a step for "auto" on a CPU with native
    # bf16 and may pick bf16 under load, while data-parallel runs keep float32 (it failed so)
    config = TrainConfig(**{"lr": 1e-3, "max_steps": 10, "batch_size": 4, "grad_accum": 2,
                            "warmup_ratio": 0.0, "eval_every": 5, "save_every": 4,
                            "precision": "float32", **settings})
    validation = tiny_examples(6, seed=9) if objective == "sft" else None
    trainer = Trainer(model, examples, config, run_dir, PAD, validation, progress=False,
                      max_length=64, objective=DPOObjective(0.1, 0.5) if objective == "dpo" else None,
                      print_fn=lambda line: None)
    if stop_at is not None:
        trainer.callbacks.append(lambda r: r["kind"] == "step" and r["step"] == stop_at
                                 and trainer.request_stop())
    trainer.fit()
    unshard(model)  # FSDP2: whole plain tensors again, as the pipeline saves them
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert not any(hasattr(w, "full_tensor") for w in weights.values())
    return weights if ranks().is_main else None


CASES = {"float32": {}, "float64": {"dtype": torch.float64},
         "float64, packing": {"dtype": torch.float64, "packing": True, "group_by_length": False},
         # DPO's 10-step weights drift apart by 1e-10..1e-8 from rounding alone (Adam
         # amplifies it; even without a placeholder row); 5 steps include a placeholder
         "float64, DPO": {"dtype": torch.float64, "objective": "dpo", "max_steps": 5},
         "float64, FSDP2": {"dtype": torch.float64, "distributed": "fsdp"}}


def _train_cases(root: str) -> dict | None:
    out = {name: _train(f"{root}/{i}", **case) for i, (name, case) in enumerate(CASES.items())}
    return out if ranks().is_main else None


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_processes_give_the_update_of_one_process(tmp_path):
    """10 steps (DPO: 5), unequal lengths, a placeholder row each epoch: the weights of 2 processes
    equal those of 1 process over the same global batch — exactly in float64 (<= 1e-12),
    to float32 rounding (<= 1e-6) — for SFT with length grouping or packing, DPO, and LoRA
    sharded by FSDP2 (gathered whole afterwards, as the pipeline saves it)."""
    two = run_processes(_train_cases, 2, str(tmp_path / "two"))[0]
    one = _train_cases(str(tmp_path / "one"))
    for name in CASES:
        limit = 1e-6 if name == "float32" else 1e-12
        assert _max_diff(two[name], one[name]) <= limit, name
    records = [json.loads(line) for line in
               (tmp_path / "two/0/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 11))  # rank 0 writes
    evals = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    alone = [(r["step"], r["val_loss"]) for r in map(json.loads, (tmp_path / "one/0/metrics.jsonl")
             .read_text().splitlines()) if r["kind"] == "eval"]
    assert [s for s, _ in evals] == [s for s, _ in alone] == [5, 10]
    assert [v for _, v in evals] == pytest.approx([v for _, v in alone], rel=1e-5)


def _die_at(run_dir: str, step: int) -> None:
    """Train as :func:`_train` (dropout on) but SIGKILL rank 0 right after ``step``."""
    model = lora_model(dropout=0.1)
    config = TrainConfig(lr=1e-3, max_steps=10, batch_size=4, grad_accum=2, warmup_ratio=0.0,
                         eval_every=100, save_every=4, precision="float32")  # as _train's
    trainer = Trainer(model, _examples(), config, run_dir, PAD, progress=False,
                      print_fn=lambda line: None)
    trainer.callbacks.append(lambda r: r["kind"] == "step" and r["step"] == step
                             and os.kill(os.getpid(), signal.SIGKILL))
    trainer.fit()


def _whole_and_resumed(root: str) -> tuple[dict, dict] | None:
    whole = _train(f"{root}/whole", dropout=0.1)
    resumed = _train(f"{root}/killed", dropout=0.1)
    return (whole, resumed) if ranks().is_main else None


def test_a_killed_process_stops_the_others_and_the_rerun_is_bit_identical(tmp_path):
    """SIGKILL rank 0 at step 7: the other process is stopped (an error, not a hang); the
    rerun resumes from step 4 — each process with its own dropout stream — and its weights
    are bit-identical to a 2-process run never interrupted."""
    with pytest.raises(RuntimeError, match="process 0 died"):
        run_processes(_die_at, 2, str(tmp_path / "killed"), 7)
    assert [p.name for p in sorted((tmp_path / "killed/checkpoints").glob("step-*"))] == \
        ["step-000004"]
    whole, resumed = run_processes(_whole_and_resumed, 2, str(tmp_path))[0]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_run_resumes_with_another_number_of_processes(tmp_path, capsys):
    """Stopped after step 5 with one process, finished by two: the data order and the
    optimizer state continue exactly (float64: <= 1e-12 from one uninterrupted process)."""
    whole = _train(str(tmp_path / "whole"), dtype=torch.float64)
    _train(str(tmp_path / "moved"), dtype=torch.float64, stop_at=5, save_every=100)
    assert [p.name for p in (tmp_path / "moved/checkpoints").glob("step-*")] == ["step-000005"]
    finished = run_processes(_train, 2, str(tmp_path / "moved"), torch.float64)[0]
    assert _max_diff(finished, whole) <= 1e-12


def _full_fine_tuning(root: str) -> dict | None:
    """The embedded model, every weight training, 5 steps: DDP, FSDP2, and FSDP2 stopped
    after step 3 then resumed."""
    from ftlab.pipeline.context import ModelRef, load_model

    def fit(folder: str, engine: str, stop_at: int | None = None) -> dict:
        torch.manual_seed(0)
        model = load_model(ModelRef("embedded"), "float32").train()
        config = TrainConfig(lr=1e-4, max_steps=5, batch_size=4, grad_accum=2,
                             warmup_ratio=0.0, save_every=100, distributed=engine)
        trainer = Trainer(model, _examples(), config, f"{root}/{folder}", PAD, progress=False,
                          print_fn=lambda line: None)
        if stop_at:
            trainer.callbacks.append(lambda r: r["kind"] == "step" and r["step"] == stop_at
                                     and trainer.request_stop())
        trainer.fit()
        return trainable_weights(model)

    out = {"ddp": fit("ddp", "ddp"), "fsdp": fit("fsdp", "fsdp")}
    fit("fsdp-stopped", "fsdp", stop_at=3)
    out["fsdp resumed"] = fit("fsdp-stopped", "fsdp")
    return out if ranks().is_main else None


def test_fsdp2_full_fine_tuning_matches_ddp_and_resumes(tmp_path):
    """FSDP2 (parameters, gradients and optimizer state sharded over 2 processes) trains the
    whole embedded model as DDP does (<= 1e-5 after 5 steps), and a stopped FSDP2 run
    resumes from its gathered checkpoint to the same bits."""
    out = run_processes(_full_fine_tuning, 2, str(tmp_path))[0]
    assert len(out["fsdp"]) > 50  # every weight trained
    assert _max_diff(out["fsdp"], out["ddp"]) <= 1e-5
    assert all(torch.equal(out["fsdp"][k], out["fsdp resumed"][k]) for k in out["fsdp"])


# -- ftlab run --nproc, accelerate launch ------------------------------------------------

def _join_and_leave(fail: bool) -> tuple[int, bool]:
    """Leave the group run_processes made, join again as a launched process does (the
    environment names the group), and report the world inside and the group after.

    The new group meets on a fresh port that rank 0 chose and shared through the old group:
    re-joining on the old port let a fast process rendezvous with the old store before
    rank 0 had closed it, and rank 0 then waited for it in vain (a flake under load)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = [s.getsockname()[1]]
    torch.distributed.broadcast_object_list(port, src=0)
    os.environ["MASTER_PORT"] = str(port[0])
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    inside = 0
    try:
        with joined(timeout_s=600) as here:
            inside = here.world_size
            if fail:
                raise ValueError("the stage failed")
    except ValueError:
        pass
    return inside, torch.distributed.is_initialized()


@pytest.mark.parametrize("fail", [False, True], ids=["completed", "raised"])
def test_a_launched_run_leaves_its_process_group(fail):
    """`ftlab run` under a launcher joins the group for the run and destroys it before the
    process exits (a group left to interpreter shutdown aborted a finished run under
    accelerate launch); a run that raised leaves at once, without waiting for the others."""
    assert run_processes(_join_and_leave, 2, fail) == [(2, False), (2, False)]


def _capstone_sft(tmp_path: Path, name: str, max_steps: int = 10, **stage) -> Path:
    """The capstone's SFT stage, shortened (``max_steps``, no dropout, quick measurements)."""
    capstone = yaml.safe_load((data_dir().parent / "configs/capstone.yaml").read_text())
    sft = capstone["stages"][0]
    sft["data"]["mixture"] = [{"path": str(data_dir() / "sft/mixed_style.jsonl"), "rate": 1}]
    sft["lora"]["dropout"] = 0.0
    sft["train"].update(lr=1e-3, max_steps=max_steps, save_every=5, eval_every=5)
    sft["eval"] = {"max_new_tokens": 4}
    sft.update(stage)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / name), "stages": [sft]}))
    return path


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftlab.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_nproc_refuses_a_batch_the_processes_cannot_share(tmp_path, capsys):
    config = _capstone_sft(tmp_path, "three")
    assert main(["run", str(config), "--nproc", "3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1)
                if "batch_size" in text)
    assert (f"{config}:{line}: stages[0] (sft): train.batch_size: 8 examples per micro-batch "
            "cannot be shared by 3 processes") in err, err


def _worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the ``ftlab`` processes under ``parent`` (torchrun's workers)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in
                       (proc / "environ").read_bytes().decode().split("\0") if "=" in item)
            cmd = (proc / "cmdline").read_bytes().decode()
        except (OSError, ValueError):
            continue
        if "ftlab.cli" in cmd and "RANK" in env and env.get("TORCHELASTIC_RUN_ID"):
            found[int(env["RANK"])] = int(proc.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
def test_ftlab_run_nproc_2_survives_a_dying_process_and_equals_one_process(tmp_path):
    """The documented command on the capstone's SFT stage (20 steps, checkpoints every 5):
    SIGKILL rank 1 mid-training and the command ends at once (no hang) with one line saying
    what to do; the same command resumes from the checkpoint; the 2-process run folder has
    one report and metrics log, and its adapter equals a 1-process run's (float32 Adam
    rounding over 20 steps: <= 5e-6 on weights of ~0.07)."""
    config = _capstone_sft(tmp_path, "two", max_steps=20)
    proc = subprocess.Popen([sys.executable, "-m", "ftlab.cli", "run", str(config), "--nproc",
                             "2", "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "two/sft/train/metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and sum(1 for _ in metrics.open()) >= 8):
        assert proc.poll() is None and time.monotonic() < deadline, "no training seen"
        time.sleep(0.1)
    workers = _worker_pids(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "launching 2 processes: torchrun --standalone --nproc-per-node=2" in out
    assert "ftlab: error: the run stopped: a process failed" in err

    rerun = _run("run", str(config), "--nproc", "2", "--no-progress")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from checkpoint step-0000" in rerun.stdout
    assert rerun.stdout.count("finished in") == 1 and "processes: 2 (data parallel)" in rerun.stdout
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == list(range(1, 21))

    assert main(["run", str(_capstone_sft(tmp_path, "one", max_steps=20)), "--no-progress"]) == 0
    adapter = "sft/adapter/adapter_model.safetensors"
    got, want = load_file(tmp_path / "two" / adapter), load_file(tmp_path / "one" / adapter)
    assert _max_diff(got, want) <= 5e-6


def test_the_trl_backend_under_accelerate_launch_completes_an_sft_stage(tmp_path):
    """`accelerate launch` with 2 processes, TRL's SFTTrainer: the stage completes and the
    global batch is train.batch_size (each process takes half)."""
    config = _capstone_sft(tmp_path, "trl", backend="trl")
    accelerate = Path(sys.executable).with_name("accelerate")
    done = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
                           "no", "-m", "ftlab.cli", "run", str(config), "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "trl/sft/adapter/adapter_model.safetensors").is_file()
    state = json.loads((tmp_path / "trl/state.json").read_text())
    metrics = state["stages"]["sft"]["result"]["metrics"]
    examples = metrics["train_examples"]
    epochs = [json.loads(line)["epoch"] for line in
              (tmp_path / "trl/sft/train/metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "step"]
    assert epochs[-1] == pytest.approx(10 * 8 / examples, rel=1e-3)
