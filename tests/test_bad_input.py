"""Bad input everywhere gets one line naming the problem and the fix, exit code 2, no traceback.

Every case here is a row of the table in docs/reliability.md, and the test checks that the
message there is the message the CLI prints (paths of the test's temp dir read `<tmp>`).
Regenerate the table after a deliberate wording change with

    python tests/test_bad_input.py > /tmp/table.md   # then paste it into docs/reliability.md

All of these fail before any model is built, so they run in-process through `cli.main`;
a few subprocess checks prove the real `clbench` command behaves the same (and `--debug`
shows the traceback).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cl_bench import cli
from cl_bench.engine.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"

NOT_A_LEARNER = "class NotALearner:\n    pass\n"
IMPORT_ERROR = "import package_that_does_not_exist\n"
SYNTAX_ERROR = "def broken(:\n"


@dataclass
class Case:
    id: str
    what: str  # the bad input, in words (first column of the table)
    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text, under <tmp>
    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)  # tasks file: (old, new)


def _manifest(status: str, **config) -> str:
    cfg = RunConfig(out="<tmp>/run", **config)
    return json.dumps(
        {"status": status, "config": cfg.to_dict(), "config_hash": cfg.hash(), "tasks": []}
    )


CASES = [
    Case("setting", "unknown setting", ["run", "--setting", "xtial"]),
    Case("learner", "misspelt learner name", ["run", "--learner", "fintune"]),
    Case("world", "unknown world", ["run", "--world", "mars"]),
    Case("device", "unknown device", ["run", "--device", "tpu"]),
    Case("augment", "unknown augmentation", ["run", "--augment", "flip"]),
    Case("holdout", "unknown hold-out dataset", ["run", "--holdout", "imagenet,cifar10"]),
    Case("union", "unknown union classifier", ["run", "--union-classifier", "coop"]),
    Case("log", "unknown tracker", ["run", "--log", "mlflow"]),
    Case(
        "proximal",
        "unknown drslora proximal step",
        ["run", "--learner", "drslora", "--set", "proximal=hard"],
    ),
    Case("iterations-zero", "zero iterations", ["run", "--iterations", "0"]),
    Case("iterations-text", "non-integer flag value", ["run", "--iterations", "many"]),
    Case("seed", "negative seed", ["run", "--seed", "-1"]),
    Case("batch-size", "zero batch size", ["run", "--batch-size", "0"]),
    Case("max-tasks", "zero --max-tasks", ["run", "--max-tasks", "0"]),
    Case("eval-limit", "negative --eval-limit", ["run", "--eval-limit", "-5"]),
    Case("shots", "negative shots", ["run", "--shots", "-1"]),
    Case("flag", "misspelt flag", ["run", "--iters", "5"]),
    Case("order-mtil", "unknown MTIL order", ["run", "--setting", "mtil", "--order", "III"]),
    Case("order-xtail", "an order for a single-order setting", ["run", "--order", "II"]),
    Case("model-toy", "--model with the toy world", ["run", "--model", "ViT-B-16"]),
    Case("set-form", "--set without =", ["run", "--learner", "finetune", "--set", "lr"]),
    Case("set-key", "--set of an unknown key", ["run", "--learner", "finetune", "--set", "rate=1"]),
    Case(
        "set-type", "--set of the wrong type", ["run", "--learner", "finetune", "--set", "lr=abc"]
    ),
    Case(
        "set-zeroshot", "--set for a learner without hyperparameters", ["run", "--set", "lr=1e-4"]
    ),
    Case(
        "config-missing", "--config file that does not exist", ["run", "--config", "<tmp>/no.toml"]
    ),
    Case(
        "config-toml",
        "--config file with broken TOML",
        ["run", "--config", "<tmp>/c.toml"],
        {"c.toml": "seed = \n"},
    ),
    Case(
        "config-key",
        "--config file with an unknown key",
        ["run", "--config", "<tmp>/c.toml"],
        {"c.toml": "iters = 5\n"},
    ),
    Case(
        "config-type",
        "--config value of the wrong type",
        ["run", "--config", "<tmp>/c.toml"],
        {"c.toml": 'seed = "one"\n'},
    ),
    Case(
        "config-float",
        "--config float where an integer belongs",
        ["run", "--config", "<tmp>/c.toml"],
        {"c.toml": "iterations = 2.5\n"},
    ),
    Case(
        "config-set-table",
        "--config whose `set` is not a table",
        ["run", "--config", "<tmp>/c.toml"],
        {"c.toml": "set = 3\n"},
    ),
    Case(
        "config-set-type",
        "--config [set] value of the wrong type",
        ["run", "--config", "<tmp>/c.toml"],
        {"c.toml": 'learner = "finetune"\n[set]\nlr = "fast"\n'},
    ),
    Case("learner-module", "learner module that does not exist", ["run", "--learner", "nosuch:X"]),
    Case("learner-file", "learner file that does not exist", ["run", "--learner", "<tmp>/no.py:X"]),
    Case(
        "learner-import",
        "learner file whose imports fail",
        ["run", "--learner", "<tmp>/mine.py:Mine"],
        {"mine.py": IMPORT_ERROR},
    ),
    Case(
        "learner-syntax",
        "learner file with a syntax error",
        ["run", "--learner", "<tmp>/mine.py:Mine"],
        {"mine.py": SYNTAX_ERROR},
    ),
    Case(
        "learner-class",
        "learner file without that class",
        ["run", "--learner", "<tmp>/mine.py:Mine"],
        {"mine.py": NOT_A_LEARNER},
    ),
    Case(
        "not-a-learner",
        "learner class that is not a Learner",
        ["run", "--learner", "<tmp>/mine.py:NotALearner"],
        {"mine.py": NOT_A_LEARNER},
    ),
    Case("learner-target", "learner target without a class", ["run", "--learner", "mod:"]),
    Case(
        "resume-nothing",
        "--resume with nothing to resume",
        ["run", "--out", "<tmp>/run", "--resume"],
    ),
    Case(
        "finished",
        "a finished run dir without --resume",
        ["run", "--out", "<tmp>/run"],
        {"run/manifest.json": _manifest("finished")},
    ),
    Case(
        "unfinished",
        "an interrupted run dir without --resume",
        ["run", "--out", "<tmp>/run"],
        {"run/manifest.json": _manifest("interrupted")},
    ),
    Case(
        "resume-finished",
        "--resume of a finished run",
        ["run", "--out", "<tmp>/run", "--resume"],
        {"run/manifest.json": _manifest("finished")},
    ),
    Case(
        "resume-config",
        "--resume with a different config",
        ["run", "--out", "<tmp>/run", "--resume", "--iterations", "50", "--learner", "finetune"],
        {"run/manifest.json": _manifest("interrupted", learner="finetune", iterations=40)},
    ),
    Case(
        "resume-seed",
        "--resume --force with another seed",
        ["run", "--out", "<tmp>/run", "--resume", "--force", "--seed", "1"],
        {"run/manifest.json": _manifest("interrupted")},
    ),
    Case(
        "out-file",
        "--out that is a file",
        ["run", "--out", "<tmp>/file"],
        {"file": "not a directory\n"},
    ),
    Case(
        "out-unwritable",
        "--out where no directory can be made",
        ["run", "--out", "/proc/no/run"],
    ),
    Case(
        "manifest-corrupt",
        "corrupt manifest.json in the run dir",
        ["run", "--out", "<tmp>/run", "--resume"],
        {"run/manifest.json": '{"status": "runn'},
    ),
    Case(
        "setting-dataset",
        "unknown dataset in a setting file",
        ["run", "--setting", "xtail"],
        tasks={"settings/xtail.toml": ('"dtd", "eurosat"', '"dtd", "eurosat_rgb"')},
    ),
    Case(
        "setting-key",
        "setting file with an unknown key",
        ["run", "--setting", "xtail"],
        tasks={"settings/xtail.toml": ("split_seed = 42", "split_seed = 42\nsplit_sed = 1")},
    ),
    Case(
        "setting-missing",
        "setting file missing a key",
        ["run", "--setting", "xtail"],
        tasks={"settings/xtail.toml": ("split_seed = 42", "")},
    ),
    Case(
        "setting-toml",
        "setting file with broken TOML",
        ["run", "--setting", "xtail"],
        tasks={"settings/xtail.toml": ("split_seed = 42", "split_seed = ")},
    ),
    Case(
        "task-file",
        "dataset task file missing keys",
        ["list", "datasets"],
        tasks={"datasets/dtd.toml": ("templates = [", "templatez = [")},
    ),
    Case(
        "task-toml",
        "dataset task file with broken TOML",
        ["list", "datasets"],
        tasks={"datasets/dtd.toml": ('name = "dtd"', 'name = "dtd')},
    ),
    Case("leaderboard-dir", "leaderboard of a missing folder", ["leaderboard", "<tmp>/nothing"]),
]


def _prepare(case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch | None) -> list[str]:
    for rel, text in case.files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("<tmp>", str(tmp)))
    if case.tasks:
        tasks = tmp / "tasks"
        shutil.copytree(ROOT / "tasks", tasks)
        for rel, (old, new) in case.tasks.items():
            text = (tasks / rel).read_text()
            assert old in text, (rel, old)
            (tasks / rel).write_text(text.replace(old, new, 1))
        if monkeypatch is not None:
            monkeypatch.setenv("CLBENCH_TASKS_DIR", str(tasks))
    return [a.replace("<tmp>", str(tmp)) for a in case.argv]


def _message(stderr: str, tmp: Path) -> str:
    return stderr.strip().replace(str(tmp), "<tmp>")


# Messages that list things other modules add (learners, config keys, flags) are documented
# up to this marker and end in " …"; the test compares that prefix.
VOLATILE_TAIL = {"learner": " Valid:", "config-key": "; valid keys:", "flag": " (Possible"}


def _matches(documented_msg: str | None, msg: str) -> bool:
    if documented_msg is not None and documented_msg.endswith(" …"):
        return msg.startswith(documented_msg[: -len(" …")])
    return documented_msg == msg


def _documentable(case_id: str, msg: str) -> str:
    marker = VOLATILE_TAIL.get(case_id)
    return msg[: msg.index(marker) + len(marker)] + " …" if marker and marker in msg else msg


def documented() -> dict[str, str]:
    """case id -> message, from the table in docs/reliability.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`id`":
            rows[cells[0].strip("`")] = _uncode(cells[3])
    return rows


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_documented(case, tmp_path, monkeypatch, capsys) -> None:
    argv = _prepare(case, tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)  # default run dirs (results/runs/...) land in the temp dir
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert _matches(documented().get(case.id), _message(err, tmp_path)), (
        f"docs/reliability.md row `{case.id}` does not match; regenerate the table"
    )


