"""AI quality monitoring: each model's daily outputs against its validation figures.

For every model (and label) the ``findings`` table gives, per day, how many
findings were made, the rate of positive ones and the score quantiles. Today's
figures are compared with what validation predicts (``[monitoring.expected]`` or,
failing that, the figures derived from the manifests in ``monitoring.models_dir``);
beyond the configured bound the model is flagged as drifting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from daemon.config import ModelExpectation, MonitoringSettings
from daemon.store.db import Database
from daemon.store.models import Finding, utcnow

log = logging.getLogger(__name__)


@dataclass
class DayStats:
    day: str
    n: int
    positive_rate: float
    score_p10: float
    score_p50: float
    score_p90: float


@dataclass
class ModelReport:
    model: str  # "model/label"
    days: list[DayStats]
    expected: dict[str, float | None]
    drift: bool = False
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expected_from_manifest(manifest: dict[str, Any]) -> dict[str, ModelExpectation]:
    """Expected figures per "model/label" from a manifest.

    Uses an explicit ``monitoring`` block when the manifest has one
    (``{"label": {"positive_rate": ..., "score_p50": ...}}``); otherwise the positive
    rate validation predicts: sens * n_pos + (1 - spec) * n_neg over n.
    """
    name = manifest.get("name", "?")
    out: dict[str, ModelExpectation] = {}
    explicit = manifest.get("monitoring") or {}
    for label, figures in explicit.items():
        out[f"{name}/{label}"] = ModelExpectation(**figures)
    for label, m in (manifest.get("metrics") or {}).items():
        key = f"{name}/{label}"
        if key in out or not isinstance(m, dict):
            continue
        try:
            pos, neg = float(m["n_positive"]), float(m["n_negative"])
            rate = (m["sensitivity"] * pos + (1 - m["specificity"]) * neg) / (pos + neg)
        except (KeyError, TypeError, ZeroDivisionError):
            continue
        out[key] = ModelExpectation(positive_rate=round(rate, 4))
    return out


def load_expectations(settings: MonitoringSettings) -> dict[str, ModelExpectation]:
    """Manifest figures first, overridden by anything configured explicitly."""
    out: dict[str, ModelExpectation] = {}
    if settings.models_dir is not None:
        for path in sorted(Path(settings.models_dir).glob("*/manifest.json")):
            try:
                out.update(expected_from_manifest(json.loads(path.read_text())))
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", path, exc)
    out.update(settings.expected)
    return out


def _quantile(sorted_scores: list[float], q: float) -> float:
    if len(sorted_scores) == 1:
        return sorted_scores[0]
    return statistics.quantiles(sorted_scores, n=100, method="inclusive")[round(q * 100) - 1]


def daily_stats(db: Database, *, days: int = 14) -> dict[str, list[DayStats]]:
    """Per "model/label", per UTC day (oldest first), over the last ``days`` days."""
    since = (utcnow() - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0,
                                                              microsecond=0)
    groups: dict[tuple[str, str], list[tuple[float, bool]]] = defaultdict(list)
    with db.read() as session:  # a read path: no write lock (the dashboard, /metrics)
        rows = session.execute(select(Finding.model_name, Finding.label, Finding.created_at,
                                      Finding.score, Finding.present)
                               .where(Finding.created_at >= since)).all()
    for model, label, at, score, present in rows:
        groups[(f"{model}/{label}", at.date().isoformat())].append((float(score), bool(present)))
    out: dict[str, list[DayStats]] = defaultdict(list)
    for (key, day), values in sorted(groups.items()):
        scores = sorted(v[0] for v in values)
        out[key].append(DayStats(day=day, n=len(values),
                                 positive_rate=sum(v[1] for v in values) / len(values),
                                 score_p10=_quantile(scores, 0.10),
                                 score_p50=_quantile(scores, 0.50),
                                 score_p90=_quantile(scores, 0.90)))
    return dict(out)


def _expected_for(key: str, expected: dict[str, ModelExpectation]) -> ModelExpectation | None:
    return expected.get(key) or expected.get(key.split("/", 1)[0])


def assess(stats: dict[str, list[DayStats]], expected: dict[str, ModelExpectation],
           settings: MonitoringSettings, *, today: str | None = None) -> list[ModelReport]:
    """Compare today's figures of each model with its expectation."""
    today = today or utcnow().date().isoformat()
    reports = []
    for key in sorted(set(stats) | set(expected)):
        if "/" not in key and any(k.startswith(key + "/") for k in stats):
            continue  # a model-wide expectation, reported under its labels
        exp = _expected_for(key, expected)
        days = stats.get(key, [])
        report = ModelReport(model=key, days=days,
                             expected=exp.model_dump() if exp else {})
        current = next((d for d in days if d.day == today), None)
        if exp is not None and current is not None and current.n >= settings.min_findings:
            if exp.positive_rate is not None:
                diff = abs(current.positive_rate - exp.positive_rate)
                if diff > settings.positive_rate_bound:
                    report.reasons.append(
                        f"positive rate {current.positive_rate:.3f} vs expected "
                        f"{exp.positive_rate:.3f} (bound ±{settings.positive_rate_bound})")
            for q in ("score_p10", "score_p50", "score_p90"):
                want = getattr(exp, q)
                if want is None:
                    continue
                got = getattr(current, q)
                scale = max(abs(want), 1e-6)
                if abs(got - want) / scale > settings.score_bound:
                    report.reasons.append(f"{q} {got:.4g} vs expected {want:.4g} "
                                          f"(bound ±{settings.score_bound:.0%})")
        report.drift = bool(report.reasons)
        if report.drift:
            log.debug("model %s drifts: %s", key, "; ".join(report.reasons))
        reports.append(report)
    return reports


def monitor(db: Database, settings: MonitoringSettings, *, days: int = 14) -> list[ModelReport]:
    return assess(daily_stats(db, days=days), load_expectations(settings), settings)
