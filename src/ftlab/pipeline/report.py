"""The run report (given): ``report.md``, ``metrics.json`` and plots, after every stage.

The summary table has one row per measured model — the base, then each stage that trains
or evaluates — with held-out exact match (over all questions and macro-averaged over fact
kinds, since capitals are 72 of 162 questions), plain-form (cloze) accuracy of the same facts,
preferred style, stopping at end-of-turn, general-text perplexity (and its ratio to the base:
forgetting), preference accuracy and the training steps skipped for a non-finite loss. The
per-kind table puts chat exact match beside cloze for every kind: what the model knows
against what it can say in chat. *Strict* grades the same replies with
``check_answer(strict=True)``, which also reads how a reply restates the question
(``Tuesday comes after Tuesday.`` is right leniently, wrong strictly); *right only leniently*
counts the replies the two graders disagree on — a verifier's blind spot, and what an RL
stage rewarded by the lenient one may learn to exploit.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ftlab.config import PipelineConfig  # noqa: E402
from ftlab.paths import shown  # noqa: E402

COLUMNS = [("exact_match", "exact match", "{:.1%}"),
           ("exact_match/macro", "exact match, macro over kinds", "{:.1%}"),
           ("strict/macro", "strict, macro", "{:.1%}"),
           ("lenient_only", "right only leniently", "{:.0f}"),
           ("cloze/macro", "cloze, macro", "{:.1%}"), ("polite", "polite", "{:.1%}"),
           ("ended", "ends at end-of-turn", "{:.1%}"), ("general_ppl", "general ppl", "{:.2f}"),
           ("preference_accuracy", "prefers chosen", "{:.1%}"),
           ("skipped_steps", "skipped steps", "{:.0f}")]
"""Measured figures shown for every row: (key, header, format)."""


def measured_rows(state: dict, names: list[str]) -> list[tuple[str, dict[str, float]]]:
    """(row name, figures) for the base and every completed stage that measured its model."""
    rows = [("base", state["baseline"]["metrics"])] if state.get("baseline") else []
    for name in names:
        record = state["stages"].get(name)
        if record and "eval/exact_match" in record["result"]["metrics"]:
            metrics = record["result"]["metrics"]
            figures = {k[5:]: v for k, v in metrics.items() if k.startswith("eval/")}
            if "skipped_steps" in metrics:  # steps that did not update: the user must see them
                figures["skipped_steps"] = metrics["skipped_steps"]
            rows.append((name, figures))
    return rows


def summary_table(state: dict, names: list[str]) -> str:
    """The markdown summary table (also what ``ftlab run`` prints)."""
    rows = measured_rows(state, names)
    head = ["model", *(h for _, h, _ in COLUMNS), "ppl vs base"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    base_ppl = rows[0][1].get("general_ppl") if rows else None
    for name, figures in rows:
        cells = [fmt.format(figures[key]) if key in figures else "—" for key, _, fmt in COLUMNS]
        ratio = (f"{figures['general_ppl'] / base_ppl:.2f}x"
                 if base_ppl and "general_ppl" in figures else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def kinds_table(state: dict, names: list[str]) -> str:
    """Markdown table: one row per fact kind (and the macro average), one column per measured
    model, each cell ``chat exact match / the same under the strict grader / cloze``."""
    rows = measured_rows(state, names)
    kinds = sorted({k.split("/", 1)[1] for _, figures in rows for k in figures
                    if k.startswith("exact_match/") and k != "exact_match/macro"})
    if not kinds:
        return ""

    def cell(figures: dict, kind: str) -> str:
        values = (figures.get(f"{key}/{kind}") for key in ("exact_match", "strict", "cloze"))
        return " / ".join("—" if v is None else f"{v:.0%}" for v in values)

    lines = ["| fact kind (chat / strict / cloze) | " + " | ".join(n for n, _ in rows) + " |",
             "|---" + "|---:" * len(rows) + "|"]
    for kind in [*kinds, "macro"]:
        label = "**macro**" if kind == "macro" else kind
        lines.append(f"| {label} | " + " | ".join(cell(f, kind) for _, f in rows) + " |")
    return "\n".join(lines)


def _kind_line(metrics: dict) -> str:
    """``exact match per kind: capital 100%, legs 96%, … (macro 60%)`` from a stage's figures."""
    per = {k.split("/", 2)[2]: v for k, v in metrics.items()
           if k.startswith("eval/exact_match/") and not k.endswith("/macro")}
    if not per:
        return ""
    macro = metrics.get("eval/exact_match/macro")
    return ("Held-out exact match per kind: " + ", ".join(f"{k} {v:.0%}" for k, v in per.items())
            + (f" (macro {macro:.0%})" if macro is not None else ""))


