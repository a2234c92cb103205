"""Under 8 forced host devices: train 6 steps on a 2x2x2 mesh, resume on 8x1x1 to step 12, and
compare with 12 uninterrupted steps on 2x2x2. Usage: python mesh_resume.py OUT_JSON TMP_DIR"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from jaxorder import config as config_lib  # noqa: E402
from jaxorder.training.loop import train  # noqa: E402
from jaxorder.training.metrics import read_metrics  # noqa: E402


def main() -> None:
    out_path, tmp = sys.argv[1], Path(sys.argv[2])
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n"
                              for i in range(2000)))
    base = ["model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.max_len=64", "data.source=text",
            f"data.path={corpus}", "data.seq_len=32", "data.batch_size=16", "train.steps=12",
            "train.log_every=1", "train.checkpoint_every=6", "train.eval_every=100", "eval.batches=1",
            "optimizer.warmup_steps=2"]
    mesh_a = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    train(config_lib.load(None, base + mesh_a), tmp / "uninterrupted")
    interrupted = tmp / "interrupted"
    train(config_lib.load(None, base + mesh_a), interrupted)
    for step_dir in (interrupted / "checkpoints").iterdir():  # keep only the step-6 checkpoint
        if step_dir.name == "12":
            import shutil

            shutil.rmtree(step_dir)
    (interrupted / "eval.json").unlink()
    train(config_lib.load(None, base + ["mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"]), interrupted)
    losses = {name: [r["loss"] for r in read_metrics(tmp / name) if r["split"] == "train"]
              for name in ("uninterrupted", "interrupted")}
    resumed_from = min(r["step"] for r in read_metrics(interrupted)
                       if r["split"] == "train" and r["step"] > 6)
    Path(out_path).write_text(json.dumps({"uninterrupted": losses["uninterrupted"][6:],
                                          "resumed": losses["interrupted"][6:],
                                          "resumed_from": resumed_from - 1}))


if __name__ == "__main__":
    main()
