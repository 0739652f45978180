"""Routing rules: order, first match, default, not routed, back to the caller, bad rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from daemon.config import ConfigError, load_settings
from daemon.routing.rules import NotRouted, Route, RouteRule, Router, StudyFacts

CT = "1.2.840.10008.5.1.4.1.1.2"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def rules(*items: dict) -> list[RouteRule]:
    return [RouteRule.model_validate(i) for i in items]


RULES = rules(
    {"name": "stat chest", "match": {"modality": ["DX", "CR"], "body_part": "CHEST|THORAX",
                                     "calling_aet": ["ER_PACS"]},
     "action": {"pipelines": ["cxr"], "priority": "stat", "destinations": ["@calling"]}},
    {"name": "chest x-ray", "match": {"modality": ["DX", "CR"], "body_part": "chest"},
     "action": {"pipelines": ["cxr", "anomaly"], "destinations": ["pacs"]}},
    {"name": "big ct", "match": {"modality": ["CT"], "min_images": 100,
                                 "series_description": "axial"},
     "action": {"pipelines": ["ct"], "priority": "low"}},
    {"name": "research", "match": {"study_description": "^research"}, "action": None},
    {"name": "everything else", "default": True, "action": {"pipelines": ["anomaly"]}},
)
ROUTER = Router(["cxr", "anomaly", "ct"], RULES, {"pacs": "PACS", "er": "ER_PACS"})


def facts(instances: list[tuple[str, str, str, str]], **kw: str) -> StudyFacts:
    return StudyFacts(instances=instances, **kw)


def test_first_match_wins_with_priority_and_calling_ae() -> None:
    dx = [("DX", "CHEST", "PA", DX)]
    stat = ROUTER.route(facts(dx, calling_aet="ER_PACS"))
    assert stat == [Route("cxr", priority="stat", destinations=("er",), rule="stat chest")]
    routine = ROUTER.route(facts(dx, calling_aet="WARD"))
    assert [r.pipeline for r in routine] == ["cxr", "anomaly"]
    assert routine[0].destinations == ("pacs",) and routine[0].rule == "chest x-ray"


def test_instance_conditions_hold_together_and_counts() -> None:
    # CT body part matches nothing here; a DX of the knee does not match the chest rules.
    knee = ROUTER.route(facts([("DX", "KNEE", "", DX), ("SR", "CHEST", "", SR)]))
    assert knee[0].rule == "everything else"
    small_ct = facts([("CT", "CHEST", "Axial 1mm", CT)] * 50)
    assert ROUTER.route(small_ct)[0].rule == "everything else"
    big_ct = facts([("CT", "CHEST", "Axial 1mm", CT)] * 150 + [("CT", "", "scout", CT)])
    assert ROUTER.route(big_ct) == [Route("ct", priority="low", rule="big ct")]


def test_not_routed_reasons() -> None:
    research = ROUTER.route(facts([("MR", "", "", CT)], study_description="Research protocol"))
    assert research == NotRouted("rule 'research' says not to analyse")
    no_default = Router(["cxr"], RULES[:2], {})
    result = no_default.route(facts([("MG", "BREAST", "", DX)], calling_aet="X"))
    assert isinstance(result, NotRouted) and "no rule matched" in result.reason
    # back to the caller, but the caller is no configured destination
    lost = Router(["cxr"], RULES, {}).route(facts([("DX", "CHEST", "", DX)], calling_aet="ER_PACS"))
    assert isinstance(lost, NotRouted) and "not a configured destination" in lost.reason


def test_no_rules_means_every_pipeline() -> None:
    assert [r.pipeline for r in Router(["a", "b"]).route(StudyFacts())] == ["a", "b"]
    assert isinstance(Router([]).route(StudyFacts()), NotRouted)


def test_invalid_rules_are_reported_by_config_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("PACSAI_")]:
        monkeypatch.delenv(key)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[routes]]\nname = "broken"\n[routes.match]\nbody_part = "CHEST("\n'
        '[routes.action]\npipelines = ["cxr-anomaly"]\n'
    )
    with pytest.raises(ConfigError, match=r"routes\.0\.match\.body_part.*invalid regular expression"):
        load_settings(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(
        '[[routes]]\nname = "chest"\n[routes.match]\nmodality = ["DX"]\n'
        '[routes.action]\npipelines = ["no-such-pipeline"]\ndestinations = ["nowhere"]\n'
        '[[routes]]\nname = "rest"\ndefault = true\n[routes.action]\npipelines = ["cxr-anomaly"]\n'
    )
    result = CliRunner().invoke(app, ["config", "check", "--config", str(unknown)])
    assert result.exit_code == 2
    assert "routes[0] (chest): unknown pipeline 'no-such-pipeline'" in result.output
    assert "unknown destination 'nowhere'" in result.output
    early_default = tmp_path / "early.toml"
    early_default.write_text(
        '[[routes]]\nname = "rest"\ndefault = true\n[routes.action]\npipelines = ["cxr-anomaly"]\n'
        '[[routes]]\nname = "never"\n[routes.action]\npipelines = ["cxr-anomaly"]\n'
    )
    result = CliRunner().invoke(app, ["config", "check", "--config", str(early_default)])
    assert result.exit_code == 2 and "the default rule must be the last" in result.output
    no_default = tmp_path / "nodefault.toml"
    no_default.write_text(
        '[[routes]]\nname = "dx"\n[routes.match]\nmodality = ["DX"]\n'
        '[routes.action]\npipelines = ["cxr-anomaly"]\npriority = "stat"\n'
    )
    result = CliRunner().invoke(app, ["config", "check", "--config", str(no_default)])
    assert result.exit_code == 0 and "no default rule" in result.output
