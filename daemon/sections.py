"""The sections of pacsai's configuration file, one model each (``[listener]``, ``[storage]``…).

:class:`daemon.config.Settings` assembles them; import them from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from inference.settings import InferenceSettings

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.+/")


def _check_ae_title(value: str) -> str:
    title = value.strip()
    if not 1 <= len(title) <= 16:
        raise ValueError("an AE title has 1 to 16 characters")
    if not set(title) <= _AE_CHARS or "\\" in title:
        raise ValueError(f"AE title {value!r} has characters outside the DICOM default set")
    return title


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


class TLSSettings(_Section):
    """DICOM TLS: our certificate and key; a CA bundle turns on peer verification."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> "TLSSettings":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ListenerSettings(_Section):
    ae_title: str = "PACSAI"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Empty: any calling AE is accepted."
    )
    max_associations: int = Field(16, ge=1, le=1000)
    max_pdu_size: int = Field(
        4 << 20, ge=0,
        description="Largest PDU we accept (advertised to peers; longer ones abort the association). "
                    "0 = unlimited: then any declared length is read into memory.")
    max_dataset_bytes: int = Field(
        2 << 30, ge=0,
        description="Largest data set one C-STORE may carry (held in memory while received); "
                    "larger ones abort the association. A deflated data set is inflated only "
                    "up to it: one that inflates past it is refused with 0xA700 (Out of "
                    "Resources) and the association goes on. 0 = no limit.")
    max_inflight_dataset_bytes: int = Field(
        4 << 30, ge=0,
        description="Data sets still being received, all associations together (each is held "
                    "in memory until complete); the association whose data would pass it is "
                    "aborted and its peer may retry. Bounds the listener's memory however many "
                    "peers send at once. 0 = no limit.")
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(
        60.0, gt=0, description="An association silent this long, or a PDU stalled half-way "
        "this long, is closed.")
    association_request_timeout: float = Field(
        5.0, gt=0, le=120,
        description="A connection must send its whole A-ASSOCIATE-RQ (TLS handshake included) "
                    "within this many seconds, or it is closed. Until then it holds no "
                    "association slot and no thread.")
    max_connections_per_address: int = Field(
        32, ge=1, le=10000,
        description="Open connections one source address may hold (negotiating or "
                    "associated); more are refused at accept time, logged once a minute.")
    max_pending_connections: int = Field(
        128, ge=1, le=10000,
        description="Connections, from all addresses, still to send their A-ASSOCIATE-RQ; "
                    "more are refused at accept time.")
    tls: TLSSettings = Field(default_factory=TLSSettings)

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]


class StorageSettings(_Section):
    data_dir: Path = Path("./data")
    min_free_bytes: int = Field(1 << 30, ge=0, description="Refuse instances below this.")
    fsync: Literal["always", "never"] = Field(
        "always", description="always: file and directory are fsynced before Success."
    )


class DatabaseSettings(_Section):
    url: SecretStr | None = Field(None, description="Empty: SQLite in data_dir.")
    echo: bool = False


class BrokerSettings(_Section):
    url: SecretStr | None = Field(None, description="Empty: the embedded broker in data_dir.")
    socket_timeout_seconds: float = Field(
        30.0, gt=0, description="Redis: a connect or a reply that takes longer is an error, so a "
        "frozen Redis (hung host, network partition) raises instead of blocking forever.")


class StudySettings(_Section):
    quiet_seconds: float = Field(2.0, ge=0)
    max_wait_seconds: float = Field(3600.0, gt=0)
    poll_seconds: float = Field(0.25, gt=0, le=5)


class DestinationSettings(_Section):
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None
    tls: TLSSettings = Field(default_factory=TLSSettings)
    sr_sop_class: Literal["comprehensive3d", "comprehensive"] = "comprehensive3d"
    heatmaps: list[Literal["sc", "pm"]] = Field(
        default_factory=lambda: ["sc", "pm"],
        description="The heatmap forms this destination gets: 'sc' (secondary capture, every "
                    "viewer shows it), 'pm' (Parametric Map, IHE AIR's primitive, overlaid by "
                    "OHIF; written for cross-sectional sources only).")

    _ae = field_validator("ae_title")(_check_ae_title)


