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


def test_inference_section_is_the_engine_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[inference] is inference.InferenceSettings plus the daemon's own keys: every engine key
    (opt_batch, trt_workspace_mb, ...) is a TOML key and an environment override, and the engine
    cache defaults to <data_dir>/engines, resolved once when the settings load."""
    from inference import InferenceSettings

    cfg = tmp_path / "pacsai.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                   '[inference]\nopt_batch = 4\ntrt_workspace_mb = 2048\ninter_op_threads = 2\n'
                   'max_batch = 8\nmax_delay_ms = 5\n')
    monkeypatch.setenv("PACSAI_INFERENCE__PRECISION", "fp16")
    s = load_settings(cfg)
    assert isinstance(s.inference, InferenceSettings)
    assert (s.inference.opt_batch, s.inference.trt_workspace_mb, s.inference.inter_op_threads) == (4, 2048, 2)
    assert s.inference.precision == "fp16" and s.inference.max_delay_ms == 5
    assert s.inference.engine_cache_dir == (tmp_path / "data" / "engines").resolve() == s.engine_cache_dir

    cfg.write_text('[inference]\nengine_cache_dir = "plans"\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings(cfg).inference.engine_cache_dir == (tmp_path / "plans").resolve()

    result = runner.invoke(app, ["config", "check", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["inference"]
    assert shown["engine_cache_dir"] == str((tmp_path / "plans").resolve())
    assert shown["opt_batch"] == 8 and shown["trt_workspace_mb"] == 1024

    cfg.write_text('[inference]\nopt_batch = 0\nbackend = "tensorrt"\ndevice = "cpu"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "inference.opt_batch" in str(err.value)
    cfg.write_text('[inference]\nbackend = "tensorrt"\ndevice = "cpu"\n')
    with pytest.raises(ConfigError, match="inference: .*cannot run with device"):
        load_settings(cfg)


def test_the_example_lists_the_engine_keys() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "pacsai.example.toml"
    section = example.read_text().split("\n[inference]\n", 1)[1].split("\n[", 1)[0]
    for key in ("backend", "device", "precision", "max_batch", "opt_batch", "trt_workspace_mb", "engine_cache_dir"):
        assert f"{key} =" in section, key


def test_worker_models_get_the_inference_section_as_it_is(tmp_path: Path) -> None:
    """worker.tasks.models() hands [inference] to the model cache without mapping fields."""
    import subprocess
    import sys

    cfg = tmp_path / "pacsai.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
                   f'[inference]\nopt_batch = 3\ntrt_workspace_mb = 512\ndevice = "cpu"\n'
                   f'models_dirs = ["{tmp_path / "site"}"]\n')
    code = ("import json; from worker import tasks; m = tasks.models(); "
            "print(json.dumps({'settings': m.settings.model_dump(mode='json'), 'roots': [str(r) for r in m.roots], "
            "'same': m.settings is tasks.settings.inference}))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PACSAI_")}
    env["PACSAI_CONFIG"] = str(cfg)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["same"] is True
    got = data["settings"]
    assert (got["opt_batch"], got["trt_workspace_mb"], got["device"]) == (3, 512, "cpu")
    assert got["engine_cache_dir"] == str((tmp_path / "data" / "engines").resolve())
    assert data["roots"][0] == str(tmp_path / "site")
