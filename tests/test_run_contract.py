"""``ftlab run`` is never silently wrong, tried through the command as a user would: data it
dropped, configs it misread, outputs it reused, steps it skipped, paths that moved, a run
killed mid-stage. Each case ends in one clear line (exit 2) or the correct rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftlab.cli import main
from ftlab.paths import data_dir

SFT = data_dir() / "sft/mixed_style.jsonl"
QUICK_EVAL = {"max_new_tokens": 4}


def _ftlab(capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``ftlab`` command in this process: (exit status, stdout, stderr)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _sft(data: str, steps: int = 2, **train) -> dict:
    return {"kind": "sft", "data": {"path": data, "max_length": 64}, "lora": {"r": 4, "alpha": 8},
            "eval": QUICK_EVAL, "train": {"max_steps": steps, "batch_size": 4,
                                          "eval_every": 100, **train}}


def _write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _messy_file(path: Path) -> Path:
    """20 records: 9 good ones and 11 broken in 4 ways, on known lines."""
    good = SFT.read_text().splitlines()[:9]
    broken = ['{"messages": [{"role": "user", "content": "hi"}', "not json at all",
              '{"messages": "a string"}', '[1, 2, 3]', '{"prompt": "only a prompt"}'] * 2 + [
              '{"messages": [{"role": "user"}]}']
    lines = [line for pair in zip(good, broken) for line in pair] + broken[len(good):]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_data_rejections_are_printed_kept_and_refused_above_the_limit(capsys, tmp_path):
    messy = _messy_file(tmp_path / "messy.jsonl")
    config = _write(tmp_path / "run.yaml", {"run_dir": str(tmp_path / "run"),
                                            "stages": [_sft(str(messy))]})
    code, out, err = _ftlab(capsys, "run", str(config), "--no-progress")
    assert code == 2, out
    assert "stage sft: 11 of 20 records (55%) could not be used, more than " \
           "data.max_rejected_fraction (0.1) allows" in err
    assert f"{messy}:2: " in err  # the first rejection, with its line
    assert "Traceback" not in err

    stages = [_sft(str(messy))]
    stages[0]["data"]["max_rejected_fraction"] = 0.6
    config = _write(tmp_path / "run.yaml", {"run_dir": str(tmp_path / "run"), "stages": stages})
    code, out, err = _ftlab(capsys, "run", str(config), "--no-progress")
    assert code == 0, err
    summary = next(line for line in out.splitlines() if "20 records" in line)
    assert "9 loaded, 11 rejected (invalid JSON 4, expected a JSON object, got list 2" in summary
    assert f"{messy}:2: " in out and "... and 8 more" in out
    kept = (tmp_path / "run/sft/data_report.txt").read_text()
    assert [f"{messy}:{n}:" in kept for n in (2, 4, 6, 8, 10, 12, 14, 16, 18, 19, 20)] == [True] * 11
    report = (tmp_path / "run/report.md").read_text()
    assert "| data/rejected | 11 |" in report and "| data/records | 20 |" in report


@pytest.mark.parametrize("train_block,problems", [
    ("  train:\n    max_steps: 400\n    lr: 0.001\n    lr: 0.002\n",
     [":9: stages.0.train.lr: duplicate key (first given at line 8)"]),
    ("  train:\n    max_steps: 400\n  train:\n    max_steps: 4\n",
     [":8: stages.0.train: duplicate key (first given at line 6)"]),
    ("  train:\n    batch_size: true\n    max_steps: yes\n",
     [":7: stages.0.train.batch_size: must be a number, not a boolean (got True)",
      ":8: stages.0.train.max_steps: must be a number, not a boolean (got True)"]),
    ("  name: ../../escaped_stage\n",
     [":6: stages.0.name: a stage name becomes its folder in the run folder, so it must be a "
      "plain name"]),
    ("  name: /tmp/absolute\n", [":6: stages.0.name: a stage name becomes its folder"]),
])
def test_misread_configs_are_errors_with_their_lines(capsys, tmp_path, train_block, problems):
    path = tmp_path / "bad.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\nstages:\n- kind: sft\n  data:\n"
                    f"    path: {SFT}\n{train_block}")
    for command in (["config", "check", str(path)], ["run", "--dry-run", str(path)]):
        code, out, err = _ftlab(capsys, *command)
        assert code == 2 and "Traceback" not in err
        lines = [line.split(str(path), 1)[1] for line in err.splitlines()]
        assert len(lines) == len(problems), lines
        assert all(line.startswith(want) for line, want in zip(lines, problems)), lines


@pytest.mark.parametrize("stages,problem", [
    ([{"kind": "merge"}, {"kind": "export"}],
     ":3: stages[0] (merge): a merge stage needs a trained adapter"),
    ([_sft(str(SFT)), {"kind": "export"}, {"kind": "merge"}],
     ":16: stages[1] (export): export writes a merged model: put a merge stage before it"),
    ([_sft(str(SFT)), {"kind": "merge", "train": {"lr": 0.001}}],
     ":17: stages[1] (merge): train: this section is not used by a merge stage "
     "(it reads no section)"),
])
def test_config_check_refuses_what_the_dry_run_refuses(capsys, tmp_path, stages, problem):
    path = _write(tmp_path / "run.yaml", {"run_dir": str(tmp_path / "run"), "stages": stages})
    errors = []
    for command in (["config", "check", str(path)], ["run", "--dry-run", str(path)]):
        code, out, err = _ftlab(capsys, *command)
        assert code == 2, (command, out)
        errors.append(err)
    assert errors[0] == errors[1]
    assert f"ftlab: error: {path}{problem}" in errors[0], errors[0]


def test_a_model_that_cannot_load_is_refused_at_plan_time(capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for model, why in [(str(tmp_path / "no-such-model"), "no such model folder"),
                       (str(tmp_path), "not a transformers model folder (no config.json"),
                       ("nobody-here/no-such-model", "nor a Hub id in the Hugging Face cache, "
                                                     "and HF_HUB_OFFLINE is set")]:
        path = _write(tmp_path / "run.yaml", {"model": {"name_or_path": model},
                                              "stages": [_sft(str(SFT))]})
        for command in (["config", "check", str(path)], ["run", "--dry-run", str(path)]):
            code, out, err = _ftlab(capsys, *command)
            assert code == 2 and "Traceback" not in err
            assert f"ftlab: error: {path}:2: model.name_or_path: {model}: " in err, err
            assert why in err, err


def _plan_marks(out: str) -> dict[str, str]:
    """``stage name -> its mark in the printed plan`` ("" when it simply runs)."""
    marks = {}
    for line in out.splitlines():
        if line.startswith("  ") and ". " in line and ": " in line:
            name = line.split(". ", 1)[1].split(":", 1)[0]
            marks[name] = line.rsplit("[", 1)[1].rstrip("]") if line.endswith("]") else ""
    return marks


def test_reuse_is_verified_and_the_dry_run_says_what_the_run_does(capsys, tmp_path, monkeypatch):
    """A deleted output reruns its stage; a moved project and a run folder used from
    another working directory reuse everything; a changed config reruns what it must; and
    every time the dry run's plan says exactly what the run then does."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(SFT, project / "data/sft.jsonl")
    stages = [_sft("data/sft.jsonl"), {"kind": "merge"}]
    _write(project / "run.yaml", {"run_dir": "runs/r", "stages": stages})
    monkeypatch.chdir(project)

    def dry_then_run(*args: str) -> tuple[dict[str, str], list[str], str]:
        code, out, _ = _ftlab(capsys, "run", *args, "--dry-run")
        assert code == 0
        marks = _plan_marks(out)
        code, out, err = _ftlab(capsys, "run", *args, "--no-progress")
        assert code == 0, err
        reused = out.split("reused: ", 1)[1].split(";")[0].split(", ") if "reused: " in out else []
        assert [n for n, m in marks.items() if m == "done; reused"] == reused, (marks, out)
        return marks, reused, out

    assert dry_then_run("run.yaml")[1] == []
    merged = project / "runs/r/merge/model/model.safetensors"
    merged.unlink()
    marks, reused, out = dry_then_run("run.yaml")
    assert marks["merge"] == "runs again: recorded outputs changed: merge/model/model.safetensors: missing"
    assert reused == ["sft"] and merged.is_file()
    assert "stage merge: its recorded outputs changed" in out

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    shutil.move(project, moved)
    monkeypatch.chdir(moved.parent)
    assert dry_then_run("moved/run.yaml", "--run-dir", "moved/runs/r")[1] == ["sft", "merge"]
    state = (moved / "runs/r/state.json").read_text()
    assert str(tmp_path) not in state  # paths in the run state are relative to the run folder

    stages[0]["train"]["lr"] = 1e-3
    _write(moved / "run.yaml", {"run_dir": "runs/r", "stages": stages})
    marks, reused, _ = dry_then_run("moved/run.yaml", "--run-dir", "moved/runs/r")
    assert marks == {"sft": "runs again: its config or data changed",
                     "merge": "runs again: an earlier stage runs"} and reused == []


