"""The wheel works outside a checkout: it carries every module, the tasks/ data and the toy
weights, installs no top-level `baselines` package, and `clbench run` works from it.

The wheel is built from a copy of the sources (an in-tree build would write build/ and
*.egg-info into the checkout, which other runs may be using) and installed with --no-deps
into a fresh venv; the current venv's site-packages goes on PYTHONPATH so torch and friends
are found, while its editable-install finder (.pth files are not processed for PYTHONPATH
entries) is not, so `cl_bench` must come from the fresh venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# What the build reads: the project metadata and the folders that ship.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "cl_bench", "baselines", "tasks")
TIMEOUT_S = 300

pytestmark = pytest.mark.integration


def _files(folder: Path, pattern: str = "*") -> list[Path]:
    """Files under folder, relative to it, without bytecode caches."""
    return sorted(
        p.relative_to(folder)
        for p in folder.rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def _host_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_pyproject_lists_every_package_folder() -> None:
    """[tool.setuptools] packages names each folder of cl_bench/ with an __init__.py."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {
        ".".join(("cl_bench", *p.parent.relative_to(ROOT / "cl_bench").parts))
        for p in (ROOT / "cl_bench").rglob("__init__.py")
    }
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {"cl_bench_baselines", "cl_bench.tasks"} <= listed
    assert config["package-dir"] == {"cl_bench_baselines": "baselines", "cl_bench.tasks": "tasks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-q", "-w", str(dist), str(src)]
    )
    (built,) = dist.glob("cl_bench-*.whl")
    return built


def test_wheel_carries_modules_tasks_and_weights_and_no_top_level_baselines(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"cl_bench/{p.as_posix()}" for p in _files(ROOT / "cl_bench", "*.py")}
    expected |= {f"cl_bench_baselines/{p.as_posix()}" for p in _files(ROOT / "baselines", "*.py")}
    expected |= {f"cl_bench/tasks/{p.as_posix()}" for p in _files(ROOT / "tasks")}
    toy = ROOT / "cl_bench" / "data" / "toy"
    weights = [p for p in _files(toy) if p.suffix != ".py"]  # toy-clip.json, weights/*
    assert any(p.suffix == ".safetensors" for p in weights)
    expected |= {f"cl_bench/data/toy/{p.as_posix()}" for p in weights}
    assert sorted(expected - names) == []
    assert not any(n.startswith("baselines/") for n in names), "a top-level `baselines` package"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert set(zipfile.ZipFile(wheel).read(top_level).decode().split()) == {
        "cl_bench",
        "cl_bench_baselines",
    }


def test_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    host = _host_site_packages()
    if any((Path(p) / "cl_bench").is_dir() for p in host):
        pytest.skip("cl_bench is installed non-editable here; PYTHONPATH would shadow the wheel")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    _run([str(bindir / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    assert (bindir / "clbench").is_file(), "the console script `clbench` was not installed"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CLBENCH_TASKS_DIR", "PYTHONHOME")}
    env |= {"PYTHONPATH": os.pathsep.join(host), "OMP_NUM_THREADS": "1"}
    code = "import cl_bench, cl_bench.engine.settings as s\nprint(cl_bench.__file__)\nprint(s.tasks_dir())"
    where = _run([str(python), "-c", code], cwd=elsewhere, env=env).stdout.split("\n")
    module, tasks = Path(where[0]).resolve(), Path(where[1]).resolve()
    assert module.is_relative_to(venv.resolve()), f"cl_bench imported from {module}"
    assert tasks.is_relative_to(venv.resolve()) and tasks.name == "tasks", tasks

    out = tmp_path / "run"
    cmd = [str(python), "-m", "cl_bench.cli", "run", "--setting", "xtail", "--learner", "zeroshot"]
    cmd += ["--max-tasks", "2", "--eval-limit", "32", "--threads", "1", "--out", str(out)]
    _run(cmd, cwd=elsewhere, env=env)
    assert (out / "accuracy.parquet").is_file()
