"""Capstone — chaining the stages (C.3): each stage on the previous stage's model, completed
stages reused on a rerun, everything after a re-run stage run again, each result recorded
before the next stage starts."""

from __future__ import annotations

import pytest

from ftlab.config import StageConfig
from ftlab.course.teaching import expect, explained
from ftlab.pipeline import ModelRef, PlannedStage, StageRecord, StageResult, chain

pytestmark = pytest.mark.capstone

START = ModelRef("base")


def _plan(*names: str, changed: str | None = None) -> list[PlannedStage]:
    return [PlannedStage(n, StageConfig(kind="eval", name=n), None,
                         f"{n}-v2" if n == changed else f"{n}-v1") for n in names]


class StageFailed(Exception):
    """A fake stage's failure (not a RuntimeError: the stub's NotImplementedError is one)."""


class Recorder:
    """Fake stages: each hands on ``ModelRef(<input path>+<stage name>)``; calls are logged."""

    def __init__(self, fail_at: str | None = None):
        self.ran: list[tuple[str, str]] = []
        self.recorded: list[str] = []
        self.fail_at = fail_at

    def run(self, stage: PlannedStage, model: ModelRef) -> StageResult:
        if stage.name == self.fail_at:
            raise StageFailed(f"stage {stage.name} failed")
        self.ran.append((stage.name, model.path))
        return StageResult(ModelRef(f"{model.path}+{stage.name}"))

    def record(self, stage: PlannedStage, result: StageResult) -> None:
        self.recorded.append(stage.name)


def _done(*names: str) -> dict[str, StageRecord]:
    """Records of an earlier run: their models are marked ``*`` (``base+sft*+dpo*``), so a
    stage that receives a recorded model can be told from one given a fresh result."""
    path, done = "base", {}
    for n in names:
        path = f"{path}+{n}*"
        done[n] = StageRecord(f"{n}-v1", StageResult(ModelRef(path)))
    return done


def _chain(planned, done, rec: Recorder, what: str) -> list[StageResult]:
    with explained(task="C.3", what=what, expected="one StageResult per planned stage",
                   cause="look stages up in `done` by name (done.get(stage.name)); call "
                         "run(stage, model) and record(stage, result) for each stage that runs"):
        return chain(planned, done, START, rec.run, rec.record)


def test_c_3_each_stage_gets_the_previous_model():
    rec = Recorder()
    results = _chain(_plan("sft", "dpo", "merge"), {}, rec, "three new stages")
    inputs = [model for _, model in rec.ran]
    expect(inputs == ["base", "base+sft", "base+sft+dpo"], task="C.3",
           what="the model each stage received", expected="['base', 'base+sft', 'base+sft+dpo']",
           got=inputs, cause="every stage starts from the base model: pass each stage the model "
                             "the previous stage's result hands on (result.model)")
    paths = [r.model.path for r in results]
    expect(paths[-1] == "base+sft+dpo+merge", task="C.3", what="the results returned",
           expected="one per stage, in order", got=paths, cause="return every stage's result")


def test_c_3_completed_stages_are_reused():
    rec = Recorder()
    results = _chain(_plan("sft", "dpo", "merge"), _done("sft", "dpo"), rec,
                     "a rerun with sft and dpo done")
    ran = [name for name, _ in rec.ran]
    expect(ran == ["merge"], task="C.3", what="stages run when sft and dpo are recorded as done",
           expected="['merge']", got=ran,
           cause="completed stages re-run: a stage recorded in `done` with the same fingerprint "
                 "must be reused (its recorded result), not trained again")
    expect(rec.ran == [("merge", "base+sft*+dpo*")], task="C.3",
           what="the model merge received", expected="the recorded dpo result's model",
           got=rec.ran, cause="a reused stage still hands on its recorded result's model")
    expect([r.model.path for r in results][:2] == ["base+sft*", "base+sft*+dpo*"], task="C.3",
           what="results of reused stages", expected="their recorded results",
           got=[r.model.path for r in results], cause="return the recorded result of a reused stage")