def test_a_diverging_stage_fails_naming_the_likely_cause(capsys, tmp_path):
    """float16 weights with lr 1: most steps overflow to NaN and are skipped; the stage stops
    with the cause instead of handing on an adapter that never trained."""
    config = _write(tmp_path / "run.yaml", {"run_dir": str(tmp_path / "run"),
                                            "model": {"dtype": "float16"},
                                            "stages": [_sft(str(SFT), steps=10, lr=1.0)]})
    code, out, err = _ftlab(capsys, "run", str(config), "--no-progress")
    assert code == 2, out
    assert err.startswith("ftlab: error: stage sft: ") and len(err.splitlines()) == 1
    assert "steps were skipped for a non-finite loss or gradient norm, more than " \
           "train.max_skipped_fraction (0.1)" in err and "train.lr 1" in err
    assert not (tmp_path / "run/sft/adapter").exists()

    stages = [_sft(str(SFT), steps=4, lr=1.0, max_skipped_fraction=1.0)]
    config = _write(tmp_path / "run.yaml", {"run_dir": str(tmp_path / "run"),
                                            "model": {"dtype": "float16"}, "stages": stages})
    code, out, err = _ftlab(capsys, "run", str(config), "--no-progress")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| model"))
    row = next(line for line in out.splitlines() if line.startswith("| sft |"))
    skipped = row.split("|")[header.split("|").index(" skipped steps ")].strip()
    assert int(skipped) >= 1, row


