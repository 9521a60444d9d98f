"""Course mechanics on a fixture course (tests/fixtures/course), independent of the real milestones.

The fixture has five code regions (M1.1, M1.2, M2.1, M2.2, M2.3), one notebook region
(M1.3), a region no test grades (M2.3) and a wrong answer its checks miss (M1.2 integer
division): ``verify`` must report exactly those two and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.cli import main
from ftlab.course.grade import grade
from ftlab.course.regions import RegionError, find_regions, parse_text, stub_text
from ftlab.course.release import ReleaseError, release
from ftlab.course.runner import run_suite
from ftlab.course.tasks import milestone_of, sort_key, task_of_test
from ftlab.course.teaching import expect, expect_close, teach
from ftlab.course.verify import _check_leaks, verify

FIXTURE = Path(__file__).parent / "fixtures" / "course"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    out = tmp_path_factory.mktemp("editions") / "learner"
    release(FIXTURE, out)
    return out


@pytest.fixture()
def course(tmp_path):
    """A private, editable copy of the fixture course."""
    copy = tmp_path / "course"
    shutil.copytree(FIXTURE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


# ---------------------------------------------------------------- task ids

@pytest.mark.parametrize(("name", "task"), [
    ("test_m2_2_forward_equals_dense_update", "M2.2"), ("test_m1_10_x[3]", "M1.10"),
    ("test_c_1_logprobs", "C.1"), ("test_m2_2", "M2.2"), ("test_given_loader", None),
    ("test_m2_loader", None), ("test_m0_1_x", None),
])
def test_task_of_test(name, task):
    assert task_of_test(name) == task


def test_milestones_and_order():
    assert milestone_of("M3.4") == "m3" and milestone_of("C.2") == "capstone"
    assert sorted(["C.1", "M2.10", "M2.2", "M1.1"], key=sort_key) == ["M1.1", "M2.2", "M2.10", "C.1"]


# ---------------------------------------------------------------- parser

@pytest.mark.parametrize(("body", "problem", "line"), [
    ("### BEGIN SOLUTION M1.1\n### BEGIN SOLUTION M1.2\n### END SOLUTION\n", "nested", 3),
    ("x = 1\n### BEGIN SOLUTION M1.1\ny = 2\n", "unterminated", 3),
    ("### BEGIN SOLUTION\n### END SOLUTION\n", "untagged", 2),
    ("### BEGIN SOLUTION M2\n### END SOLUTION\n", "invalid task id", 2),
    ("x = 1\n\n### END SOLUTION\n", "without a BEGIN", 4),
])
def test_parser_rejects_malformed_regions_with_file_and_line(body, problem, line):
    text = "def f():\n" + "".join(f"    {row}\n" if row else "\n" for row in body.splitlines())
    text += "    pass\n"
    regions, problems = parse_text(text, "src/pkg/mod.py")
    assert len(problems) == 1 and problem in problems[0], problems
    assert problems[0].startswith(f"src/pkg/mod.py:{line}: ")


def test_markers_in_strings_are_text_and_module_level_regions_are_rejected():
    quoted = 'def f():\n    """Example:\n    ### BEGIN SOLUTION M1.1\n    ### END SOLUTION\n    """\n'
    assert parse_text(quoted, "m.py") == ([], [])
    regions, problems = parse_text("### BEGIN SOLUTION M1.1\nx = 1\n### END SOLUTION\n", "m.py")
    assert not regions and problems == [
        "m.py:1: solution region M1.1 is not inside a function; its stub would raise when "
        "the module is imported"]


def test_stub_takes_the_indentation_of_the_code_it_replaces(course, tmp_path):
    path = course / "src/toy/stats.py"
    path.write_text(path.read_text().replace("    ### BEGIN SOLUTION M1.2", "### BEGIN SOLUTION M1.2"))
    release(course, tmp_path / "out")
    assert '    raise NotImplementedError("M1.2 not started: implement mean' in (tmp_path / "out/src/toy/stats.py").read_text()


def test_release_refuses_a_stub_that_does_not_parse(course, tmp_path):
    (course / "src/toy/bad.py").write_text(
        "def f(x):\n    ### BEGIN SOLUTION M1.9\n    if x:\n        y = 1\n"
        "    ### END SOLUTION\n        return y\n")
    with pytest.raises(ReleaseError, match=r"src/toy/bad.py:3: the stubbed file does not parse"):
        release(course, tmp_path / "out")


