"""Optional experiment trackers fed by MetricsWriter (metrics.jsonl stays the source of truth).

`logging.wandb: {project: P, mode: offline|online}` logs every metrics record (as `split/key`
at its step), the resolved config and, at the end, the final yardstick as the run summary.
Offline runs write under RUN_DIR/wandb (upload later with `wandb sync RUN_DIR/wandb/offline-run-*`).
The wandb run id is kept in RUN_DIR/wandb_run_id, so a resumed jaxorder run continues the same
wandb run. Needs the [wandb] extra; a missing one is a one-line error naming it.
"""
from __future__ import annotations

import os
import uuid
from typing import Any

from etils import epath

from jaxorder.config import Config
from jaxorder.interop.extras import require


class WandbTracker:
    def __init__(self, cfg: Config, run_dir: Any, name: str, config_dict: dict):
        wandb = require("wandb", "wandb", "logging.wandb")
        w = cfg.logging.wandb
        run_dir = epath.Path(run_dir)
        id_path = run_dir / "wandb_run_id"
        run_id = id_path.read_text().strip() if id_path.exists() else uuid.uuid4().hex[:12]
        id_path.write_text(run_id + "\n")
        os.environ.setdefault("WANDB_SILENT", "true")  # our own log lines say what happens
        self.run = wandb.init(project=w.project, entity=w.entity or None, mode=w.mode, dir=str(run_dir),
                              name=name, id=run_id, resume="allow", config=config_dict,
                              settings=wandb.Settings(console="off"))

    def log(self, step: int, split: str, values: dict) -> None:
        numbers = {f"{split}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self.run.log(numbers, step=step)

    def summary(self, values: dict) -> None:
        for k, v in values.items():
            self.run.summary[f"final/{k}"] = v

    def close(self) -> None:
        self.run.finish()


def make_trackers(cfg: Config, run_dir: Any, name: str, config_dict: dict) -> list:
    """The trackers `cfg.logging` asks for (process 0 only: the caller decides)."""
    return [WandbTracker(cfg, run_dir, name, config_dict)] if cfg.logging.wandb.project else []