class InferenceConfig(InferenceSettings):
    """``[inference]``: the engines' own settings (:class:`inference.InferenceSettings`, one class
    for the TOML file, the environment and the engines), plus the keys only the daemon uses."""

    dynamic_batching: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on in thread-pool (GPU) workers, where tasks share a process.")
    max_delay_ms: float = Field(2.0, ge=0, le=1000, description="Longest wait to fill a batch.")
    models_dirs: list[Path] = Field(default_factory=list, description="Site model folders.")


class PipelineSettings(_Section):
    """One model run over a study's images, and the objects written from its output."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
    model: str = Field(description="Model folder name (under the model folders) or a path.")
    outputs: list[Literal["sr", "sc", "pm"]] = Field(default_factory=lambda: ["sr", "sc", "pm"])
    top_k: int = Field(3, ge=1, le=100, description="Heatmap SCs per finding (multi-slice).")
    modalities: list[str] | None = Field(
        None, description="Modalities analysed; default: the model manifest's intended ones.")


def _default_pipelines() -> list[PipelineSettings]:
    return [
        PipelineSettings(name="cxr-classifier", model="chest-cxr-classifier"),
        PipelineSettings(name="cxr-anomaly", model="chest-cxr-anomaly"),
    ]


class ResultsSettings(_Section):
    disclaimer: str = Field("AI result, not for diagnostic use", min_length=1, max_length=200)
    colormap: str = "jet"
    opacity: float = Field(0.45, ge=0.05, le=1.0)


class DeliverySettings(_Section):
    """The outbox: exponential backoff with jitter, then the dead-letter state."""

    first_retry_seconds: float = Field(10.0, gt=0)
    max_retry_seconds: float = Field(3600.0, gt=0)
    give_up_after_seconds: float = Field(86400.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    batch_size: int = Field(200, ge=1)
    lease_seconds: float = Field(300.0, gt=0, description="A claimed batch is retried after this.")


class QueueSettings(_Section):
    """Inference queues: one per GPU (``gpu.0``, ``gpu.1``, ...) or ``infer`` on CPU-only sites.

    A completed study's jobs go to the inference queue with the fewest active jobs;
    delivery runs on ``cpu``.
    """

    inference: list[str] = Field(default_factory=lambda: ["infer"], min_length=1)

    @field_validator("inference")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        import re

        for q in value:
            if not re.fullmatch(r"infer|gpu\.\d+|[a-z][a-z0-9_.-]{0,31}", q) or q == "cpu":
                raise ValueError(f"invalid inference queue name {q!r}")
        return value


class AdminSettings(_Section):
    """The admin HTTP service (dashboard, API, /metrics, /healthz, /readyz)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 = no admin service in this process.")
    token: SecretStr | None = Field(
        None, description="Bearer token; empty: generated at first start into data_dir/admin-token.")
    phi_token: SecretStr | None = Field(
        None, description="A second token that may also see patient names (?phi=true).")
    cert_file: Path | None = Field(None, description="With key_file: serve HTTPS.")
    key_file: Path | None = None
    queue_sample_seconds: float = Field(60.0, gt=0, description="Queue depth history interval.")
    metrics_settle_seconds: float = Field(
        10.0, ge=0, description="/metrics histograms count rows this old, so late commits count once.")
    metrics_backfill_seconds: float = Field(
        3600.0, ge=0, description="After a restart, /metrics histograms start this far back.")

    @model_validator(mode="after")
    def _pair(self) -> "AdminSettings":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("admin.cert_file and admin.key_file must be given together")
        return self


class DicomwebSettings(_Section):
    """DICOMweb under ``/dicomweb`` on the admin port (its HTTPS too): WADO-RS and QIDO-RS of
    what was received, STOW-RS of remote workers' results. Its answers carry patient data,
    so it has a token of its own (the PHI token is accepted too, the admin token is not)."""

    token: SecretStr | None = Field(
        None, description="Bearer token; empty: generated at first start into "
                          "data_dir/dicomweb-token (mode 0600).")
    max_stow_bytes: int = Field(
        2 << 30, ge=1, description="Largest STOW-RS request body; a longer one is refused (413).")


class RetentionSettings(_Section):
    """What is kept how long once nothing is pending for a study."""

    spool_days: float = Field(
        7.0, ge=0, description="Received files: days after delivery (or not-routed).")
    rows_days: float = Field(90.0, ge=0, description="Database rows of finished studies.")
    interval_seconds: float = Field(3600.0, gt=0, description="How often the listener purges.")

    @model_validator(mode="after")
    def _order(self) -> "RetentionSettings":
        if self.rows_days < self.spool_days:
            raise ValueError("retention.rows_days must be at least retention.spool_days")
        return self


class ModelExpectation(_Section):
    """A model's validation figures (from its manifest) that live outputs are compared with."""

    positive_rate: float | None = Field(None, ge=0, le=1)
    score_p10: float | None = None
    score_p50: float | None = None
    score_p90: float | None = None


class MonitoringSettings(_Section):
    """AI quality monitoring: today's outputs against the validation figures."""

    positive_rate_bound: float = Field(
        0.15, gt=0, le=1, description="Drift: |today - expected| positive rate above this.")
    score_bound: float = Field(
        0.25, gt=0, description="Drift: a score quantile off by more than this fraction.")
    min_findings: int = Field(20, ge=1, description="No verdict on fewer findings a day.")
    models_dir: Path | None = Field(
        None, description="Read expectations from <models_dir>/*/manifest.json too.")
    expected: dict[str, ModelExpectation] = Field(
        default_factory=dict, description='Keyed "model" or "model/label".')


class WorkerSettings(_Section):
    concurrency: int = Field(2, ge=1, le=64, description="Worker processes (serve's worker).")
    task_soft_time_limit: float = Field(600, gt=0)
    task_time_limit: float = Field(900, gt=0)
    max_attempts: int = Field(3, ge=1, description="Attempts counted by us, not the broker.")
    heartbeat_seconds: float = Field(5.0, gt=0)
    heartbeat_timeout_seconds: float = Field(60.0, gt=0)
    requeue_after_seconds: float = Field(
        300.0, gt=0, description="Re-send a job queued this long when the broker cannot be "
        "asked what it holds (when it can, a job whose task it lost is re-sent at once).")
    reconcile_seconds: float = Field(10.0, gt=0)
    listener_url: str | None = Field(
        None, description="A worker on another host: the receiving node's DICOMweb root "
        "(https://recv:8080/dicomweb). Studies are fetched from it (WADO-RS) and results sent "
        "back to it (STOW-RS) instead of reading and writing this host's data_dir. Such a "
        "worker never consumes the delivery queue (cpu): the result files are on the receiver.")
    listener_token: SecretStr | None = Field(
        None, description="The receiving node's [dicomweb] token.")
    listener_ca_file: Path | None = Field(
        None, description="CA bundle that signed the receiving node's certificate "
        "(default: the system's).")
    fetch_timeout_seconds: float = Field(
        60.0, gt=0, description="Connect and read timeout of one DICOMweb request.")
    fetch_attempts: int = Field(
        4, ge=1, le=20, description="Tries of one fetch or store (0.5 s, doubling, between).")

    @field_validator("listener_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"listener_url must be an http(s) URL, not {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _token(self) -> "WorkerSettings":
        if self.listener_url and not (self.listener_token and
                                      self.listener_token.get_secret_value()):
            raise ValueError("worker.listener_url needs worker.listener_token (the receiving "
                             "node's [dicomweb] token)")
        return self


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: bool = Field(False, alias="json")

    model_config = {"extra": "forbid", "populate_by_name": True}