def test_duplicate_task_ids_across_files_are_rejected(course):
    (course / "src/toy/extra.py").write_text(
        "def again():\n    ### BEGIN SOLUTION M1.1\n    return 1\n    ### END SOLUTION\n")
    with pytest.raises(RegionError) as err:
        find_regions(course)
    assert str(err.value) == ("src/toy/stats.py:6: duplicate solution region M1.1 "
                              "(also at src/toy/extra.py:2)")


def test_regions_know_their_qualified_name_and_indentation():
    regions = {r.task: r for r in find_regions(FIXTURE)}
    assert regions["M2.1"].qualname == "Scaler.__init__" and regions["M2.1"].indent == " " * 8
    assert regions["M1.1"].qualname == "total" and regions["M1.1"].indent == " " * 4
    assert regions["M1.3"].cell == 1 and regions["M1.3"].path == "notebooks/01_data_prep.ipynb"
    assert regions["M2.2"].stub_line() == (
        '        raise NotImplementedError("M2.2 not started: implement Scaler.apply in '
        'src/toy/scale.py (notebooks/02_lora.ipynb explains it)")')


def test_stub_keeps_every_other_byte():
    text = "a = 1\r\n    ### BEGIN SOLUTION M1.1\r\n    b = 2\r\n    ### END SOLUTION\r\nc = 3"
    regions, _ = parse_text(text, "m.py", fallback_name="m")
    assert stub_text(text, regions) == (
        'a = 1\r\n    raise NotImplementedError("M1.1 not started: implement m in m.py '
        '(notebooks/01_data_prep.ipynb explains it)")'
        "\r\nc = 3")


# ---------------------------------------------------------------- release

def test_release_writes_a_complete_learner_project(learner):
    assert {p.name for p in learner.iterdir()} == {
        "src", "notebooks", "milestones", "data", "configs", "pyproject.toml", "README.md",
        "course.json"}
    assert 'testpaths = ["milestones"]' in (learner / "pyproject.toml").read_text()
    readme = (learner / "README.md").read_text()
    assert "pytest milestones -m m1" in readme and "jupyter lab" in readme
    assert readme.index("## Start here") < readme.index("## Grade")
    assert "check(\"M1.1\")" in readme and "**M2.1** `Scaler.__init__`" in readme
    assert "ftlab course grade" in readme and "| M5.3 | blocked by M2.4 | 0/1 |" in readme
    tasks = json.loads((learner / "course.json").read_text())["tasks"]
    assert [(t["task"], t["graded"]) for t in tasks] == [
        ("M1.1", True), ("M1.2", True), ("M1.3", False), ("M2.1", True), ("M2.2", True),
        ("M2.3", True)]


def test_release_changes_only_the_regions(learner):
    for rel in ("src/toy/stats.py", "src/toy/scale.py"):
        ref = (FIXTURE / rel).read_bytes().decode()
        out = (learner / rel).read_bytes().decode()
        regions, _ = parse_text(ref, rel)
        assert out == stub_text(ref, regions)
        ref_lines, out_lines = ref.splitlines(keepends=True), out.splitlines(keepends=True)
        assert len(ref_lines) - len(out_lines) == sum(r.end - r.begin for r in regions)
        first = regions[0]
        assert out_lines[: first.begin - 1] == ref_lines[: first.begin - 1]
        assert out_lines[-3:] == ref_lines[-3:] or regions[-1].end > len(ref_lines) - 3
    assert b"\r\n" in (learner / "src/toy/scale.py").read_bytes(), "CRLF must survive"
    assert (learner / "src/toy/__init__.py").read_bytes() == (FIXTURE / "src/toy/__init__.py").read_bytes()


