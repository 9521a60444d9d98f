"""The ``ftlab`` command: help, doctor, demo, clean one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.cli import build_parser, main

FTLAB = str(Path(sys.executable).parent / "ftlab")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FTLAB, *args], capture_output=True, text=True, timeout=300)


def test_console_script_help_lists_every_command():
    out = _run("--help")
    assert out.returncode == 0
    for command in ("demo", "doctor", "world", "base-model", "config"):
        assert command in out.stdout


@pytest.mark.parametrize("args", [
    ["demo"], ["doctor"], ["world", "build"], ["world", "verify"], ["base-model", "build"],
    ["base-model", "verify"], ["config", "check"], ["config", "defaults"],
])
def test_every_subcommand_has_help(args, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*args, "--help"])
    assert exc.value.code == 0
    assert "usage: ftlab" in capsys.readouterr().out


def test_doctor_reports_what_a_bug_report_needs():
    out = _run("doctor")
    assert out.returncode == 0, out.stderr
    lines = {k.strip(): v.strip() for k, v in (line.split(" : ", 1) for line in out.stdout.splitlines())}
    import torch
    import transformers

    assert lines["torch"] == torch.__version__
    assert lines["transformers"] == transformers.__version__
    for key in ("peft", "trl", "bitsandbytes", "cpu features", "cuda",
                "bitsandbytes CPU repack trap"):
        assert key in lines
    assert lines["embedded model"] == "verifies"
    from ftlab.hardware import cpu_model

    # the CPU's model and the kernel set torch chose (a bug report from an AVX2-only CPU says so)
    assert lines["cpu"].startswith(cpu_model()), lines["cpu"]
    assert f"torch kernels {torch.backends.cpu.get_cpu_capability()}" in lines["cpu"], lines["cpu"]


def test_repack_trap_row_follows_version_and_cpu(monkeypatch):
    from ftlab.quant import cpu_trap

    monkeypatch.setattr(cpu_trap, "bitsandbytes_version", lambda: "0.50.2")
    monkeypatch.setattr(cpu_trap, "cpu_has_avx512_bf16", lambda: True)
    assert cpu_trap.repack_trap_applies()
    monkeypatch.setattr(cpu_trap, "bitsandbytes_version", lambda: "0.48.2")
    assert not cpu_trap.repack_trap_applies()
    monkeypatch.setattr(cpu_trap, "bitsandbytes_version", lambda: "0.50.2")
    monkeypatch.setattr(cpu_trap, "cpu_has_avx512_bf16", lambda: False)
    assert not cpu_trap.repack_trap_applies()


def test_bad_config_is_one_line_per_problem_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - kind: sft\n    lora:\n      r: -4\n")
    out = _run("config", "check", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert any(f"{bad}:4:" in line and "lora.r" in line for line in lines), lines
    assert all(line.startswith("ftlab: error: ") for line in lines)


def test_world_verify_fails_on_an_edited_file(tmp_path, fresh_world, capsys):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(fresh_world, copy)
    with (copy / "sft/qa.csv").open("a") as f:
        f.write("extra,row\n")
    assert main(["world", "verify", "--data", str(copy)]) == 1
    assert "sft/qa.csv: differs" in capsys.readouterr().out


def test_demo_shows_completions_chat_and_perplexity(capsys):
    from ftlab.demo import run_demo
    from ftlab.models.provenance import read_provenance
    from ftlab.paths import base_model_dir

    result = run_demo()
    out = capsys.readouterr().out
    assert "Plain completion" in out and "chat form" in out and "Perplexity" in out
    prov = read_provenance(base_model_dir())
    assert result["perplexity"] == pytest.approx(prov["validation_perplexity"], rel=0.01)
    assert len(result["cloze_correct"]) == len(result["chat_correct"]) == 6
    assert sum(result["cloze_correct"]) >= 4, "the base model should know most held-out facts"


@pytest.mark.parametrize("import_ftlab_first", [True, False])
def test_ftlab_silences_only_the_kernels_notice(import_ftlab_first):
    import ftlab
    from ftlab.quant.cpu_trap import cpu_has_avx512_bf16

    if not import_ftlab_first and not cpu_has_avx512_bf16():
        pytest.skip("bitsandbytes prints the notice only on CPUs with avx512_bf16")
    code = ("import ftlab\n" if import_ftlab_first else "") + "import bitsandbytes\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert (ftlab.KERNELS_NOTICE in out.stderr) is not import_ftlab_first