def test_every_single_bit_flip_of_a_checkpoint_manifest_is_caught_without_an_exception(tmp_path):
    """33 of 405 single-bit flips of ``manifest.json`` used to raise KeyError. A damaged
    manifest is a damaged checkpoint: every flip outside the unused ``"step"`` entry is
    reported as a problem, and none raises."""
    import torch

    from ftlab.train.checkpoint import MANIFEST, checkpoint_problems, save_checkpoint

    folder = save_checkpoint(tmp_path, {"w": torch.ones(3)}, {"trainer": {"step": 1}}, {"a": 1})
    original = (folder / MANIFEST).read_bytes()
    assert checkpoint_problems(folder) == []
    step_entry = range(original.index(b'"step"'), original.index(b'"files"'))
    missed = []
    for byte in range(len(original)):
        for bit in range(8):
            flipped = bytearray(original)
            flipped[byte] ^= 1 << bit
            (folder / MANIFEST).write_bytes(bytes(flipped))
            if not checkpoint_problems(folder):
                missed.append(byte)
    assert missed and set(missed) <= set(step_entry), bytes(original[b] for b in missed)


def _wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if metrics.is_file() and any(json.loads(line).get("step", 0) >= step
                                     for line in metrics.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {limit} s")


def test_a_killed_run_resumes_to_bit_identical_stage_outputs(capsys, tmp_path):
    """SIGKILL `ftlab run` mid-stage, damage the newest checkpoint's manifest, run again:
    the stage says from which checkpoint it resumes (the one before the damaged one) and its
    adapter is byte for byte the adapter of an uninterrupted run."""
    import torch

    from ftlab.train.checkpoint import CheckpointWarning

    def config(name: str) -> Path:
        return _write(tmp_path / f"{name}.yaml", {"run_dir": str(tmp_path / name), "stages": [
            # pinned: auto times a step, so two separate runs may pick different precisions
            _sft(str(SFT), steps=20, save_every=4, keep_last=3, precision="float32")]})

    assert _ftlab(capsys, "run", str(config("whole")), "--no-progress")[0] == 0
    threads = str(torch.get_num_threads())  # the same reductions as this process: same bits
    proc = subprocess.Popen([sys.executable, "-m", "ftlab.cli", "run", "--no-progress",
                             str(config("killed"))], env={**os.environ, "OMP_NUM_THREADS": threads},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_step(tmp_path / "killed/sft/train/metrics.jsonl", 11, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = sorted((tmp_path / "killed/sft/train/checkpoints").glob("step-*"))
    newest = checkpoints[-1]
    manifest = (newest / "manifest.json").read_bytes()
    at = manifest.index(b'"sha256"') + 1
    (newest / "manifest.json").write_bytes(manifest[:at] + b"t" + manifest[at + 1:])  # "sha256" -> "tha256"

    with pytest.warns(CheckpointWarning, match=f"checkpoint {newest.name} is damaged"):
        code, out, err = _ftlab(capsys, "run", str(config("killed")), "--no-progress")
    assert code == 0, err
    assert f"resuming from checkpoint {checkpoints[-2].name}" in out, out
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "killed/sft/adapter" / name).read_bytes() == \
            (tmp_path / "whole/sft/adapter" / name).read_bytes(), name


PAIRS = data_dir() / "preferences/train.jsonl"


def _start(config: Path, **popen) -> subprocess.Popen:
    import torch  # the same reductions as this process: same bits

    return subprocess.Popen([sys.executable, "-m", "ftlab.cli", "run", "--no-progress", str(config)],
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_ctrl_c_and_sigterm_stop_the_run_and_the_rerun_resumes_bit_identically(capsys, tmp_path):
    """SIGINT during SFT, then SIGTERM during DPO: each stops the run at the next step
    boundary with exit 130 and one line saying how to resume; the interrupted stage is not
    recorded as done and nothing after it runs; each rerun resumes, and the final adapters
    are byte for byte those of an uninterrupted run."""
    def config(name: str) -> Path:
        return _write(tmp_path / f"{name}.yaml", {"run_dir": str(tmp_path / name), "stages": [
            _sft(str(SFT), steps=12, save_every=4, precision="float32"),
            {"kind": "dpo", "data": {"path": str(PAIRS), "max_length": 96},
             "lora": {"r": 4, "alpha": 8}, "eval": QUICK_EVAL,
             "train": {"max_steps": 8, "batch_size": 4, "eval_every": 100, "save_every": 4,
                       "lr": 2e-4, "precision": "float32"}}]})

    assert _ftlab(capsys, "run", str(config("whole")))[0] == 0
    for stage, sig, step in (("sft", signal.SIGINT, 5), ("dpo", signal.SIGTERM, 3)):
        proc = _start(config("stopped"))
        _wait_for_step(tmp_path / f"stopped/{stage}/train/metrics.jsonl", step, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 130, (out, err)
        if stage == "sft":  # the base model, eval section and data of "whole": not measured again
            assert "base model figures: from the cache" in out and "measuring the base" not in out, out
        lines = [line for line in err.splitlines() if line.startswith("ftlab: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"stage {stage}: interrupted at step" in lines[0], lines
        assert "run the same command again to resume" in lines[0], lines
        state = json.loads((tmp_path / "stopped/state.json").read_text())
        assert stage not in state["stages"] and "merge" not in state["stages"], state["stages"]
    code, out, err = _ftlab(capsys, "run", str(config("stopped")), "--no-progress")
    assert code == 0, err
    assert "resuming from checkpoint" in out, out
    baselines = [json.loads((tmp_path / f"{run}/metrics.json").read_text())["baseline"]
                 for run in ("whole", "stopped")]
    assert baselines[0] == baselines[1]
    for stage in ("sft", "dpo"):
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            assert (tmp_path / f"stopped/{stage}/adapter" / name).read_bytes() == \
                (tmp_path / f"whole/{stage}/adapter" / name).read_bytes(), (stage, name)


def test_a_write_the_disk_refuses_is_one_line_and_leaves_no_half_checkpoint(tmp_path):
    """A file-size limit (as a full disk) while a checkpoint is written: one line naming the
    file and the cause, no traceback, no half-written checkpoint; without the limit the
    same command then completes."""
    import resource

    limit = 100 * 1024  # `ulimit -f 100`: smaller than the adapter's weights
    config = _write(tmp_path / "c.yaml", {"run_dir": str(tmp_path / "run"),
                                          "stages": [_sft(str(SFT), steps=2)]})
    proc = _start(config, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                (limit, limit)))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err and err.count("ftlab: error:") == 1, err
    assert "cannot write" in err and "trainable.safetensors" in err and "File too large" in err
    checkpoints = tmp_path / "run/sft/train/checkpoints"
    assert not [p for p in checkpoints.glob("*")], list(checkpoints.glob("*"))
    proc = _start(config)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def test_run_folders_that_cannot_be_one_and_data_paths_that_loop_are_one_line(capsys, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    config = _write(tmp_path / "c.yaml", {"run_dir": str(tmp_path / "run"), "stages": [_sft(str(SFT))]})
    for args, problem in (
            (["--run-dir", str(tmp_path / "a_file")], "it is a file, not a folder"),
            (["--run-dir", str(tmp_path / "a_file/run")], "is a file, so no folder can be made")):
        for dry in ([], ["--dry-run"]):
            code, out, err = _ftlab(capsys, "run", str(config), *args, *dry)
            assert code == 2 and problem in err and "Traceback" not in err, err
    looping = _write(tmp_path / "loop.yaml", {"run_dir": str(tmp_path / "run"),
                                              "stages": [_sft("loop1")]})
    code, out, err = _ftlab(capsys, "run", str(looping), "--dry-run")
    assert code == 2 and "data file cannot be resolved" in err and "loop" in err.lower(), err


def test_a_second_run_on_a_busy_run_folder_is_refused_and_a_dead_holder_is_taken_over(
        capsys, tmp_path):
    """Two `ftlab run` on one folder: the second fails at once naming the first's pid and
    leaves the first's files alone; after the first is killed (its lock dies with it) a
    new run takes the folder over, says so, and completes."""
    config = _write(tmp_path / "c.yaml", {"run_dir": str(tmp_path / "run"),
                                          "stages": [_sft(str(SFT), steps=40, save_every=5)]})
    first = _start(config)
    _wait_for_step(tmp_path / "run/sft/train/metrics.jsonl", 1, first)
    code, out, err = _ftlab(capsys, "run", str(config), "--no-progress")
    assert code == 2, out
    assert f"another ftlab run is using this run folder (process {first.pid} on " in err, err
    assert first.poll() is None  # untouched: still training
    first.send_signal(signal.SIGKILL)
    first.communicate()
    code, out, err = _ftlab(capsys, "run", str(config), "--no-progress")
    assert code == 0, err
    assert f"taking over from process {first.pid}" in out, out
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "run/sft/train/metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == list(range(1, 41)), steps  # one run's log: no step written twice
