"""The ``ftlab`` command.

Every user-facing failure is an :class:`~ftlab.errors.FtlabError`, printed as
``ftlab: error: ...`` (one line per problem) with exit status 2, never a traceback. A
write the disk refuses (full, over a file-size limit, read-only) is one such line naming
the file. Ctrl-C or SIGTERM ends with one line saying how to resume and exit status 130.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path

from ftlab import __version__
from ftlab.course.tasks import mentioned_tasks
from ftlab.errors import FtlabError, Interrupted


def _cmd_demo(args: argparse.Namespace) -> int:
    from ftlab.demo import run_demo

    run_demo()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ftlab.pipeline.cli import run_command

    return run_command(args.config, dry_run=args.dry_run, run_dir=args.run_dir, seed=args.seed,
                       progress=not args.no_progress, nproc=args.nproc)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ftlab.doctor import render, report

    print(render(report()))
    return 0


def _cmd_world_build(args: argparse.Namespace) -> int:
    from ftlab.world.build import build_world

    written = build_world(args.out, seed=args.seed)
    print(f"wrote {len(written)} files (with world/ and midtrain/manifest.json) to {args.out} "
          f"(seed {args.seed})")
    return 0


def _cmd_world_verify(args: argparse.Namespace) -> int:
    from ftlab.world.build import diff_world

    problems = diff_world(args.data, seed=args.seed)
    for p in problems:
        print(p)
    print("world: " + ("byte-identical to a fresh build" if not problems
                       else f"{len(problems)} file(s) differ from a fresh build"))
    return 1 if problems else 0


def _cmd_base_build(args: argparse.Namespace) -> int:
    from ftlab.models.build import build_base_model
    from ftlab.models.pretrain import PretrainRecipe

    from ftlab.models.architecture import PRESETS

    recipe = PretrainRecipe() if args.steps is None else PretrainRecipe(steps=args.steps)
    out = args.out or args.data / f"{args.preset}_model"
    prov = build_base_model(args.data, out, recipe, PRESETS[args.preset],
                            tokenizer_from=args.data / "base_model" if args.preset == "student"
                            else None)
    print(f"{args.preset} model written to {out}: {prov['parameters']:,} parameters, "
          "validation perplexity "
          f"{prov['validation_perplexity']:.3f}, cloze accuracy (held-out facts) "
          f"{prov['cloze_accuracy_heldout']:.1%}, chat exact match before SFT "
          f"{prov['chat_exact_match_heldout']:.1%}, {prov['wall_time_s']:.0f} s")
    return 0


def _cmd_base_verify(args: argparse.Namespace) -> int:
    from ftlab.models.verify import verify_base_model

    problems = verify_base_model(measure=args.measure, print_fn=print, preset=args.preset)
    print(f"{args.preset} model: " + ("verifies" if not problems
                                      else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from ftlab.pipeline.cli import check_command

    return check_command(args.file)


def _cmd_config_defaults(args: argparse.Namespace) -> int:
    from ftlab.config import defaults_table

    print(defaults_table())
    return 0


def _cmd_course_release(args: argparse.Namespace) -> int:
    from ftlab.course.release import release

    regions = release(args.project, args.out, force=args.force)
    print(f"learner edition written to {args.out}: {len(regions)} solution regions stubbed")
    return 0


def _cmd_course_grade(args: argparse.Namespace) -> int:
    from ftlab.course.grade import grade, render_markdown

    grades = grade(args.project, args.out, print_fn=lambda line: print(line, flush=True))
    print(render_markdown(grades), end="")
    print(f"written: {(args.out or args.project) / 'grades.md'} and grades.json")
    return 0


def _cmd_course_verify(args: argparse.Namespace) -> int:
    from ftlab.course.verify import verify

    tasks = set(args.tasks.split(",")) if args.tasks else None
    report = verify(args.project, jobs=args.jobs, tasks=tasks, wrong_file=args.wrong)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print("course verify: " + ("OK" if report.ok else f"{len(report.problems)} problem(s)"))
    return 0 if report.ok else 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number such as 2, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``ftlab`` subcommand."""
    from ftlab.world.build import DEFAULT_SEED

    parser = argparse.ArgumentParser(
        prog="ftlab",
        description="Learn LLM fine-tuning by building it; fine-tune offline with what you built.",
    )
    parser.add_argument("--version", action="version", version=f"ftlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="meet the embedded base model: completions, chat, perplexity")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("run", help="the main job: run a pipeline config (default: the capstone, "
                                   "SFT -> DPO -> merge -> export on the embedded model)")
    p.add_argument("config", type=Path, nargs="?", default=None, metavar="CONFIG",
                   help="YAML run config (default: configs/capstone.yaml)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and print the plan; load and train nothing")
    p.add_argument("--run-dir", type=Path, default=None, help="override the config's run_dir")
    p.add_argument("--seed", type=int, default=None,
                   help="override the run seed and every stage's train.seed and data.seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                   help="train with N data-parallel processes on this machine (one per GPU; "
                        "on CPU the cores are shared); launches torchrun for you (default: 1)")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("doctor", help="versions, CPU/CUDA, embedded model check, known traps")
    p.set_defaults(func=_cmd_doctor)

    world = sub.add_parser("world", help="the synthetic world's data files").add_subparsers(
        dest="world_command", required=True, metavar="ACTION")
    p = world.add_parser("build", help="write corpus, SFT, preference and eval files")
    p.add_argument("--out", type=Path, default=Path("data"), help="data folder (default: data)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed (default: 0)")
    p.set_defaults(func=_cmd_world_build)
    p = world.add_parser("verify", help="check data/ is byte-identical to a fresh build")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.set_defaults(func=_cmd_world_verify)

    base = sub.add_parser("base-model", help="the embedded tiny base model").add_subparsers(
        dest="base_command", required=True, metavar="ACTION")
    p = base.add_parser("build", help="train tokenizer, pretrain, measure, save (base: ~7 min "
                                      "on 2 cores; student: ~4 min on 1 thread)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--preset", choices=["base", "student"], default="base",
                   help="base: the embedded base model; student: the distillation track's "
                        "smaller model, with the base model's tokenizer")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: data/base_model or data/student_model)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: the recipe's, which built the committed model)")
    p.set_defaults(func=_cmd_base_build)
    p = base.add_parser("verify", help="check hashes and provenance of the committed model")
    p.add_argument("--measure", action="store_true",
                   help="also recompute validation loss and compare with provenance (within 1%%)")
    p.add_argument("--preset", choices=["base", "student"], default="base",
                   help="which embedded model: base (data/base_model) or student (data/student_model)")
    p.set_defaults(func=_cmd_base_verify)

    config = sub.add_parser("config", help="run configs").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    p = config.add_parser("check", help="validate a YAML run config: everything `ftlab run "
                                        "--dry-run` checks (keys, types, stage order, model)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=_cmd_config_check)
    p = config.add_parser("defaults", help="print every default as a markdown table")
    p.set_defaults(func=_cmd_config_defaults)
    course = sub.add_parser(
        "course", help="learner edition, grading, grader checks",
        description="The course's tools: write the learner edition, grade a learner's project, "
                    "and prove (maintainers, CI) that every task's checks grade it."
    ).add_subparsers(dest="course_command", required=True, metavar="ACTION")
    p = course.add_parser(
        "release", help="write the learner edition (regions stubbed) into OUT",
        description="Write the learner edition of the course project into OUT: a complete "
                    "project whose solution regions are stubs naming the task, file and function "
                    "to write; notebooks with outputs cleared (each kept beside its cell as an "
                    "'Expected output' block); milestones, data, configs, pyproject and a "
                    "learner README that starts with the path through the course.")
    p.add_argument("out", type=Path, metavar="OUT",
                   help="folder to write the learner edition into (created; must be empty "
                        "unless --force, and outside the project)")
    p.add_argument("--project", type=Path, default=Path("."), help="reference project (default: .)")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty OUT")
    p.set_defaults(func=_cmd_course_release)
    p = course.add_parser(
        "grade", help="run the milestone suites; write grades.md and grades.json",
        description="Run every milestone's checks on PROJECT (a learner edition or the "
                    "reference) and write grades.md and grades.json: one row per task with "
                    "pass, fail, not started or blocked by another task, its points and the "
                    "first failing check with its likely cause. Exits 0 when tasks fail; 2 "
                    "when the checks cannot run.")
    p.add_argument("project", type=Path, nargs="?", default=Path("."), metavar="PROJECT",
                   help="the project to grade (default: the current folder)")
    p.add_argument("--out", type=Path, default=None, help="folder for the grade files (default: PROJECT)")
    p.set_defaults(func=_cmd_course_grade)
    p = course.add_parser(
        "verify", help="prove the graders grade: reference, learner edition, mutants, leaks, "
                       "wrong answers",
        description="Prove the checks grade: the reference passes every check; the learner "
                    "edition fails each task on its own stub; each region stubbed alone and "
                    "each catalogued wrong answer is caught by a check of its task with a "
                    "teaching message; no solution text leaks; the task dependencies the "
                    "learner README states are the ones a traced run shows. Exits 1 on any "
                    "problem.")
    p.add_argument("--project", type=Path, default=Path("."),
                   help="reference project (default: .)")
    p.add_argument("--jobs", type=_positive_int, default=2, help="mutants run at a time (default: 2)")
    p.add_argument("--tasks", default=None, metavar="M1.5,M2.2",
                   help="only the mutants (stub and wrong answers) of these tasks")
    p.add_argument("--wrong", type=Path, default=None, metavar="FILE.py",
                   help="check the WRONG_ANSWERS of this file instead of the project's "
                        "catalogue and the stubs (e.g. wrong answers kept outside the project)")
    p.set_defaults(func=_cmd_course_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ftlab`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    speaks = os.environ.get("RANK", "0") == "0"  # of several processes, rank 0 speaks
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args)
    except (FtlabError, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt):
            e = Interrupted("interrupted; completed stages and saved checkpoints are kept: "
                            "run the same command again to resume")
        if speaks:
            for line in str(e).splitlines():
                print(f"ftlab: error: {line}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stderr.close()
        return 0
    except OSError as e:
        if e.errno not in REFUSED_WRITES:
            raise
        if speaks:
            print(f"ftlab: error: cannot write {e.filename or 'a file'}: {e.strerror}; free "
                  "space (or raise the limit) and run the same command again: completed "
                  "stages and checkpoints are kept", file=sys.stderr)
        return 2
    except NotImplementedError as e:  # a learner edition's task stub: say which, no traceback
        if not mentioned_tasks(str(e)):
            raise
        print(f"ftlab: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


REFUSED_WRITES = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
"""OS errors of a write the disk refuses: reported as one line, not a traceback."""


def _terminate(signum, frame) -> None:
    """SIGTERM outside training ends like Ctrl-C (training stops at its next step)."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