def test_the_table_has_every_case_and_at_least_20_rows() -> None:
    assert sorted(documented()) == sorted(c.id for c in CASES)
    assert len(CASES) >= 20


def _clbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = "from cl_bench.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_real_command_exits_2_without_traceback_and_debug_shows_it(tmp_path: Path) -> None:
    plain = _clbench("run", "--learner", "finetune", "--set", "lr=abc", cwd=tmp_path)
    assert plain.returncode == 2
    assert plain.stderr == "error: --set lr=abc: expected float\n"
    debug = _clbench("run", "--learner", "finetune", "--set", "lr=abc", "--debug", cwd=tmp_path)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "error: --set lr=abc: expected float"


def _code(text: str) -> str:
    """A markdown code span (double backticks when the text holds one), pipes escaped."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _uncode(cell: str) -> str:
    cell = cell[3:-3] if cell.startswith("`` ") else cell[1:-1]
    return cell.replace("\\|", "|")


def markdown_table() -> str:
    """The docs table, generated from what `cli.main` prints for each case."""
    import contextlib
    import io
    import os
    import tempfile

    out = ["| `id` | bad input | command | message |", "|---|---|---|---|"]
    home = os.getcwd()
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name).resolve()
            argv = _prepare(case, tmp, None)
            old_tasks = os.environ.pop("CLBENCH_TASKS_DIR", None)
            if case.tasks:
                os.environ["CLBENCH_TASKS_DIR"] = str(tmp / "tasks")
            err = io.StringIO()
            try:
                os.chdir(tmp)
                with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
                    cli.main(argv)
            finally:
                os.chdir(home)
                os.environ.pop("CLBENCH_TASKS_DIR", None)
                if old_tasks is not None:
                    os.environ["CLBENCH_TASKS_DIR"] = old_tasks
            command = " ".join(["clbench", *case.argv])
            msg = _documentable(case.id, _message(err.getvalue(), tmp))
            out.append(f"| `{case.id}` | {case.what} | {_code(command)} | {_code(msg)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