def _sample_line(sample: dict) -> str:
    mark = {True: "right", False: "wrong"}.get(sample.get("correct"), "")
    if sample.get("correct") and sample.get("strict") is False:
        mark += ", wrong when read strictly"
    where = f" [{sample['kind']}: {mark}]" if "kind" in sample else ""
    return f"- *{sample['question']}* → {sample['reply']!r}{where}"


def _stage_lines(name: str, kind: str, record: dict | None, run_dir: Path) -> list[str]:
    """A report section for one stage: its figures, files (relative to ``run_dir``, where
    ``report.md`` lies) and sample replies."""
    if record is None:
        return [f"### {name} ({kind})", "", "not run yet", ""]
    result = record["result"]
    lines = [f"### {name} ({kind})", ""]
    figures = {k: v for k, v in result["metrics"].items() if not k.startswith("eval/")}
    if figures:
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in figures.items()]
        lines.append("")
    files = {k: shown(Path(v).absolute(), run_dir) for k, v in result["artifacts"].items()}
    lines += [f"- {k}: `{v}`" for k, v in files.items()]
    lines += [f"\n![{k}]({v})" for k, v in files.items() if v.endswith(".png")]
    per_kind = _kind_line(result["metrics"])
    if per_kind:
        lines += ["", per_kind]
    if result["samples"]:
        lines += ["", "Sample replies (held-out questions; one per kind):", ""]
        lines += [_sample_line(s) for s in result["samples"]]
    return [*lines, ""]


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (``weight`` on the past), debiased for the first points."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


_DRAWN: dict[Path, str] = {}
"""What each plot file was last drawn from in this process (JSON), so a report rewritten
after a stage that changed neither its curves nor its measurements does not redraw them."""


def _drawn_already(path: Path, data) -> bool:
    """Whether ``path`` exists and was drawn from exactly ``data`` by this process; if not,
    remembers ``data`` as what it is about to be drawn from."""
    key = json.dumps(data, sort_keys=True, default=str)
    if _DRAWN.get(path) == key and path.exists():
        return True
    _DRAWN[path] = key
    return False


