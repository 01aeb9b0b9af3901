"""Task-boundary checkpoints: learner state (safetensors), RNG states and the stream cursor.

Layout: `checkpoint/tensors-<completed tasks>.safetensors` (every tensor of the learner's
state, flattened by key path) + `checkpoint/meta.json` (the rest of the state, the RNG
states, completed tasks, the config hash, the tensors file's name and sha256, and the
sha256 of meta.json's own content). Both are written atomically, the tensors under a new
name first and meta.json last; only then is the previous tensors file removed. A kill at
any moment therefore leaves the last good pair loadable.

Nothing here uses `pickle`, on purpose: a run directory may come from someone else (a
colleague's results, a shared cluster file system), and unpickling a file can run any code
it names. Everything is data: tensors in safetensors, the rest plain JSON. The python,
numpy, torch and CUDA RNG states are stored as JSON integer lists (the Mersenne Twister
words, the torch generator bytes), and loading checks every field's type, range and length
before anything is restored.

Integrity: meta.json holds the tensors file's sha256 and, under `sha256`, the sha256 of the
canonical JSON of all its other keys; the file must also be exactly that canonical JSON, so
changing any byte of it (or of the tensors file) is detected and the resume is refused with
a one-line `UserError` naming the file. The hashes catch corruption and edits; the safety
against a hostile run directory comes from loading only validated data, never code.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.analysis.results import atomic_write
from cl_bench.errors import UserError

CHECKPOINT_DIR = "checkpoint"
TENSORS_FILE = "tensors.safetensors"  # name pattern: tensors-<completed tasks:03d>.safetensors
META_FILE = "meta.json"
FORMAT = 2  # 1 (no `format` key): RNG states pickled to base64, no longer loaded
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_DICT = "__dict__"
_META_KEYS = {
    "format",
    "completed_tasks",
    "config_hash",
    "tensors_file",
    "tensors_sha256",
    "structure",
    "rng",
    "sha256",
}
_TENSORS_NAME = re.compile(r"tensors-(\d{3,})\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MT_WORDS = 624  # Mersenne Twister state words (python and numpy)
_UINT32 = 2**32


class _Invalid(ValueError):
    """A checkpoint field is not what this module writes (turned into a UserError)."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------
# Learner state <-> (JSON structure, tensors)
# ---------------------------------------------------------------------------------------


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by references into `tensors`; keep plain values as JSON."""
    if isinstance(obj, torch.Tensor):
        key = base = prefix or "root"
        n = 1
        while key in tensors:  # e.g. a key "a.b" next to a nested a -> b
            key, n = f"{base}#{n}", n + 1
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {
            _DICT: [
                [k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    raise UserError(
        f"learner state at {prefix!r} holds a {type(obj).__name__}; state_dict values must be tensors, numbers, strings, lists or dicts"
    )


def _tensor_refs(obj: Any, refs: set[str], where: str = "structure") -> None:
    """Check the structure is what _flatten writes; collect its tensor references."""
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            _tensor_refs(v, refs, f"{where}[{i}]")
        return
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return
    if not isinstance(obj, dict) or len(obj) != 1:
        raise _Invalid(f"{where} is not a value, list, tensor, tuple or dict entry")
    ((tag, value),) = obj.items()
    if tag == _TENSOR:
        if not isinstance(value, str):
            raise _Invalid(f"{where}: a tensor reference must be a string")
        refs.add(value)
    elif tag == _TUPLE:
        if not isinstance(value, list):
            raise _Invalid(f"{where}: a tuple must be a list")
        _tensor_refs(value, refs, where)
    elif tag == _DICT:
        if not isinstance(value, list):
            raise _Invalid(f"{where}: a dict must be a list of [key, value] pairs")
        for pair in value:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _Invalid(f"{where}: a dict must be a list of [key, value] pairs")
            key, item = pair
            if not (isinstance(key, (str, int, float, bool)) or key is None):
                raise _Invalid(f"{where}: dict key {key!r} is not a string or number")
            _tensor_refs(item, refs, f"{where}.{key}")
    else:
        raise _Invalid(f"{where}: unknown entry {tag!r}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the state from a structure _tensor_refs has accepted."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        return {k: _unflatten(v, tensors) for k, v in obj[_DICT]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------
# RNG states as plain JSON
# ---------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as JSON values (integer lists, numbers)."""
    version, words, gauss_next = random.getstate()
    algorithm, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(words), "gauss_next": gauss_next},
        "numpy": {
            "algorithm": str(algorithm),
            "key": [int(k) for k in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_float(x: Any) -> bool:
    return (isinstance(x, float) or _is_int(x)) and math.isfinite(x)


def _int_list(x: Any, name: str, length: int | None, bound: int) -> list[int]:
    if not isinstance(x, list):
        raise _Invalid(f"rng.{name} is not a list of integers")
    if length is not None and len(x) != length:
        raise _Invalid(f"rng.{name} has {len(x)} entries, not {length}")
    if not all(_is_int(v) and 0 <= v < bound for v in x):
        raise _Invalid(f"rng.{name} holds values that are not integers in [0, {bound})")
    return x


def _keys(x: Any, name: str, want: set[str], optional: AbstractSet[str] = frozenset()) -> dict:
    if not isinstance(x, dict):
        raise _Invalid(f"{name} is not an object")
    missing, unknown = want - set(x), set(x) - want - optional
    if missing or unknown:
        raise _Invalid(f"{name}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    return x


def _check_rng(state: Any) -> None:
    """Raise _Invalid unless `state` is exactly what rng_state() writes (for this runtime)."""
    state = _keys(state, "rng", {"python", "numpy", "torch"}, {"cuda"})
    py = _keys(state["python"], "rng.python", {"version", "state", "gauss_next"})
    if py["version"] != random.getstate()[0] or not _is_int(py["version"]):
        raise _Invalid(f"rng.python.version is {py['version']!r}, not {random.getstate()[0]}")
    words = _int_list(py["state"], "python.state", _MT_WORDS + 1, _UINT32)
    if words[-1] > _MT_WORDS:
        raise _Invalid("rng.python.state's position is past 624")
    if py["gauss_next"] is not None and not _is_float(py["gauss_next"]):
        raise _Invalid("rng.python.gauss_next is not a finite number or null")
    npy = _keys(
        state["numpy"], "rng.numpy", {"algorithm", "key", "pos", "has_gauss", "cached_gaussian"}
    )
    if npy["algorithm"] != "MT19937":
        raise _Invalid(f"rng.numpy.algorithm is {npy['algorithm']!r}, not 'MT19937'")
    _int_list(npy["key"], "numpy.key", _MT_WORDS, _UINT32)
    if not (_is_int(npy["pos"]) and 0 <= npy["pos"] <= _MT_WORDS):
        raise _Invalid("rng.numpy.pos is not an integer in [0, 624]")
    if not (_is_int(npy["has_gauss"]) and npy["has_gauss"] in (0, 1)):
        raise _Invalid("rng.numpy.has_gauss is not 0 or 1")
    if not _is_float(npy["cached_gaussian"]):
        raise _Invalid("rng.numpy.cached_gaussian is not a finite number")
    _int_list(state["torch"], "torch", torch.get_rng_state().numel(), 256)
    if "cuda" in state:
        cuda = state["cuda"]
        if not isinstance(cuda, list) or len(cuda) > 1024:
            raise _Invalid("rng.cuda is not a list of per-device states")
        for i, s in enumerate(cuda):
            _int_list(s, f"cuda[{i}]", len(cuda[0]), 256)
            if not 0 < len(s) <= 4096:
                raise _Invalid(f"rng.cuda[{i}] has {len(s)} bytes")
        if torch.cuda.is_available():
            for i in range(min(len(cuda), torch.cuda.device_count())):
                want = torch.cuda.get_rng_state(i).numel()
                if len(cuda[i]) != want:
                    raise _Invalid(f"rng.cuda[{i}] has {len(cuda[i])} bytes, not {want}")


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() returned (as load_checkpoint gives it back)."""
    try:
        _check_rng(state)
    except _Invalid as exc:
        raise UserError(
            f"invalid RNG state ({_one_line(exc)}); delete the run's checkpoint and resume to start over"
        ) from None
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state(
        (
            "MT19937",
            np.asarray(npy["key"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            float(npy["cached_gaussian"]),
        )
    )
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        # A checkpoint made with more visible devices restores the ones this process has.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.tensor(s, dtype=torch.uint8), i)


# ---------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------


def _meta_text(body: dict[str, Any]) -> str:
    """meta.json's exact content: the canonical JSON of body plus the sha256 of body's."""
    return _canonical({**body, "sha256": _sha256(_canonical(body).encode())})


def save_checkpoint(
    run_dir: Path, learner_state: dict[str, Any], completed_tasks: int, config_hash: str
) -> None:
    from safetensors.torch import save_file

    ckpt = run_dir / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(learner_state, "", tensors)
    # safetensors refuses shared storage; clone to be safe about views.
    tensors = {k: v.clone() for k, v in tensors.items()}
    # A new name per checkpoint: the pair (meta.json, its tensors file) stays loadable until
    # the new meta.json has replaced the old one (keep the last good checkpoint).
    tensors_name = f"tensors-{completed_tasks:03d}.safetensors"
    atomic_write(ckpt / tensors_name, lambda tmp: save_file(tensors, str(tmp)))
    body = {
        "format": FORMAT,
        "completed_tasks": completed_tasks,
        "config_hash": config_hash,
        "tensors_file": tensors_name,
        "tensors_sha256": _sha256((ckpt / tensors_name).read_bytes()),
        "structure": structure,
        "rng": rng_state(),
    }
    text = _meta_text(body)
    atomic_write(ckpt / META_FILE, lambda tmp: tmp.write_text(text))
    for stale in ckpt.glob("tensors*.safetensors"):
        if stale.name != tensors_name:
            stale.unlink(missing_ok=True)


def _read_meta(meta_path: Path, fix: str) -> dict[str, Any]:
    """meta.json's body, after its hash and every field have been checked."""
    try:
        raw = meta_path.read_bytes()
    except OSError as exc:
        raise UserError(f"checkpoint {meta_path} cannot be read ({exc.strerror}); {fix}") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict):
            raise _Invalid("not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(
            f"checkpoint {meta_path} is corrupt ({type(exc).__name__}: {_one_line(exc)}); {fix}"
        ) from None
    if "format" not in meta and isinstance(meta.get("rng"), dict):
        raise UserError(
            f"checkpoint {meta_path} has the old format with pickled RNG states, which cl-bench no longer loads (unpickling a file can run code); {fix}"
        )
    if meta.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {meta_path} has format {meta.get('format')!r}, not {FORMAT}; {fix}"
        )
    body = {k: v for k, v in meta.items() if k != "sha256"}
    try:
        intact = raw.decode("utf-8") == _meta_text(body) and meta.get("sha256") == _sha256(
            _canonical(body).encode()
        )
    except (ValueError, RecursionError):
        intact = False
    if not intact:
        raise UserError(
            f"checkpoint {meta_path} has been altered or is corrupt (sha256 mismatch); {fix}"
        )
    try:
        _keys(meta, "meta.json", _META_KEYS)
        done = meta["completed_tasks"]
        if not (_is_int(done) and done >= 0):
            raise _Invalid("completed_tasks is not a non-negative integer")
        if not isinstance(meta["config_hash"], str):
            raise _Invalid("config_hash is not a string")
        if meta["tensors_file"] != f"tensors-{done:03d}.safetensors":
            raise _Invalid(f"tensors_file {meta['tensors_file']!r} does not match completed_tasks")
        if not (
            isinstance(meta["tensors_sha256"], str) and _SHA256.fullmatch(meta["tensors_sha256"])
        ):
            raise _Invalid("tensors_sha256 is not a sha256 hex digest")
        _check_rng(meta["rng"])
    except _Invalid as exc:
        raise UserError(f"checkpoint {meta_path} is invalid ({_one_line(exc)}); {fix}") from None
    return body


def load_checkpoint(run_dir: Path) -> tuple[dict[str, Any], int, str, dict[str, Any]]:
    """(learner_state, completed_tasks, config_hash, rng) of the last good checkpoint.

    Refuses (UserError) a checkpoint that is corrupt, altered, of the old pickled format or
    not exactly what save_checkpoint writes; no file of the run is changed by a refusal.
    """
    from safetensors.torch import load as load_tensors

    ckpt = run_dir / CHECKPOINT_DIR
    meta_path = ckpt / META_FILE
    if not meta_path.is_file():
        raise UserError(
            f"{run_dir} has no checkpoint to resume from; run without --resume (and a new --out)"
        )
    fix = f"delete {ckpt} and resume to start over, or start a new run with --force"
    meta = _read_meta(meta_path, fix)
    tensors_path = ckpt / meta["tensors_file"]
    try:
        data = tensors_path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"checkpoint {tensors_path} cannot be read ({exc.strerror}); {fix}"
        ) from None
    if _sha256(data) != meta["tensors_sha256"]:
        raise UserError(f"checkpoint {tensors_path} is corrupt or truncated (hash mismatch); {fix}")
    try:
        tensors = load_tensors(data)
    except Exception as exc:
        raise UserError(
            f"checkpoint {tensors_path} cannot be read ({type(exc).__name__}); {fix}"
        ) from None
    refs: set[str] = set()
    try:
        _tensor_refs(meta["structure"], refs)
        if refs != set(tensors):
            missing, extra = sorted(refs - set(tensors)), sorted(set(tensors) - refs)
            raise _Invalid(
                f"tensor references missing from {tensors_path.name}: {missing[:5]}, unreferenced tensors: {extra[:5]}"
            )
    except RecursionError:
        raise UserError(
            f"checkpoint {meta_path} is invalid (structure nested too deep); {fix}"
        ) from None
    except _Invalid as exc:
        raise UserError(f"checkpoint {meta_path} is invalid ({_one_line(exc)}); {fix}") from None
    return (
        _unflatten(meta["structure"], tensors),
        meta["completed_tasks"],
        meta["config_hash"],
        meta["rng"],
    )
