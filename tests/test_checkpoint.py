"""Checkpoints hold data only (no pickle), are hash-checked, and refuse anything else.

A run directory may come from someone else, so loading one must never run code: the RNG
states are JSON integer lists, every checkpoint file's sha256 is checked, every field is
validated, and a refused resume is one line (exit 2) that keeps the completed rows.
`pickle` is imported here only to build the payloads that must be refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fakeworld import FakeWorld

from cl_bench import cli
from cl_bench.engine import checkpoint as ckpt
from cl_bench.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def _draws() -> tuple:
    return (
        [random.random() for _ in range(5)] + [random.gauss(0, 1)],
        np.random.uniform(size=5).tolist() + [float(np.random.standard_normal())],
        torch.rand(5).tolist() + torch.randn(3).tolist(),
    )


def _save(run_dir: Path, state=None, completed: int = 1) -> None:
    state = state or {
        "model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)},
        "step": 7,
        "pair": (torch.ones(2), "x"),
        "optimizer": {"state": {0: {"m": torch.full((2,), 0.5)}}, "lr": 1e-3},
    }
    ckpt.save_checkpoint(run_dir, state, completed, "cfg-hash")


def _meta_path(run_dir: Path) -> Path:
    return run_dir / ckpt.CHECKPOINT_DIR / ckpt.META_FILE


def _forge(run_dir: Path, edit) -> None:
    """Edit meta.json's body and write it back with a recomputed, valid sha256 (what a
    hostile author of the run dir could do): the field checks must still refuse it."""
    path = _meta_path(run_dir)
    meta = json.loads(path.read_text())
    meta.pop("sha256")
    edit(meta)
    path.write_text(ckpt._meta_text(meta))


class _TouchFile:
    """Unpickling this runs `touch <path>`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _payload(path: Path) -> str:
    return base64.b64encode(pickle.dumps(_TouchFile(path))).decode()


def test_rng_round_trip_through_the_checkpoint_files_is_exact(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian in python's state (gauss_next) ...
    np.random.standard_normal()  # ... and in numpy's (has_gauss / cached_gaussian)
    _save(tmp_path)
    want = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    state, completed, config_hash, rng = ckpt.load_checkpoint(tmp_path)
    ckpt.set_rng_state(rng)
    assert _draws() == want
    assert (completed, config_hash) == (1, "cfg-hash")
    assert torch.equal(state["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert state["step"] == 7 and state["optimizer"]["state"][0]["m"].tolist() == [0.5, 0.5]
    assert isinstance(state["pair"], tuple) and state["pair"][1] == "x"
    meta = json.loads(_meta_path(tmp_path).read_text())
    assert len(meta["rng"]["python"]["state"]) == 625 and len(meta["rng"]["numpy"]["key"]) == 624
    assert meta["rng"]["python"]["gauss_next"] is not None and meta["rng"]["numpy"]["has_gauss"]


def test_every_checkpoint_file_is_hashed(tmp_path: Path) -> None:
    _save(tmp_path)
    path = _meta_path(tmp_path)
    meta = json.loads(path.read_text())
    tensors = path.parent / meta["tensors_file"]
    assert meta["tensors_sha256"] == hashlib.sha256(tensors.read_bytes()).hexdigest()
    body = {k: v for k, v in meta.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert meta["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_a_tampered_tensors_file_is_refused(tmp_path: Path) -> None:
    _save(tmp_path)
    tensors = tmp_path / "checkpoint" / "tensors-001.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0x01  # one bit of a weight
    tensors.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"tensors-001.safetensors is corrupt .*hash mismatch"):
        ckpt.load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace('"completed_tasks":1', '"completed_tasks":2'),
        lambda t: t.replace('"step",7', '"step",8'),
        lambda t: t.replace('"pos":', '"pos":1', 1),  # numpy's rng position
        lambda t: t.replace('"state":[', '"state":[1', 1),  # python's rng words
        lambda t: t.replace(",", ", ", 1),  # even a byte of whitespace
    ],
    ids=["completed_tasks", "structure", "numpy-rng", "python-rng", "whitespace"],
)
def test_an_edited_meta_json_is_refused(tmp_path: Path, edit) -> None:
    _save(tmp_path)
    path = _meta_path(tmp_path)
    text = path.read_text()
    assert edit(text) != text
    path.write_text(edit(text))
    with pytest.raises(UserError, match=r"meta.json has been altered or is corrupt") as err:
        ckpt.load_checkpoint(tmp_path)
    assert "\n" not in str(err.value) and "--force" in str(err.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["rng"].update(torch=m["rng"]["torch"][:-1]), "rng.torch has 5055 entries"),
        (lambda m: m["rng"]["torch"].__setitem__(0, 256), r"rng.torch holds values"),
        (lambda m: m["rng"]["numpy"].update(key=[0.5] * 624), r"rng.numpy.key holds"),
        (lambda m: m["rng"]["numpy"].update(algorithm="PCG64"), "not 'MT19937'"),
        (lambda m: m["rng"]["python"].update(gauss_next="x"), "gauss_next"),
        (lambda m: m["rng"].pop("numpy"), r"missing keys \['numpy'\]"),
        (lambda m: m.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda m: m.update(completed_tasks=True), "completed_tasks"),
        (lambda m: m.update(tensors_file="../../x.safetensors"), "tensors_file"),
        (
            lambda m: m.update(structure={"__tensor__": "nowhere"}),
            r"tensor references missing .*\['nowhere'\]",
        ),
        (lambda m: m.update(structure={"__object__": "os.system"}), "unknown entry"),
    ],
    ids=[
        "torch-length",
        "torch-byte",
        "numpy-floats",
        "numpy-algorithm",
        "python-gauss",
        "no-numpy",
        "extra-key",
        "bool-count",
        "path",
        "missing-tensor",
        "unknown-entry",
    ],
)
def test_a_forged_meta_json_with_a_valid_hash_is_still_validated(
    tmp_path: Path, edit, message
) -> None:
    _save(tmp_path)
    _forge(tmp_path, edit)
    with pytest.raises(UserError, match=r"meta.json is invalid \(.*" + message):
        ckpt.load_checkpoint(tmp_path)


