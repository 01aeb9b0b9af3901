"""What a learner may ask the engine for: run facts, reference data, a place to record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


# derived-manifest key of `RunContext.note_stored_data` (read by the leaderboard's cost table)
STORED_DATA_KEY = "stored_data"


@dataclass
class RunContext:
    device: torch.device
    seed: int
    setting: str  # "xtail" | "mtil"
    task_agnostic: bool  # True for X-TAIL (union label space at eval)
    world: str  # "toy" | "real"
    num_tasks: int
    paper_iterations: int  # the setting's paper budget per task (500 for the few-shot settings)
    full_finetune_lr: float  # the setting's lr for full fine-tuning baselines (world-specific)
    model_width: int  # transformer width of the vision tower (LoRA ranks scale with it)
    tokenize: Callable[[list[str]], torch.Tensor]  # the backbone's tokenizer, to device
    _reference: Callable[[int, int], tuple[torch.Tensor, list[str]]] | None = None
    # per-dataset exceptions to full_finetune_lr (ZSCL's full-shot MTIL: Aircraft, MNIST 5e-5)
    full_finetune_lr_by_dataset: dict[str, float] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    current_task: int = -1

    def reference_data(self, num_images: int, num_captions: int) -> tuple[torch.Tensor, list[str]]:
        """Reference images (float, normalized, on device) and captions for distillation (ZSCL).

        Supplied by the data world: toy draws from its pre-training distribution; real reads
        the configured reference folder and caption list.
        """
        if self._reference is None:
            from cl_bench.errors import UserError

            raise UserError(
                f"the {self.world} world provides no reference data; set --reference-images/--reference-captions"
            )
        return self._reference(num_images, num_captions)

    def full_finetune_lr_for(self, dataset: str) -> float:
        """The setting's full-fine-tuning lr for `dataset` (what `lr=None` resolves to)."""
        return self.full_finetune_lr_by_dataset.get(dataset, self.full_finetune_lr)

    def note(self, key: str, value: Any) -> None:
        """Record a derived value (e.g. the scaled LoRA rank) in the run manifest."""
        self.derived[key] = value

    def note_stored_data(self, items: int, megabytes: float, what: str) -> None:
        """Record what the learner keeps of past tasks' data between tasks (exemplar images,
        a feature memory): the leaderboard's cost table shows it as "stored data (MB)".
        Call it whenever the store changes; the last call stands. Learners that never call
        it store nothing (0 MB)."""
        self.derived[STORED_DATA_KEY] = {
            "items": int(items),
            "mb": round(float(megabytes), 3),
            "what": what,
        }

    def record(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Append rows to `<table>.parquet` beside accuracy.parquet (e.g. "ranks")."""
        tagged = [{"after_task": self.current_task, **row} for row in rows]
        self.records.setdefault(table, []).extend(tagged)