def test_release_clears_notebook_outputs_and_stubs_solution_cells(learner):
    nb = json.loads((learner / "notebooks/01_data_prep.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    source = "".join(code[0]["source"])
    assert "total([1.0, 2.0, 3.0]) * 10" not in source
    assert 'raise NotImplementedError("M1.3 not started: implement your turn' in source and "print(answer)" in source


def test_release_refuses_non_empty_out_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ReleaseError, match="not empty; pass --force"):
        release(FIXTURE, out)
    assert (out / "keep.txt").read_text() == "mine"
    release(FIXTURE, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "src/toy/stats.py").is_file()


@pytest.mark.parametrize("where", [".", "src/learner", "..", "learner", "tests/learner"])
def test_release_refuses_an_out_that_overlaps_the_project(course, where):
    before = _tree_digest(course)
    with pytest.raises(ReleaseError):
        release(course, course / where)
    assert _tree_digest(course) == before


def test_release_writes_nowhere_outside_out(course, tmp_path):
    before = _tree_digest(course)
    siblings = set(tmp_path.iterdir())
    release(course, tmp_path / "edition")
    assert _tree_digest(course) == before
    assert set(tmp_path.iterdir()) == siblings | {tmp_path / "edition"}


# ---------------------------------------------------------------- grading

def test_learner_edition_grades_every_task_failing_with_a_task_id(learner, tmp_path):
    grades = grade(learner, tmp_path)
    tasks = {t: v for m in grades["milestones"].values() for t, v in m["tasks"].items()}
    assert set(tasks) == {"M1.1", "M1.2", "M2.1", "M2.2", "M2.3"}
    for task in ("M1.1", "M1.2", "M2.1"):
        assert tasks[task]["status"] == "not started"
        assert tasks[task]["first_failure"].startswith(f"NotImplementedError: {task} ")
    # M2.2's check stops on M2.1's stub: blocked, not a failure of M2.2's own
    assert tasks["M2.2"]["status"] == "blocked" and tasks["M2.2"]["blocked_by"] == ["M2.1"]
    assert tasks["M2.3"]["status"] == "ungraded" and tasks["M2.3"]["max_points"] == 0
    assert grades["points"] == 0 and grades["max_points"] == 4
    assert grades["infrastructure"] == {"passed": 1, "failed": []}
    md = (tmp_path / "grades.md").read_text()
    assert "| m1 (0/2) | M1.1 | not started | 0/1 | NotImplementedError: M1.1 not started: " \
           "implement total in src/toy/stats.py" in md
    assert "| M2.2 | blocked by M2.1 | 0/1 |" in md
    assert "Checks of the given code (not graded): 1 passed, 0 failed." in md
    assert json.loads((tmp_path / "grades.json").read_text()) == grades


def test_reference_grades_full_marks(tmp_path):
    grades = grade(FIXTURE, tmp_path)
    assert grades["points"] == grades["max_points"] == 4


def test_grade_exits_zero_when_tasks_fail_and_non_zero_when_grading_breaks(learner, course,
                                                                            tmp_path, capsys):
    assert main(["course", "grade", str(learner), "--out", str(tmp_path / "g")]) == 0
    (course / "milestones/m1_toy/test_stats.py").write_text("def broken(:\n")
    assert main(["course", "grade", str(course), "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert "ftlab: error: pytest could not grade" in err and "Traceback" not in err


def test_milestone_run_prints_the_progress_table(learner):
    run = run_suite(learner, ["milestones/m1_toy"])
    table = run.output.split("ftlab progress")[1]
    assert "m1        0/2 tasks   M1.1 not started  M1.2 not started" in table
    assert "m2" not in table.split("short test summary")[0]
    table = run_suite(learner, ["milestones/m2_toy"]).output.split("ftlab progress")[1]
    assert "m2        0/2 tasks   M2.1 not started  M2.2 blocked by M2.1" in table


def test_only_another_tasks_stub_blocks_a_check(learner):
    """Only another task's stub blocks: a test failing on its own task's stub fails."""
    from ftlab.course.plugin import task_status

    records = {r["task"]: r for r in run_suite(learner, ["milestones/m2_toy"]).records}
    assert records["M2.1"]["outcome"] == "failed" and records["M2.1"]["blocked_by"] == []
    assert records["M2.2"]["outcome"] == "blocked" and records["M2.2"]["blocked_by"] == ["M2.1"]
    assert task_status([records["M2.2"], {**records["M2.1"], "task": "M2.2"}]) == ("fail", [])


def test_traced_run_lists_the_regions_each_test_executes(course):
    """The reference run records which regions' lines each test ran: the mutant of M2.1 is
    run against M2.2's checks too (they construct a Scaler), and nothing else."""
    from ftlab.course.verify import tests_of_tasks

    regions = [r for r in find_regions(course) if r.cell is None]
    run = run_suite(course, trace=regions)
    exercised = {r["name"]: r["exercised"] for r in run.records}
    assert exercised["test_m2_2_apply_multiplies"] == ["M2.1", "M2.2"]
    assert exercised["test_m2_1_keeps_factor_as_float"] == ["M2.1"]
    targets = tests_of_tasks(run.records)
    assert {n.split("::")[1].split("[")[0] for n in targets["M2.1"]} == {
        "test_m2_1_keeps_factor_as_float", "test_m2_2_apply_multiplies"}
    assert all("m1_toy" in n for n in targets["M1.1"])


# ---------------------------------------------------------------- teaching messages

def test_teaching_message_names_task_expected_got_and_cause():
    msg = teach("M2.1", "adapted equals base at init", 0, 0.42, "B must start at zero")
    assert msg.splitlines() == ["[M2.1] adapted equals base at init", "  expected: 0",
                                "  got:      0.42", "  likely cause: B must start at zero"]
    with pytest.raises(AssertionError, match=r"\[M1\.1\] x"):
        expect(False, task="M1.1", what="x", expected=1, got=2, cause="c")
    expect(True, task="M1.1", what="x", expected=1, got=1, cause="c")


def test_explained_turns_a_crash_into_a_teaching_message_and_lets_stubs_through():
    from ftlab.course.teaching import explained

    with pytest.raises(AssertionError) as info:
        with explained(task="M2.2", what="forward of (2, 24)", expected="shape (2, 16)",
                       cause="x @ A.T is (.., r)"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x24 and 4x24)")
    assert str(info.value).splitlines() == [
        "[M2.2] forward of (2, 24)", "  expected: shape (2, 16)",
        "  got:      RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x24 and 4x24)",
        "  likely cause: x @ A.T is (.., r)"]
    for passing in (NotImplementedError("M2.1 LoRALinear"), AssertionError("[M2.2] x")):
        with pytest.raises(type(passing)):
            with explained(task="M2.2", what="w", expected="e", cause="c"):
                raise passing


def test_expect_close_reports_shape_and_largest_difference():
    import torch

    expect_close(torch.ones(3), torch.ones(3) + 1e-8, task="M2.2", what="y", cause="c")
    with pytest.raises(AssertionError, match="max \\|difference\\| 0.5"):
        expect_close(torch.tensor([1.0, 1.5]), torch.ones(2), task="M2.2", what="y", cause="c")
    with pytest.raises(AssertionError, match=r"shape \(2, 3\)"):
        expect_close(torch.ones(3, 2), torch.ones(2, 3), task="M2.2", what="y", cause="c")


# ---------------------------------------------------------------- verify

def test_verify_reports_the_ungraded_region_and_the_uncaught_wrong_answer():
    report = verify(FIXTURE, progress=False)
    assert len(report.problems) == 3, report.problems
    assert any(p.startswith("(b) M2.3") and "has no test" in p for p in report.problems)
    assert any(p.startswith("(c) ungraded region M2.3 at src/toy/scale.py:20")
               for p in report.problems)
    assert any(p.startswith("(e) uncaught wrong answer for M1.2") for p in report.problems)
    assert any("fails first on the stub of M2.1" in n for n in report.notes)


def test_verify_passes_a_course_whose_graders_grade(course):
    scale = (course / "src/toy/scale.py").read_bytes().decode()
    (course / "src/toy/scale.py").write_bytes(scale.split("\r\n\r\n\r\ndef forgotten")[0].encode()
                                              + b"\r\n")
    catalogue = course / "tests/wrong_answers/m1.py"
    text = catalogue.read_text()
    catalogue.write_text(text[: text.index("    WrongAnswer(\n        task=\"M1.2\"")] + "]\n")
    report = verify(course, progress=False)
    assert report.ok, report.problems


def test_verify_reports_a_wrong_answer_caught_without_a_teaching_message(course):
    test = course / "milestones/m1_toy/test_stats.py"
    test.write_text(test.read_text().replace(
        'cause="a value is skipped in the sum (check the loop bounds)"', 'cause="?"'))
    report = verify(course, progress=False)
    assert any(p.startswith("(e) wrong answer for M1.1 'last value skipped' fails, but no "
                            "check of M1.1 says M1.1 and ['skipped']") for p in report.problems)


def test_verify_finds_solution_text_in_the_learner_edition(course, learner, tmp_path):
    from ftlab.course.verify import Report

    leaky = tmp_path / "leaky"
    shutil.copytree(learner, leaky)
    with (leaky / "milestones/m1_toy/test_stats.py").open("a") as f:
        f.write("# hint: return total(xs) / len(xs)\n")
    with (leaky / "milestones/m1_toy/test_stats.py").open("a") as f:
        f.write("    return total(xs) / len(xs)\n")
    report = Report()
    _check_leaks(course, leaky, find_regions(course), report)
    assert report.problems == [
        "(d) solution text in milestones/m1_toy/test_stats.py: 'return total(xs) / len(xs)'"]
    clean = Report()
    _check_leaks(course, learner, find_regions(course), clean)
    assert clean.ok


def test_verify_checks_wrong_answers_kept_outside_the_project(course, tmp_path):
    """``--wrong FILE``: a blind audit's wrong answers are judged instead of the catalogue
    and the stubs; one is caught, one passes every check and is reported."""
    outside = tmp_path / "audit.py"
    outside.write_text(
        "from ftlab.course.wrong import WrongAnswer\n"
        "WRONG_ANSWERS = [\n"
        "    WrongAnswer(task='M1.1', label='first value skipped', message_contains=(),\n"
        "                code='return sum(xs[1:])'),\n"
        "    WrongAnswer(task='M1.2', label='median', message_contains=(),\n"
        "                code='return sorted(xs)[len(xs) // 2] if len(xs) % 2 else '\n"
        "                     '(sorted(xs)[len(xs) // 2 - 1] + sorted(xs)[len(xs) // 2]) / 2'),\n"
        "]\n")
    report = verify(course, progress=False, wrong_file=outside)
    assert [p for p in report.problems if p.startswith("(e)")] == [
        "(e) uncaught wrong answer for M1.2: 'median' passes every check"], report.problems
    assert "0 regions, 2 wrong answers checked" in report.notes


def test_a_crash_in_learner_code_is_a_course_message_naming_the_region(course):
    """An exception inside a solution region (here M1.1's, reached through M1.2's check)
    fails each task test with the course message: the test's task, the exception, the line
    and the task whose region raised it; no raw traceback reaches the progress lines."""
    stats = course / "src/toy/stats.py"
    stats.write_text(stats.read_text().replace("result += x", "result += x[0]"))
    run = run_suite(course, ["milestones/m1_toy"])
    by_name = {r["name"]: r for r in run.records}
    message = by_name["test_m1_2_mean_divides_by_count"]["message"]
    assert message.startswith("AssertionError: [M1.2]"), message
    assert "TypeError: 'float' object is not subscriptable at src/toy/stats.py:" in message
    assert "in total (inside M1.1's solution)" in message
    assert "likely cause: a crash inside M1.1's code" in message
    assert by_name["test_m1_1_total_adds_every_value"]["message"].startswith(
        "AssertionError: [M1.1]")
    assert by_name["test_given_describe"]["outcome"] == "passed"


def test_a_fixture_that_crashes_in_learner_code_is_a_course_message(course):
    test = course / "milestones/m1_toy/test_stats.py"
    test.write_text(test.read_text() + (
        "\n\n@pytest.fixture\ndef halves():\n    return mean([1])[0]\n\n\n"
        "def test_m1_2_mean_of_one(halves):\n    pass\n"))
    run = run_suite(course, ["milestones/m1_toy"])
    record = next(r for r in run.records if r["name"] == "test_m1_2_mean_of_one")
    assert record["outcome"] == "failed"
    assert record["message"].startswith("AssertionError: [M1.2]"), record["message"]
    assert "TypeError: 'float' object is not subscriptable" in record["message"]


def test_course_commands_have_help():
    out = subprocess.run([sys.executable, "-m", "ftlab.cli", "course", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert all(c in out.stdout for c in ("release", "grade", "verify"))


def test_learner_pytest_imports_the_learners_own_src(learner):
    pyproject = (learner / "pyproject.toml").read_text()
    assert 'testpaths = ["milestones"]\npythonpath = ["src"]' in pyproject
    out = subprocess.run([sys.executable, "-m", "pytest", "milestones", "-q", "-m", "m1",
                          "-p", "no:cacheprovider"], cwd=learner, capture_output=True, text=True,
                         timeout=300)
    # the learner's own stub speaks (one line per task, no traceback)
    assert "\nM1.1 not started: implement total in src/toy/stats.py" in out.stdout, out.stdout
    assert "Traceback" not in out.stdout and "def total" not in out.stdout


def test_nested_notebooks_are_stubbed_and_leaks_in_cells_are_found(course, tmp_path):
    from ftlab.course.verify import Report

    (course / "notebooks/extra").mkdir()
    shutil.copy(course / "notebooks/01_data_prep.ipynb", course / "notebooks/extra/more.ipynb")
    nb = json.loads((course / "notebooks/extra/more.ipynb").read_text())
    nb["cells"][1]["source"] = [line.replace("M1.3", "M1.4") for line in nb["cells"][1]["source"]]
    (course / "notebooks/extra/more.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "out"
    release(course, out)
    assert "total([1.0, 2.0, 3.0]) * 10" not in (out / "notebooks/extra/more.ipynb").read_text()
    shutil.copy(course / "notebooks/extra/more.ipynb", out / "notebooks/leaked.ipynb")
    report = Report()
    _check_leaks(course, out, find_regions(course), report)
    assert report.problems == ["(d) solution text in notebooks/leaked.ipynb: "
                               "'answer = total([1.0, 2.0, 3.0]) * 10'"]


def test_grade_records_results_even_without_the_conftest_plugin(course, tmp_path):
    (course / "milestones/conftest.py").unlink()
    grades = grade(course, tmp_path)
    assert grades["points"] == grades["max_points"] == 4


def test_grade_says_which_milestone_it_grades_while_it_runs(course, tmp_path):
    lines: list[str] = []
    grade(course, tmp_path, print_fn=lines.append)
    assert lines[0] == "grading m1_toy (1/2) ..." and lines[2] == "grading m2_toy (2/2) ..."
    assert lines[1].startswith("  m1_toy: 2/2 tasks pass (") and len(lines) == 4, lines


def test_grades_keep_the_likely_cause(course, tmp_path):
    path = course / "src/toy/stats.py"
    path.write_text(path.read_text().replace("for x in xs:", "for x in xs[1:]:"))
    grades = grade(course, tmp_path)
    task = grades["milestones"]["m1"]["tasks"]["M1.1"]
    assert task["likely_cause"] == "a value is skipped in the sum (check the loop bounds)"
    assert "(likely cause: a value is skipped" in (tmp_path / "grades.md").read_text()


def test_wrong_answer_variants_follow_the_reference():
    from ftlab.course.wrong import solution, variant

    assert solution(FIXTURE, "M1.2") == "return total(xs) / len(xs)\n"
    assert variant(FIXTURE, "M1.2", "/", "//") == "return total(xs) // len(xs)\n"
    with pytest.raises(ValueError, match="not in the reference solution"):
        variant(FIXTURE, "M1.2", "sum(", "max(")
    with pytest.raises(ValueError, match="no solution region"):
        solution(FIXTURE, "M4.1")
    from ftlab.course.wrong import variants

    assert variants(FIXTURE, "M1.2", ("/", "//"), ("len", "max")) == "return total(xs) // max(xs)\n"
    with pytest.raises(ValueError, match="'sum\\(' is not in the reference solution"):
        variants(FIXTURE, "M1.2", ("/", "//"), ("sum(", "max("))


# ---------------------------------------------------------------- threads

def test_threads_are_shared_out_among_processes_that_run_side_by_side(monkeypatch):
    from ftlab.hardware import threads_per_process

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [threads_per_process(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit setting wins
    assert threads_per_process(2) == 3


def test_fork_server_children_run_with_the_threads_they_were_given(tmp_path):
    """verify's side-by-side suites each get their share of the cores: the thread count is
    fixed when the server imports torch, and every forked child keeps it."""
    from ftlab.course.forkserver import ForkServer

    (tmp_path / "test_threads.py").write_text(
        "import torch\n\ndef test_threads():\n    assert torch.get_num_threads() == 2\n")
    with ForkServer(threads=2) as server:  # not this worker's 1 (conftest): it must be set
        code = server.run(tmp_path, [], {"PATH": "/usr/bin:/bin"}, ["-q", "-p",
                          "no:cacheprovider", "test_threads.py"], tmp_path / "out.txt", 120)
    assert code == 0, (tmp_path / "out.txt").read_text()


def test_a_setup_cell_that_goes_on_is_split_after_the_call():
    """The Run All guard covers the cells after the one that set it up: the learner edition
    moves the setup cell's own work into a cell of its own, outputs with it."""
    from ftlab.course.release import split_after_setup

    cell = {"cell_type": "code", "id": "a1", "metadata": {}, "outputs": [{"text": "x"}],
            "execution_count": 3,
            "source": ["%autoreload 2\n", "from m import setup_notebook\n",
                       "setup_notebook()  # guard\n", "import torch\n", "data = load()\n"]}
    first, second = split_after_setup(cell)
    assert "".join(first["source"]).endswith("setup_notebook()  # guard\n")
    assert first["outputs"] == [] and second["outputs"] == [{"text": "x"}]
    assert second["source"] == ["import torch\n", "data = load()\n"] and second["id"] == "a1-after-setup"
    alone = {**cell, "source": ["from m import setup_notebook\n", "setup_notebook()\n"]}
    assert split_after_setup(alone) == [alone]
    plain = {**cell, "source": ["x = 1\n"]}
    assert split_after_setup(plain) == [plain]
