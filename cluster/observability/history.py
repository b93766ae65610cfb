"""Run history: per-model outcomes of every run, in one SQLite file.

The smart strategy ranks models by it, model-comparison.md shows it, and
`multi-image history` prints it. Several runs may write at once (two workflow jobs on one
runner): WAL mode and a busy timeout keep that safe.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

from cluster import env
from cluster.output.report import RunOutcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    finished_at REAL NOT NULL,
    status TEXT NOT NULL,
    strategy TEXT NOT NULL,
    images INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    total_seconds REAL NOT NULL,
    folder TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_outcomes (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    model TEXT NOT NULL,
    images INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    successes INTEGER NOT NULL,
    seconds_per_image REAL,
    mean_quality REAL,
    cost_usd REAL NOT NULL,
    weights TEXT NOT NULL,
    PRIMARY KEY (run_id, model)
);
CREATE INDEX IF NOT EXISTS model_outcomes_model ON model_outcomes(model);
"""
# Models need this many recorded runs before their history moves the smart strategy.
MIN_RUNS_FOR_RANKING = 3
RECENT_RUNS = 50


def default_path() -> Path:
    return env.history_path() or env.cache_dir() / "history.sqlite"


class History:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_path()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(SCHEMA)
        return connection

    def record(self, outcome: RunOutcome) -> str:
        """Append one run's per-model outcomes; returns its run id."""
        run_id = uuid.uuid4().hex
        labels = _weights_labels(outcome)
        per_model: dict[str, dict] = {}
        for final in outcome.images:
            row = per_model.setdefault(final.model, _blank(labels(final.model)))
            row["images"] += 1
            row["seconds"].append(final.image.seconds)
            row["scores"].append(final.quality.overall)
            row["weights"] = final.image.weights
        for failure in outcome.failures:
            per_model.setdefault(failure.task.model, _blank(labels(failure.task.model)))["failed"] += 1
        for attempts in [f.image.attempts for f in outcome.images] + [f.attempts for f in outcome.failures]:
            for attempt in attempts:
                row = per_model.setdefault(attempt.model, _blank(labels(attempt.model)))
                row["attempts"] += 1
                row["successes"] += attempt.code is None
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), outcome.status, outcome.request.generation_strategy, len(outcome.images),
                 len(outcome.failures), outcome.total_seconds, str(outcome.request.folder_name)),
            )
            for model, row in per_model.items():
                db.execute(
                    "INSERT INTO model_outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, model, row["images"], row["failed"], row["attempts"], row["successes"],
                     _avg(row["seconds"]), _avg(row["scores"]), outcome.costs.get(model, 0.0), row["weights"]),
                )
        return run_id

    def summary(self, recent: int = RECENT_RUNS) -> dict[str, dict]:
        """Per model over its most recent `recent` runs: runs, images, success rate, seconds per
        image, mean quality, cost. Random-weight runs are kept apart from real ones by `weights`."""
        if not self.path.exists():
            return {}
        query = """
            SELECT model, weights, COUNT(*), SUM(images), SUM(failed), SUM(attempts), SUM(successes),
                   AVG(seconds_per_image), AVG(mean_quality), SUM(cost_usd)
            FROM (SELECT m.*, ROW_NUMBER() OVER (PARTITION BY m.model ORDER BY r.finished_at DESC) AS nth
                  FROM model_outcomes m JOIN runs r USING (run_id))
            WHERE nth <= ? GROUP BY model, weights ORDER BY model
        """
        with closing(self._connect()) as db:
            rows = db.execute(query, (recent,)).fetchall()
        result = {}
        for model, weights, runs, images, failed, attempts, successes, seconds, quality, cost in rows:
            key = model if weights == "real" else f"{model} ({weights} weights)"
            result[key] = {
                "model": model, "weights": weights, "runs": runs, "images": images, "failed": failed,
                "success_rate": round(successes / attempts, 4) if attempts else None,
                "seconds_per_image": None if seconds is None else round(seconds, 3),
                "mean_quality": None if quality is None else round(quality, 4),
                "cost_usd": round(cost or 0.0, 4),
            }
        return result

    def monthly(self) -> list[dict]:
        """Spending by calendar month (UTC) and model: images made and what they cost."""
        if not self.path.exists():
            return []
        query = """
            SELECT strftime('%Y-%m', r.finished_at, 'unixepoch') AS month, m.model, SUM(m.images), SUM(m.cost_usd)
            FROM model_outcomes m JOIN runs r USING (run_id) GROUP BY month, m.model ORDER BY month, m.model
        """
        with closing(self._connect()) as db:
            rows = db.execute(query).fetchall()
        return [{"month": month, "model": model, "images": images, "cost_usd": round(cost or 0.0, 6)}
                for month, model, images, cost in rows]

    def score(self, model: str) -> float | None:
        """For the smart strategy: success rate x mean quality over recent real-weight runs."""
        row = self.summary().get(model)
        if not row or row["runs"] < MIN_RUNS_FOR_RANKING or row["mean_quality"] is None:
            return None
        return (row["success_rate"] or 0.0) * row["mean_quality"]


def _blank(weights: str) -> dict:
    return {"images": 0, "failed": 0, "attempts": 0, "successes": 0, "seconds": [], "scores": [], "weights": weights}


def _weights_labels(outcome: RunOutcome):
    """The weights label of a model that made no image in this run: what its replicas loaded, else
    what the run's registry says, else "unknown". Never "real" by default: a random-weight model
    whose runs only failed would otherwise count as a real model's record and move the smart
    strategy."""
    loaded = {model: infos[0].weights for model, infos in outcome.replicas.items() if infos}

    def label(model: str) -> str:
        return loaded.get(model) or outcome.model_weights.get(model) or "unknown"

    return label


def _avg(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def safely(fn):
    """`fn` that answers None when the history cannot be read: it is a convenience, and a locked or
    corrupt file must never fail a run or an estimate."""
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (OSError, sqlite3.Error, ValueError):
            return None
    return call