def test_a_pickle_payload_in_the_rng_field_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # the old format (pickled base64 RNG states, no format or sha256 keys)
    old = tmp_path / "old"
    _save(old)
    meta = json.loads(_meta_path(old).read_text())
    for key in ("format", "sha256"):
        meta.pop(key)
    meta["rng"] = {k: _payload(marker) for k in ("python", "numpy", "torch")}
    _meta_path(old).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"old format with pickled RNG states") as err:
        ckpt.load_checkpoint(old)
    assert f"delete {old / 'checkpoint'}" in str(err.value)
    # the new format, the payload in place of the python state, with a recomputed hash
    new = tmp_path / "new"
    _save(new)
    _forge(new, lambda m: m["rng"].update(python=_payload(marker)))
    with pytest.raises(UserError, match=r"rng.python is not an object"):
        ckpt.load_checkpoint(new)
    with pytest.raises(UserError, match=r"invalid RNG state"):
        ckpt.set_rng_state({"python": _payload(marker), "numpy": _payload(marker)})
    assert not marker.exists()


def test_the_package_imports_no_pickle() -> None:
    for folder in ("cl_bench", "baselines"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split("#")[0].split()
                assert not (words[:1] in (["import"], ["from"]) and "pickle" in words[1:2]), path


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_cli_resume_of_a_tampered_checkpoint_is_one_line_exit_2_and_keeps_rows(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from cl_bench_baselines.finetune import Finetune

    monkeypatch.setattr("cl_bench.engine.loop.get_world", lambda cfg: FakeWorld())
    out = tmp_path / "run"
    argv = ["run", "--learner", "finetune", "--iterations", "2", "--batch-size", "8"]
    argv += ["--max-tasks", "3", "--eval-limit", "10", "--out", str(out)]
    original = Finetune.begin_task

    def interrupt(self, task):
        if task.index == 2:
            raise KeyboardInterrupt
        original(self, task)

    monkeypatch.setattr(Finetune, "begin_task", interrupt)
    code, err = _cli(argv, capsys)  # tasks 1 and 2 complete, then Ctrl-C
    assert code == 130, err
    monkeypatch.setattr(Finetune, "begin_task", original)
    meta_path = _meta_path(out)
    assert json.loads(meta_path.read_text())["completed_tasks"] == 2
    kept = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    kept["manifest.json"] = (out / "manifest.json").read_bytes()
    assert "accuracy.parquet" in kept

    meta_path.write_text(
        meta_path.read_text().replace('"completed_tasks":2', '"completed_tasks":1')
    )
    code, err = _cli([*argv, "--resume"], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    # the progress lines before it (loading test sets) are the reporter's, on stderr
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert errors[0].startswith(f"error: checkpoint {meta_path} has been altered or is corrupt")
    assert f"delete {out / 'checkpoint'} and resume to start over" in errors[0]
    # the completed tasks' rows (and the manifest) are untouched
    assert {n: (out / n).read_bytes() for n in kept} == kept
    import pandas as pd

    acc = pd.read_parquet(out / "accuracy.parquet")
    assert sorted(acc["after_task"].unique()) == [0, 1, 2]