def test_c_3_a_changed_stage_reruns_everything_after_it():
    rec = Recorder()
    _chain(_plan("sft", "dpo", "merge", changed="dpo"), _done("sft", "dpo", "merge"), rec,
           "a rerun with dpo's config changed")
    ran = [name for name, _ in rec.ran]
    expect(ran == ["dpo", "merge"], task="C.3",
           what="stages run after dpo's config changed (all three recorded as done)",
           expected="['dpo', 'merge']", got=ran,
           cause="a stage whose fingerprint changed must run; and once a stage has run, every "
                 "later stage must run too (stale results were made from the old model)")
    expect(rec.ran == [("dpo", "base+sft*"), ("merge", "base+sft*+dpo")], task="C.3",
           what="the model each re-run stage received", expected="dpo: the recorded sft "
           "model; merge: the model dpo just made", got=rec.ran,
           cause="a stage that ran hands on its new result's model (model = result.model), "
                 "not the stale model recorded for it")


def test_c_3_each_result_is_recorded_before_the_next_stage():
    rec = Recorder(fail_at="merge")
    try:
        chain(_plan("sft", "dpo", "merge"), {}, START, rec.run, rec.record)
        raised = None
    except StageFailed as error:
        raised = error
    expect(raised is not None, task="C.3", what="chain when the third stage raises",
           expected="the stage's exception, raised to the caller", got="chain returned",
           cause="a stage failure swallowed: let the exception propagate (no try/except "
                 "around run): the run must stop and say which stage failed")
    expect(rec.recorded == ["sft", "dpo"], task="C.3",
           what="stages recorded when the third stage fails", expected="['sft', 'dpo']",
           got=rec.recorded,
           cause="record each stage's result right after it runs (not at the end): an "
                 "interrupted run must resume after the last completed stage")
    rec = Recorder()
    _chain(_plan("sft", "dpo"), _done("sft"), rec, "a rerun with sft done")
    expect(rec.recorded == ["dpo"], task="C.3", what="stages recorded when sft was reused",
           expected="['dpo']", got=rec.recorded,
           cause="record only the stages that ran; a reused stage is recorded already")


def test_c_3_a_stage_new_to_the_plan_runs_with_every_later_one():
    rec = Recorder()
    planned, done = _plan("sft", "dpo", "eval", "merge"), _done("sft", "dpo")
    done["merge"] = StageRecord("merge-v1", StageResult(ModelRef("base+sft*+dpo*+merge*")))
    _chain(planned, done, rec, "a plan with an eval stage inserted before merge")
    expect(rec.ran == [("eval", "base+sft*+dpo*"), ("merge", "base+sft*+dpo*+eval")],
           task="C.3", what="stages run (and their input) when eval was added between dpo and "
                            "a recorded merge",
           expected="[('eval', 'base+sft*+dpo*'), ('merge', 'base+sft*+dpo*+eval')] (* marks "
                    "a recorded model)",
           got=rec.ran,
           cause="a stage missing from `done` runs, and once a stage has run every later stage "
                 "must run too (its input changed), even one recorded as done")
    rec = Recorder()
    _chain(_plan("sft", "dpo", "merge"), {k: v for k, v in _done("sft", "dpo", "merge").items()
                                           if k != "sft"}, rec, "a plan whose first stage is "
                                                                "not recorded")
    ran = [name for name, _ in rec.ran]
    expect(ran == ["sft", "dpo", "merge"], task="C.3",
           what="stages run when only dpo and merge are recorded as done",
           expected="['sft', 'dpo', 'merge']", got=ran,
           cause="sft runs (nothing recorded), so every later stage must run too: their "
                 "recorded results were made from another model")


def test_c_3_the_plan_and_the_records_are_left_unchanged():
    planned, done = _plan("sft", "dpo", "merge", changed="merge"), _done("sft", "dpo", "merge")
    planned_before, done_before = list(planned), dict(done)
    _chain(planned, done, Recorder(), "a rerun with merge changed")
    expect(planned == planned_before and done == done_before, task="C.3",
           what="the planned list and the `done` records after chain",
           expected=f"unchanged: planned {[p.name for p in planned_before]}, done "
                    f"{sorted(done_before)}",
           got=f"planned {[p.name for p in planned]}, done {sorted(done)}",
           cause="inputs modified (done.pop, del done[...], planned.remove): the caller reuses "
                 "them — `ftlab run` shows the plan with the same records before running it; "
                 "read them, record results only through record()")
