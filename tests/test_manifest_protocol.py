"""Every manifest records its protocol variant and the options that leave the references."""

from __future__ import annotations

import json


def _protocol(engine) -> dict:
    return json.loads((engine.run_dir / "manifest.json").read_text())["protocol"]


def test_defaults_differ_from_nothing(tiny_run) -> None:
    protocol = _protocol(tiny_run("drslora"))
    assert protocol["setting"] == "xtail" and protocol["union_classifier"] == "codyra"
    assert protocol["dataset_protocol"] == "xtail"
    assert protocol["differs_from_reference"] == {}


def test_changed_learner_and_run_options_are_listed(tiny_run) -> None:
    engine = tiny_run(
        "drslora",
        {"proximal": "textbook", "text_to_image": "batch", "kappa_max": "0.005"},
        union_classifier="rail",
    )
    differs = _protocol(engine)["differs_from_reference"]
    # kappa_max given at its default value is not a difference
    assert differs == {
        "learner.proximal": "textbook",
        "learner.text_to_image": "batch",
        "union_classifier": "rail",
    }
