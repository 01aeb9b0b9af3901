"""Settings (protocols) as the engine sees them: re-exported from `cl_bench.data.taskfiles`.

The readers live on the data layer, which needs them too (dataset specs, the toy world's
pretraining, `clbench data`); this module keeps the engine's import path.
"""

from __future__ import annotations

from cl_bench.data.taskfiles import (
    OPTIONAL,
    REQUIRED,
    WORLD_KEYS,
    Setting,
    available_settings,
    check_keys,
    load_setting_file,
    read_toml,
    resolve_setting,
    tasks_dir,
)

__all__ = [
    "OPTIONAL",
    "REQUIRED",
    "WORLD_KEYS",
    "Setting",
    "available_settings",
    "check_keys",
    "load_setting_file",
    "read_toml",
    "resolve_setting",
    "tasks_dir",
]
