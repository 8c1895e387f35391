"""``OUT/metrics.jsonl`` (one JSON object per logged step) and the loss-curve PNG.

Object stores cannot append, so the log is kept in memory by rank 0 and rewritten whole (it is small: one line per
``log_every`` steps). A resumed run drops the lines past the checkpoint it resumed from, so the file never holds a
step twice.
"""

from __future__ import annotations

import io
import json
from typing import Any

from magicseg_models.dataset.storage import Storage

METRICS = "metrics.jsonl"
CURVE = "loss_curve.png"
FIELDS = ("step", "loss", "loss_focal", "loss_dice", "loss_cf", "lr", "samples_per_s")


class MetricsLog:
    def __init__(self, storage: Storage, resume_step: int | None = None):
        self.storage = storage
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and storage.exists(METRICS):
            lines = storage.read_bytes(METRICS).decode().splitlines()
            self.records = [r for r in (json.loads(line) for line in lines if line.strip())
                            if r.get("step", 0) <= resume_step]

    def log(self, record: dict[str, Any]) -> None:
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise ValueError(f"metrics record lacks {missing}")
        self.records.append(record)
        self.flush()

    def flush(self) -> None:
        body = "".join(json.dumps(r) + "\n" for r in self.records)
        self.storage.write_bytes_atomic(METRICS, body.encode())

    def write_curve(self) -> str | None:
        if not self.records:
            return None
        self.storage.write_bytes_atomic(CURVE, loss_curve_png(self.records))
        return self.storage.url(CURVE)


def loss_curve_png(records: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in records]
    for key in ("loss", "loss_focal", "loss_dice", "loss_cf"):
        values = [r.get(key) for r in records]
        if any(v is not None for v in values):
            ax.plot(steps, values, label=key, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (weighted)")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
