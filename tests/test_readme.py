"""The README stays true: its commands are the ones CI runs, its tables are generated."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ftlab.config import defaults_table
from ftlab.paths import base_model_dir

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _between(marker: str) -> str:
    match = re.search(rf"<!-- {marker}:begin -->\n(.*?)<!-- {marker}:end -->", README, re.S)
    assert match, f"README.md lacks the {marker} block"
    return match.group(1)


def test_readme_has_exactly_the_two_ci_commands():
    for marker in ("ci:install", "ci:test"):
        assert README.count(f"<!-- {marker} -->") == 1
    install = README.split("<!-- ci:install -->")[1].split("```")[1].strip().splitlines()
    assert len(install) == 2 and install[0] == "bash"  # fence language, then one line
    assert "pip install torch==2.13.0 " in install[1]
    assert install[1].index("torch==2.13.0") < install[1].index("-c constraints.txt")


def test_defaults_table_is_current():
    assert _between("defaults").strip() == defaults_table().strip()


def test_base_model_numbers_match_provenance():
    prov = json.loads((base_model_dir() / "provenance.json").read_text())
    table = _between("base-model")
    assert f"{prov['validation_perplexity']:.3f}" in table
    assert f"{prov['cloze_accuracy_heldout']:.1%}" in table
    assert f"{prov['chat_exact_match_heldout']:.1%}" in table
    assert f"{prov['parameters']:,}" in table
    for key in ("chat_exact_match_heldout_by_kind", "cloze_accuracy_heldout_by_kind"):
        rates = prov[key]
        kinds = " / ".join(f"{rates[k]:.1%}"[:-1] for k in sorted(k for k in rates if k != "macro"))
        assert f"{kinds}% (macro {rates['macro']:.1%})" in table, key
