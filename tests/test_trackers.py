"""Experiment trackers: `logging.wandb` (offline) gets the metrics, config and final yardstick that
metrics.jsonl and eval.json hold; `logging.tensorboard: false` writes no events. The wandb test
needs the [wandb] extra and is skipped with that reason without it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxorder.training.metrics import read_metrics

from conftest import TINY, train_on_corpus


def read_offline_wandb(run_dir: Path) -> list:
    """The protobuf records of an offline wandb run (its .wandb file: a 7-byte header, then LevelDB
    log records in 32 KiB blocks: checksum 4, length 2, type 1, data; FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    path, = (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    out = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def test_wandb_offline_logs_metrics_config_and_final_yardstick(tmp_path, text_corpus):
    pytest.importorskip("wandb", reason="needs the [wandb] extra: pip install -e '.[wandb]'")
    run_dir = tmp_path / "run"
    wandb = "logging.wandb={project: jaxorder-test, mode: offline}"
    train_on_corpus(run_dir, (*TINY, "train.log_every=1", wandb, "logging.tensorboard=false"), text_corpus,
                    steps=3)
    records = read_offline_wandb(run_dir)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[items["_step"]] = items
    truth = read_metrics(run_dir)  # metrics.jsonl, the source of truth
    for rec in truth:
        logged = history[rec["step"]]
        for k, v in rec.items():
            if k not in ("step", "split"):
                assert logged[f"{rec['split']}/{k}"] == pytest.approx(v), (rec["step"], k)
    assert [r["step"] for r in truth if r["split"] == "train"] == [1, 2, 3]
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    values = {u.key: json.loads(u.value_json) for u in config.update}
    assert values["model"]["d_model"] == 32 and values["objective"]["name"] == "l2r"
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                            for u in r.summary.update})
    final = json.loads((run_dir / "eval.json").read_text())
    assert summary["final/bpb"] == pytest.approx(final["bpb"]) and summary["final/step"] == 3
    assert not (run_dir / "tensorboard").exists()


def test_logging_config_rejects_unknown_wandb_keys():
    from jaxorder import config as config_lib

    with pytest.raises(config_lib.ConfigError, match="logging.wandb.projekt'; did you mean 'project'"):
        config_lib.load(None, ["logging.wandb={projekt: x}"])
    with pytest.raises(config_lib.ConfigError, match="mode='cloud' is not one of: offline, online"):
        config_lib.load(None, ["logging.wandb={project: x, mode: cloud}"])
