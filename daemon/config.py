"""pacsai settings: one TOML file, every key overridable by environment variables.

Precedence (highest first): explicit keyword arguments, ``PACSAI_<SECTION>__<KEY>``
environment variables, the TOML file (``--config`` or ``PACSAI_CONFIG``), defaults.
The defaults alone give a working embedded system.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.routing.rules import RouteRule, Router, check_rules

CONFIG_ENV = "PACSAI_CONFIG"
_config_file: contextvars.ContextVar[str | None] = contextvars.ContextVar("config_file", default=None)

from daemon.sections import (  # noqa: E402 - the sections, re-exported: import them from here
    TLSSettings,
    ListenerSettings,
    StorageSettings,
    DatabaseSettings,
    BrokerSettings,
    StudySettings,
    DestinationSettings,
    InferenceConfig,
    PipelineSettings,
    ResultsSettings,
    DeliverySettings,
    QueueSettings,
    AdminSettings,
    DicomwebSettings,
    RetentionSettings,
    ModelExpectation,
    MonitoringSettings,
    WorkerSettings,
    LoggingSettings,
    _default_pipelines,
)

class Settings(BaseSettings):
    """The whole configuration of one pacsai installation."""

    model_config = SettingsConfigDict(
        env_prefix="PACSAI_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    study: StudySettings = Field(default_factory=StudySettings)
    destinations: list[DestinationSettings] = Field(default_factory=list)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    pipelines: list[PipelineSettings] = Field(default_factory=_default_pipelines)
    results: ResultsSettings = Field(default_factory=ResultsSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    routes: list[RouteRule] = Field(default_factory=list)
    queues: QueueSettings = Field(default_factory=QueueSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _config_file.get() or os.environ.get(CONFIG_ENV)
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)

    @model_validator(mode="after")
    def _unique_destinations(self) -> "Settings":
        names = [d.name for d in self.destinations]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"destination names must be unique: {sorted(dupes)}")
        pipes = [p.name for p in self.pipelines]
        if len(set(pipes)) != len(pipes):
            raise ValueError(f"pipeline names must be unique: {pipes}")
        errors, _ = check_rules(self.routes, pipes, names)
        if errors:
            raise ValueError("invalid routing rules: " + "; ".join(errors))
        if self.worker.listener_url and not (self.broker.url and self.broker.url.get_secret_value()
                                             and self.database.url
                                             and self.database.url.get_secret_value()):
            raise ValueError("worker.listener_url (a worker on another host) needs broker.url and "
                             "database.url: the receiving node's Redis and PostgreSQL")
        if self.worker.task_soft_time_limit >= self.worker.task_time_limit:
            raise ValueError("worker.task_soft_time_limit must be below worker.task_time_limit")
        # The one place the daemon's engine cache default is resolved: <data_dir>/engines
        # unless [inference] engine_cache_dir (or PACSAI_INFERENCE__ENGINE_CACHE_DIR) names one.
        inf = self.inference
        if "engine_cache_dir" in inf.model_fields_set:
            inf.engine_cache_dir = inf.engine_cache_dir.expanduser().resolve()
        else:
            inf.engine_cache_dir = self.data_dir / "engines"
        return self

    _config_path: Path | None = PrivateAttr(default=None)

    @property
    def config_path(self) -> Path | None:
        """The TOML file these settings were read from, if any."""
        return self._config_path

    def router(self) -> Router:
        """The router this configuration describes (pipelines, ``[[routes]]``, destinations)."""
        return Router([p.name for p in self.pipelines], list(self.routes),
                      {d.name: d.ae_title for d in self.destinations})

    # Derived paths -----------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.storage.data_dir.expanduser().resolve()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def database_url(self) -> str:
        if self.database.url is not None and self.database.url.get_secret_value():
            return self.database.url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'pacsai.db'}"

    @property
    def broker_url(self) -> str:
        if self.broker.url is not None and self.broker.url.get_secret_value():
            return self.broker.url.get_secret_value()
        return "filesystem://localhost//"  # a host name keeps kombu from warning that none was given

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def fetched_dir(self) -> Path:
        """A remote worker's copies of the study versions it analyses (removed after each job)."""
        return self.data_dir / "fetched"

    @property
    def engine_cache_dir(self) -> Path:
        """TensorRT plans: ``inference.engine_cache_dir`` (resolved when the settings load)."""
        return self.inference.engine_cache_dir

    @property
    def embedded_broker_dir(self) -> Path:
        return self.data_dir / "broker"


class ConfigError(Exception):
    """The configuration could not be loaded; the message names the bad key."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_file`` (or ``$PACSAI_CONFIG``), env and overrides."""
    from pydantic import ValidationError

    path = str(config_file) if config_file is not None else os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise ConfigError(f"configuration file not found: {path}")
    token = _config_file.set(str(Path(path).resolve()) if path else None)
    try:
        settings = Settings(**overrides)
        settings._config_path = Path(path).resolve() if path else None
        return settings
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" if key else msg)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except (OSError, ValueError) as exc:  # TOML syntax errors surface as ValueError
        raise ConfigError(f"cannot read configuration: {exc}") from None
    finally:
        _config_file.reset(token)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked."""
    data = settings.model_dump(mode="json", by_alias=True)

    # SecretStr already dumps as '**********'; show the derived URLs masked too.
    data["database"]["effective_url"] = _mask_url(settings.database_url)
    data["broker"]["effective_url"] = _mask_url(settings.broker_url)
    return data


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (e.g. redis://)
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url
