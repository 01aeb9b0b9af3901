"""`--log tensorboard|wandb`: what the trackers wrote, read back with the trackers' own readers
(TensorBoard's EventAccumulator, W&B's protobuf records), equals the run's parquet files; and
`--log` changes no number of the run."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path

import pandas as pd
import pytest

from cl_bench.analysis.results import read_parquet
from cl_bench.engine.config import RunConfig
from cl_bench.engine.trackers import check_trackers, wandb_mode
from cl_bench.errors import UserError

ITERATIONS = 6


def tiny(tiny_run, learner: str, out: Path, **config):
    return tiny_run(learner, out=out, iterations=ITERATIONS, log_every=2, **config)


def mean_row(run_dir: Path) -> dict:
    summary = read_parquet(run_dir / "summary.parquet")
    return summary[summary["dataset"] == "mean"].iloc[0].to_dict()


# ------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_events_hold_the_runs_numbers_and_change_none(tiny_run, one_thread, tmp_path):
    pytest.importorskip("tensorboard")  # in the dev extra: CI runs this test
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = tiny(tiny_run, "finetune", tmp_path / "logged", log=["tensorboard"]).run_dir
    plain = tiny(tiny_run, "finetune", tmp_path / "plain").run_dir
    for name in ("accuracy.parquet", "train_log.parquet", "summary.parquet"):
        pd.testing.assert_frame_equal(read_parquet(logged / name), read_parquet(plain / name))
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (logged, plain)]
    assert manifests[0]["config_hash"] == manifests[1]["config_hash"]
    assert manifests[0]["trackers"] == [{"name": "tensorboard", "dir": str(logged / "tb")}]
    assert manifests[1]["trackers"] == [] and not (plain / "tb").exists()

    events = EventAccumulator(str(logged / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    acc = read_parquet(logged / "accuracy.parquet")
    datasets = list(dict.fromkeys(acc["eval_dataset"]))
    assert {"train/loss", "train/lr", *[f"accuracy/{d}" for d in datasets]} <= set(tags["scalars"])
    assert {"config/text_summary", "accuracy_matrix/text_summary"} <= set(tags["tensors"])

    def scalars(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in events.Scalars(tag)}

    # accuracy after task t at the global step t x iterations, one point per evaluation
    for name in datasets:
        rows = acc[acc["eval_dataset"] == name]
        expected = {
            int(t) * ITERATIONS: float(a)
            for t, a in zip(rows.after_task, rows.accuracy, strict=True)
        }
        assert scalars(f"accuracy/{name}") == pytest.approx(expected, rel=1e-6)
    log = read_parquet(logged / "train_log.parquet")
    expected = {
        int((t - 1) * ITERATIONS + s): float(v)
        for t, s, v in zip(log.task, log.step, log.loss, strict=True)
    }
    assert len(expected) == 6 and scalars("train/loss") == pytest.approx(expected, rel=1e-6)
    mean = mean_row(logged)
    final = 2 * ITERATIONS
    for metric in ("transfer", "average", "last"):
        assert scalars(f"summary/{metric}") == pytest.approx({final: mean[metric]}, rel=1e-6)

    first = list((logged / "tb").iterdir())
    tiny(tiny_run, "finetune", logged, log=["tensorboard"], force=True)  # a --force run anew
    again = list((logged / "tb").iterdir())
    assert len(first) == len(again) == 1 and first != again  # the old events went with it


# ------------------------------------------------------------------------------ W&B
def wandb_records(run_folder: Path) -> list:
    """The records of a W&B run's transaction log (run-<id>.wandb): W&B's LevelDB-style log
    (a 7-byte file header, 32 KiB blocks of records with a 7-byte header: CRC32, length,
    type), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_folder.glob("run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        pending += raw[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_logs_offline_without_an_api_key_and_holds_the_summary(
    tiny_run, one_thread, tmp_path, monkeypatch
):
    pytest.importorskip("wandb")  # in the dev extra: CI runs this test
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` either
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    engine = tiny(tiny_run, "finetune", tmp_path / "run", log=["wandb"])
    run_dir = engine.run_dir
    (tracker,) = engine.manifest["trackers"]
    assert tracker["name"] == "wandb" and tracker["mode"] == "offline"
    folder = Path(tracker["dir"])
    assert folder.parent == run_dir / "wandb" and folder.name.startswith("offline-run-")

    # wandb's service process may still be writing the transaction log when finish()
    # returns on a loaded machine: wait for the run's final (exit) record
    deadline = time.monotonic() + 60
    records = wandb_records(folder)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, "the offline run's log has no exit record"
        time.sleep(0.5)
        records = wandb_records(folder)
    summary: dict[str, object] = {}
    history: list[dict[str, object]] = []
    config: dict[str, object] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            history.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    mean = mean_row(run_dir)
    for metric in ("transfer", "average", "last"):
        key = f"summary/{metric}"
        logged = [h[key] for h in history if key in h]  # the final-step history row
        assert logged and logged[-1] == pytest.approx(mean[metric], rel=1e-12)
        if key in summary:  # the summary record, when W&B has flushed it at finish
            assert summary[key] == pytest.approx(mean[metric], rel=1e-12)
    assert config["config_hash"] == engine.manifest["config_hash"]
    assert config["config"]["learner"] == "finetune"  # type: ignore[index]
    acc = read_parquet(run_dir / "accuracy.parquet")
    last = acc[acc["after_task"] == 2].set_index("eval_dataset")["accuracy"]
    final: dict[str, object] = {}  # the rows of the last step, merged (as W&B shows them)
    for h in history:
        if h.get("_step") == 2 * ITERATIONS:
            final.update(h)
    for name, value in last.items():
        assert final[f"accuracy/{name}"] == pytest.approx(value, rel=1e-12)
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    log = read_parquet(run_dir / "train_log.parquet")
    assert losses == pytest.approx(log["loss"].tolist(), rel=1e-6)
    table = json.loads((folder / "files" / final["accuracy_matrix/path"]).read_text())
    assert table["columns"] == ["after_task", *last.index]
    assert [row[0] for row in table["data"]] == [0, 1, 2]
    assert table["data"][2][1:] == pytest.approx(last.tolist(), rel=1e-12)


def test_wandb_mode_follows_wandb_mode_then_key_then_network(tmp_path):
    netrc = str(tmp_path / "none")
    assert wandb_mode({"WANDB_MODE": "disabled"})[0] is None  # wandb follows its own variable
    assert wandb_mode({"NETRC": netrc}) == ("offline", wandb_mode({"NETRC": netrc})[1])
    assert "API key" in wandb_mode({"NETRC": netrc})[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    env = {"WANDB_API_KEY": "k", "WANDB_BASE_URL": f"http://127.0.0.1:{port}", "NETRC": netrc}
    assert wandb_mode(env)[0] == "offline" and "unreachable" in wandb_mode(env)[1]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env["WANDB_BASE_URL"] = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert wandb_mode(env)[0] == "online"
        (tmp_path / "netrc").write_text("machine 127.0.0.1 login user password key\n")
        (tmp_path / "netrc").chmod(0o600)
        env = {"WANDB_BASE_URL": env["WANDB_BASE_URL"], "NETRC": str(tmp_path / "netrc")}
        assert wandb_mode(env)[0] == "online"  # the key `wandb login` wrote


# ------------------------------------------------------------------------------ bad input
def test_missing_extra_is_a_one_line_error_before_any_data(monkeypatch, fake_world, tmp_path):
    import importlib.util

    from cl_bench.engine.loop import Engine

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(
        UserError, match=r"^--log wandb needs the wandb extra: pip install 'cl-bench\[wandb\]'$"
    ):
        check_trackers(["wandb"])
    cfg = RunConfig(max_tasks=1, log=["wandb"], out=str(tmp_path / "run"))
    with pytest.raises(UserError, match="wandb extra"):
        Engine(cfg, world=fake_world)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("log", "message"),
    [(["mlflow"], "unknown --log 'mlflow'; valid trackers: tensorboard, wandb"),
     (["wandb", "wandb"], "lists a tracker twice")],
)  # fmt: skip
def test_bad_log_values_are_refused(log, message):
    with pytest.raises(UserError, match=message):
        RunConfig(log=log).validate()


def test_log_is_not_part_of_the_run_identity():
    assert RunConfig(log=["tensorboard", "wandb"]).hash() == RunConfig().hash()
    assert "log" not in RunConfig(log=["wandb"]).identity(complete=True)
