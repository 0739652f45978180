"""Configuration: defaults, TOML, environment overrides, clear errors, masked secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from daemon.config import ConfigError, load_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PACSAI_"):
            monkeypatch.delenv(key)


def test_defaults_give_an_embedded_system(tmp_path: Path) -> None:
    s = load_settings()
    assert s.listener.ae_title == "PACSAI"
    assert s.listener.port == 11112
    assert s.listener.allowed_calling_aets == []
    assert s.study.quiet_seconds == 2
    assert s.admin.host == "127.0.0.1"
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("pacsai.db")
    assert s.broker_url == "filesystem://localhost//"


def test_toml_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "pacsai.toml"
    cfg.write_text(
        '[listener]\nport = 104\nallowed_calling_aets = ["ORTHANC"]\n'
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "10.0.0.5"\nport = 4242\n'
    )
    monkeypatch.setenv("PACSAI_LISTENER__PORT", "11113")
    s = load_settings(cfg)
    assert s.listener.port == 11113  # environment wins over the file
    assert s.listener.allowed_calling_aets == ["ORTHANC"]
    assert s.destinations[0].name == "pacs" and s.destinations[0].port == 4242


def test_bad_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "pacsai.toml"
    cfg.write_text('[listener]\nport = 70000\nae_titel = "X"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "listener.port" in str(err.value)
    assert "listener.ae_titel" in str(err.value)


def test_config_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[database]\nurl = "postgresql+psycopg://pacsai:s3cret@db/pacsai"\n'
                    '[broker]\nurl = "redis://:hunter2@redis:6379/0"\n')
    result = runner.invoke(app, ["config", "check", "--config", str(good)])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and "hunter2" not in result.output
    data = json.loads(result.output)
    assert data["database"]["effective_url"] == "postgresql+psycopg://pacsai:***@db/pacsai"
    assert data["broker"]["effective_url"] == "redis://:***@redis:6379/0"

    bad = tmp_path / "bad.toml"
    bad.write_text('[listener]\nae_title = "THIS-TITLE-IS-FAR-TOO-LONG"\n')
    result = runner.invoke(app, ["config", "check", "--config", str(bad)])
    assert result.exit_code == 2
    assert "listener.ae_title" in result.output

    result = runner.invoke(app, ["config", "check", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert "not found" in result.output

    broken = tmp_path / "broken.toml"
    broken.write_text("[listener\n")
    result = runner.invoke(app, ["config", "check", "--config", str(broken)])
    assert result.exit_code == 2


def test_the_documented_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "pacsai.example.toml"
    s = load_settings(example)
    assert [p.name for p in s.pipelines] == ["cxr-classifier", "cxr-anomaly"]
    assert s.queues.inference == ["infer"] and s.worker.concurrency == 2