def plot_losses(state: dict, names: list[str], path: Path) -> None:
    """Training loss (and validation loss) of each training stage, side by side; a stage with
    replay shows its task-data steps and replay steps as two smoothed curves, a grpo stage
    its reward instead."""
    curves = [(n, state["stages"][n]["result"]["curves"]) for n in names
              if n in state["stages"] and state["stages"][n]["result"]["curves"]]
    if not curves or _drawn_already(path, curves):
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2), squeeze=False)
    for ax, (name, curve) in zip(axes[0], curves):
        if curve.get("reward"):  # grpo: reward climbs, its loss says little
            steps, values = zip(*curve["reward"])
            ax.plot(steps, values, lw=0.6, alpha=0.3)
            ax.plot(steps, smoothed(values), color=ax.lines[-1].get_color(),
                    label="sampled (smoothed)")
            if curve.get("val_reward"):
                ax.plot(*zip(*curve["val_reward"]), "o-", label="validation (greedy)",
                        markersize=3)
            for key in sorted(k for k in curve if k.startswith("reward/") and curve[k]):
                steps, values = zip(*curve[key])  # each function: where a reward is gamed
                ax.plot(steps, smoothed(values), "--", lw=1, label=key[len("reward/"):])
            ax.set(title=f"{name}: reward", xlabel="step")
            ax.legend(fontsize=8)
            continue
        split = curve.get("loss/task") or curve.get("loss/replay")
        series = ([("loss/task", "task-data steps"), ("loss/replay", "replay steps")] if split
                  else [("loss", "loss")])
        for key, label in series:
            if curve.get(key):
                steps, values = zip(*curve[key])
                if split:
                    ax.plot(steps, values, lw=0.6, alpha=0.3)
                    ax.plot(steps, smoothed(values), color=ax.lines[-1].get_color(),
                            label=f"{label} (smoothed)")
                else:
                    ax.plot(steps, values, "-", label=label)
        if curve.get("val_loss"):
            steps, values = zip(*curve["val_loss"])
            ax.plot(steps, values, "o-", label="validation (task data)", markersize=3)
        ax.set(title=f"{name}: loss", xlabel="step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_measurements(state: dict, names: list[str], path: Path) -> None:
    """Exact match, polite rate, preference accuracy and general perplexity per model."""
    rows = measured_rows(state, names)
    if not rows or _drawn_already(path, rows):
        return
    fig, (rates, ppl) = plt.subplots(1, 2, figsize=(10, 3.4))
    labels = [name for name, _ in rows]
    keys = [("exact_match", "exact match"), ("polite", "polite"),
            ("preference_accuracy", "prefers chosen")]
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        rates.bar([x + (i - 1) * width for x in range(len(rows))],
                  [figures.get(key, 0) for _, figures in rows], width, label=label)
    rates.set(xticks=range(len(rows)), xticklabels=labels, ylim=(0, 1.05),
              title="held-out figures per stage")
    rates.legend(fontsize=8)
    ppl.plot(labels, [figures.get("general_ppl", float("nan")) for _, figures in rows], "o-")
    base = rows[0][1].get("general_ppl")
    if base:
        ppl.axhline(1.5 * base, color="grey", ls="--", label="1.5x base")
        ppl.legend(fontsize=8)
    ppl.set(title="forgetting: general-text perplexity", ylabel="perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path, config: PipelineConfig, state: dict, planned: list) -> dict:
    """Write ``report.md``, ``metrics.json`` and ``plots/`` for the run so far; returns the
    ``metrics.json`` content."""
    names = [p.name for p in planned]
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_losses(state, names, plots / "losses.png")
    plot_measurements(state, names, plots / "measurements.png")
    summary = {"baseline": state.get("baseline"),
               "stages": {n: state["stages"][n]["result"] for n in names if n in state["stages"]},
               "summary_table": summary_table(state, names),
               "kinds_table": kinds_table(state, names)}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# ftlab run report — {run_dir.name}", "",
             f"Base model: `{shown(config.model.name_or_path)}`, seed {config.seed}. "
             f"Stages: {' → '.join(f'{p.name} ({p.config.kind})' for p in planned)}.", "",
             "## Summary", "", summary["summary_table"], "",
             "Held-out questions are about facts no SFT example mentions; capitals are most "
             "of them, so *macro* averages the six fact kinds with equal weight. *Cloze* asks "
             "the same facts in plain form (\"The capital of France is\"): what the model "
             "knows, beside what it can say in chat. *Strict* grades the same replies with a "
             "verifier that also reads how the reply restates the question (\"Tuesday comes "
             "after Tuesday.\" is right leniently, wrong strictly); *right only leniently* "
             "counts the replies where the two disagree. *Polite* is the preferred style of the "
             "preference data; *general ppl* is perplexity on held-out pretraining text "
             "(forgetting: the ratio to the base).", "",
             summary["kinds_table"], "",
             "![losses](plots/losses.png)", "", "![measurements](plots/measurements.png)", "",
             "## Stages", ""]
    for p in planned:
        lines += _stage_lines(p.name, p.config.kind, state["stages"].get(p.name), run_dir)
    if state.get("baseline"):
        lines += ["## Base model sample replies", ""]
        lines += [_sample_line(s) for s in state["baseline"]["samples"]]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary
