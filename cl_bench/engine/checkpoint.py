"""Task-boundary checkpoints: learner state (safetensors), RNG states and the stream cursor.

Layout: `checkpoint/tensors-<completed tasks>.safetensors` (every tensor of the learner's
state, flattened by key path) + `checkpoint/meta.json` (the rest of the state, RNG states,
completed tasks, the tensors file's name and sha256). Both are written atomically, the
tensors under a new name first and meta.json last; only then is the previous tensors file
removed. A kill at any moment therefore leaves the last good pair loadable, and a damaged
tensors file is detected by its hash instead of loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.analysis.results import atomic_write
from cl_bench.errors import UserError

CHECKPOINT_DIR = "checkpoint"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
_TENSOR = "__tensor__"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by references into `tensors`; keep plain values as JSON."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    raise UserError(
        f"learner state at {prefix!r} holds a {type(obj).__name__}; state_dict values must be tensors, numbers, strings, lists or dicts"
    )


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, str]:
    """Python, numpy, torch (and CUDA) RNG states, pickled to base64 for JSON."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return {k: base64.b64encode(pickle.dumps(v)).decode() for k, v in state.items()}


def set_rng_state(state: dict[str, str]) -> None:
    # Our own checkpoint files only: the pickles hold RNG states written by rng_state().
    restored = {k: pickle.loads(base64.b64decode(v)) for k, v in state.items()}  # noqa: S301
    random.setstate(restored["python"])
    np.random.set_state(restored["numpy"])
    torch.set_rng_state(restored["torch"])
    if "cuda" in restored and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(restored["cuda"])


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
    digest = hashlib.sha256((ckpt / tensors_name).read_bytes()).hexdigest()
    meta = {
        "completed_tasks": completed_tasks,
        "config_hash": config_hash,
        "tensors_file": tensors_name,
        "tensors_sha256": digest,
        "structure": structure,
        "rng": rng_state(),
    }
    atomic_write(ckpt / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta)))
    for stale in ckpt.glob("tensors*.safetensors"):
        if stale.name != tensors_name:
            stale.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, Any], int, str, dict[str, str]]:
    """(learner_state, completed_tasks, config_hash, rng) of the last good checkpoint."""
    from safetensors.torch import load_file

    ckpt = run_dir / CHECKPOINT_DIR
    meta_path = ckpt / META_FILE
    if not meta_path.is_file():
        raise UserError(
            f"{run_dir} has no checkpoint to resume from; run without --resume (and a new --out)"
        )
    try:
        meta = json.loads(meta_path.read_text())
        missing = {"completed_tasks", "config_hash", "tensors_sha256", "structure", "rng"} - set(
            meta
        )
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise UserError(
            f"checkpoint {meta_path} is corrupt ({type(exc).__name__}: {exc}); delete {ckpt} and resume to start over"
        ) from None
    tensors_path = ckpt / meta.get("tensors_file", TENSORS_FILE)
    try:
        data = tensors_path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"checkpoint {tensors_path} cannot be read ({exc.strerror}); delete {ckpt} and resume to start over"
        ) from None
    if hashlib.sha256(data).hexdigest() != meta.get("tensors_sha256"):
        raise UserError(
            f"checkpoint {tensors_path} is corrupt or truncated (hash mismatch); delete {ckpt} and resume to start over"
        )
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:
        raise UserError(
            f"checkpoint {tensors_path} cannot be read ({type(exc).__name__}); delete {ckpt} and resume to start over"
        ) from None
    return (
        _unflatten(meta["structure"], tensors),
        int(meta["completed_tasks"]),
        meta["config_hash"],
        meta["rng"],
    )
