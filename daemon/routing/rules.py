"""Routing: which pipelines a completed study version goes through, where results go.

Rules come from the ``[[routes]]`` tables of the configuration and are evaluated in
order; the first match wins. A rule with ``default = true`` (or no conditions)
matches everything and ends the list. Conditions are data, never code: lists of
accepted values, regular expressions and numeric bounds (no ``eval``).

Instance-level conditions (modality, body part, series description, SOP class) hold
when at least one instance of the study satisfies all of them together; study-level
conditions (study description, calling and called AE title, number of images) apply
to the study. Without any rule, every study goes through every configured pipeline
and its results to every destination.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator


PRIORITIES = ("stat", "routine", "low")
Priority = Literal["stat", "routine", "low"]
CALLING_AE = "@calling"  # destination placeholder: back to the AE that sent the study


def redis_priority(priority: str) -> int:
    """Celery message priority for the Redis transport, where 0 is served first."""
    return {"stat": 0, "routine": 5, "low": 9}.get(priority, 5)


def _regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


class RouteMatch(BaseModel):
    """Conditions of a rule; all given ones must hold."""

    model_config = {"extra": "forbid"}

    modality: list[str] | None = None
    body_part: str | None = Field(None, description="Regex, full match, case-insensitive.")
    series_description: str | None = Field(None, description="Regex, searched, case-insensitive.")
    study_description: str | None = Field(None, description="Regex, searched, case-insensitive.")
    sop_class: list[str] | None = None
    calling_aet: list[str] | None = None
    called_aet: list[str] | None = None
    min_images: int | None = Field(None, ge=0)
    max_images: int | None = Field(None, ge=0)

    _check = field_validator("body_part", "series_description", "study_description")(_regex)

    @model_validator(mode="after")
    def _bounds(self) -> "RouteMatch":
        if self.min_images is not None and self.max_images is not None \
                and self.min_images > self.max_images:
            raise ValueError("min_images is larger than max_images")
        return self

    def is_empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class RouteAction(BaseModel):
    model_config = {"extra": "forbid"}

    pipelines: list[str] = Field(min_length=1)
    destinations: list[str] | None = Field(None, description="None: every destination.")
    priority: Priority = "routine"


class RouteRule(BaseModel):
    """One ``[[routes]]`` entry."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64)
    default: bool = False
    match: RouteMatch = Field(default_factory=RouteMatch)
    action: RouteAction | None = Field(None, description="None: do not analyse (not routed).")

    @model_validator(mode="after")
    def _default_has_no_conditions(self) -> "RouteRule":
        if self.default and not self.match.is_empty():
            raise ValueError("a default rule cannot have match conditions")
        return self


@dataclass(frozen=True)
class StudyFacts:
    """What rules look at: the study and its instances (no patient data)."""

    study_description: str = ""
    calling_aet: str = ""
    called_aet: str = ""
    instances: Sequence[tuple[str, str, str, str]] = ()  # modality, body part, series desc, SOP class

    @property
    def images(self) -> int:
        return len(self.instances)


@dataclass(frozen=True)
class Route:
    pipeline: str
    queue: str = "infer"
    priority: str = "routine"
    destinations: tuple[str, ...] | None = None
    rule: str = "default"


@dataclass(frozen=True)
class NotRouted:
    reason: str


@dataclass
class Router:
    """Evaluates the rules for a study (see module docstring)."""

    pipelines: list[str]
    rules: list[RouteRule] = field(default_factory=list)
    destinations: dict[str, str] = field(default_factory=dict)  # name -> AE title

    def route(self, facts: StudyFacts) -> list[Route] | NotRouted:
        if not self.pipelines:
            return NotRouted("no pipeline is configured")
        if not self.rules:
            return [Route(p) for p in self.pipelines]
        for rule in self.rules:
            if rule.default or matches(rule.match, facts):
                if rule.action is None:
                    return NotRouted(f"rule {rule.name!r} says not to analyse")
                dests = self._destinations(rule.action.destinations, facts)
                if isinstance(dests, NotRouted):
                    return dests
                return [Route(p, priority=rule.action.priority, destinations=dests, rule=rule.name)
                        for p in rule.action.pipelines]
        return NotRouted(f"no rule matched ({facts.images} image(s), modalities "
                         f"{sorted({i[0] for i in facts.instances}) or ['?']}, "
                         f"calling AE {facts.calling_aet or '?'})")

    def _destinations(self, names: list[str] | None, facts: StudyFacts) -> tuple[str, ...] | None | NotRouted:
        if names is None:
            return None
        out = []
        for name in names:
            if name == CALLING_AE:
                found = [n for n, aet in self.destinations.items() if aet == facts.calling_aet]
                if not found:
                    return NotRouted(f"results should go back to {facts.calling_aet or '?'}, "
                                     "which is not a configured destination")
                out.append(found[0])
            else:
                out.append(name)
        return tuple(dict.fromkeys(out))


def matches(m: RouteMatch, facts: StudyFacts) -> bool:
    flags = re.IGNORECASE
    if m.study_description is not None and not re.search(m.study_description, facts.study_description, flags):
        return False
    if m.calling_aet is not None and facts.calling_aet not in m.calling_aet:
        return False
    if m.called_aet is not None and facts.called_aet not in m.called_aet:
        return False
    if m.min_images is not None and facts.images < m.min_images:
        return False
    if m.max_images is not None and facts.images > m.max_images:
        return False
    modalities = {x.upper() for x in m.modality} if m.modality is not None else None
    per_instance = any(v is not None for v in (m.modality, m.body_part, m.series_description, m.sop_class))
    if not per_instance:
        return True
    for modality, body_part, series_description, sop_class in facts.instances:
        if modalities is not None and modality.upper() not in modalities:
            continue
        if m.body_part is not None and not re.fullmatch(m.body_part, body_part, flags):
            continue
        if m.series_description is not None and not re.search(m.series_description, series_description, flags):
            continue
        if m.sop_class is not None and sop_class not in m.sop_class:
            continue
        return True
    return False


def check_rules(rules: Sequence[RouteRule], pipelines: Sequence[str],
                destinations: Sequence[str]) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the rules as a whole, each naming the rule."""
    problems: list[str] = []
    warnings: list[str] = []
    known_pipes, known_dests = set(pipelines), set(destinations)
    for i, rule in enumerate(rules):
        where = f"routes[{i}] ({rule.name})"
        if rule.default and i != len(rules) - 1:
            problems.append(f"{where}: the default rule must be the last; rules after it never match")
        if rule.action is None:
            continue
        for p in rule.action.pipelines:
            if p not in known_pipes:
                problems.append(f"{where}: unknown pipeline {p!r} (configured: {sorted(known_pipes)})")
        for d in rule.action.destinations or []:
            if d != CALLING_AE and d not in known_dests:
                problems.append(f"{where}: unknown destination {d!r} (configured: {sorted(known_dests)})")
    if rules and not any(r.default or r.match.is_empty() for r in rules):
        warnings.append("routes: no default rule: studies that match no rule are recorded as "
                        "not routed (their files are kept for the retention period)")
    return problems, warnings
