"""Capstone — chaining the stages (C.3): each stage on the previous stage's model, completed
stages reused on a rerun, everything after a re-run stage run again, each result recorded
before the next stage starts."""

from __future__ import annotations

import pytest

from ftlab.config import StageConfig
from ftlab.course.teaching import expect
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
    path, done = "base", {}
    for n in names:
        path = f"{path}+{n}"
        done[n] = StageRecord(f"{n}-v1", StageResult(ModelRef(path)))
    return done


def test_c_3_each_stage_gets_the_previous_model():
    rec = Recorder()
    results = chain(_plan("sft", "dpo", "merge"), {}, START, rec.run, rec.record)
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
    results = chain(_plan("sft", "dpo", "merge"), _done("sft", "dpo"), START, rec.run, rec.record)
    ran = [name for name, _ in rec.ran]
    expect(ran == ["merge"], task="C.3", what="stages run when sft and dpo are recorded as done",
           expected="['merge']", got=ran,
           cause="completed stages re-run: a stage recorded in `done` with the same fingerprint "
                 "must be reused (its recorded result), not trained again")
    expect(rec.ran == [("merge", "base+sft+dpo")], task="C.3",
           what="the model merge received", expected="the recorded dpo result's model",
           got=rec.ran, cause="a reused stage still hands on its recorded result's model")
    expect([r.model.path for r in results][:2] == ["base+sft", "base+sft+dpo"], task="C.3",
           what="results of reused stages", expected="their recorded results",
           got=[r.model.path for r in results], cause="return the recorded result of a reused stage")


def test_c_3_a_changed_stage_reruns_everything_after_it():
    rec = Recorder()
    chain(_plan("sft", "dpo", "merge", changed="dpo"), _done("sft", "dpo", "merge"), START,
          rec.run, rec.record)
    ran = [name for name, _ in rec.ran]
    expect(ran == ["dpo", "merge"], task="C.3",
           what="stages run after dpo's config changed (all three recorded as done)",
           expected="['dpo', 'merge']", got=ran,
           cause="a stage whose fingerprint changed must run; and once a stage has run, every "
                 "later stage must run too (stale results were made from the old model)")


def test_c_3_each_result_is_recorded_before_the_next_stage():
    rec = Recorder(fail_at="merge")
    with pytest.raises(StageFailed):
        chain(_plan("sft", "dpo", "merge"), {}, START, rec.run, rec.record)
    expect(rec.recorded == ["sft", "dpo"], task="C.3",
           what="stages recorded when the third stage fails", expected="['sft', 'dpo']",
           got=rec.recorded,
           cause="record each stage's result right after it runs (not at the end): an "
                 "interrupted run must resume after the last completed stage")
    rec = Recorder()
    chain(_plan("sft", "dpo"), _done("sft"), START, rec.run, rec.record)
    expect(rec.recorded == ["dpo"], task="C.3", what="stages recorded when sft was reused",
           expected="['dpo']", got=rec.recorded,
           cause="record only the stages that ran; a reused stage is recorded already")
