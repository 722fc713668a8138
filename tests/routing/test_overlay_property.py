"""A property of live routing edits: for generated datasette.yaml sections and generated
sequences of field-level edits, reverts and datasette.yaml changes, every purpose's effective
configuration is datasette.yaml with the edited fields replaced, never widens its policy, and
keeps every field not edited as datasette.yaml has it (keys, options and limits included).

The edits go through the form's own rule (``patched``: a write changes only the fields its
editor changed) and the overlay the calls use (``routing.overlay.overlay``), over the test
suite's installed models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from datasette_llm._operator.edit import FIELDS, patched
from datasette_llm.config.overrides import RouteOverride, StoredOverride
from datasette_llm.config.parser import parse_config
from datasette_llm.config.values import ModelRef
from datasette_llm.routing.models import build_registry
from datasette_llm.routing.overlay import overlay
from datasette_llm.routing.policy import Policy
from tests.llm_models import TestModelsPlugin

MODELS: Final = ("test-a", "test-b", "test-c", "test-keyed", "test-keyed-2")
PURPOSES: Final = ("p1", "p2", "p3")
# Each model's limits, wherever a reference gives them (they must agree: the parser checks).
LIMITS: Final = {"test-a": (600.0, 2), "test-b": (None, 1), "test-keyed": (120.0, None)}


@st.composite
def references(draw: st.DrawFn) -> object:
    """A model reference as datasette.yaml writes it: an id, or a mapping with extras."""
    model = draw(st.sampled_from(MODELS))
    if not draw(st.booleans()):
        return model
    ref: dict[str, object] = {"model": model}
    if draw(st.booleans()):
        ref["key"] = {"$env": f"KEY_{draw(st.integers(0, 3))}"}
    if draw(st.booleans()):
        ref["options"] = {"temperature": draw(st.sampled_from([0.0, 0.5, 1.0]))}
    if model in LIMITS and draw(st.booleans()):
        rpm, concurrency = LIMITS[model]
        if rpm is not None:
            ref["rpm"] = rpm
        if concurrency is not None:
            ref["concurrency"] = concurrency
    return ref


@st.composite
def sections(draw: st.DrawFn) -> dict[str, object]:
    """A ``plugins: datasette-llm:`` section with purposes, fallbacks and blocklists."""
    purposes: dict[str, object] = {}
    for name in draw(st.lists(st.sampled_from(PURPOSES), min_size=1, unique=True)):
        purpose: dict[str, object] = {"model": draw(references())}
        if draw(st.booleans()):
            purpose["fallbacks"] = draw(st.lists(references(), max_size=3))
        if draw(st.booleans()):
            purpose["blocked_models"] = draw(st.lists(st.sampled_from(MODELS), max_size=2))
        purposes[name] = purpose
    section: dict[str, object] = {"purposes": purposes}
    if draw(st.booleans()):
        section["blocked_models"] = draw(st.lists(st.sampled_from(MODELS), max_size=1))
    return section


@dataclass(frozen=True)
class Edit:
    """One submitted form: the purpose, the fields the editor changed and their values."""

    purpose: str
    changed: frozenset[str]
    submitted: RouteOverride


@st.composite
def edits(draw: st.DrawFn) -> Edit | str | dict[str, object]:
    """An edit, a revert (the purpose's name) or a new datasette.yaml section."""
    kind = draw(st.sampled_from(["edit", "edit", "edit", "revert", "yaml"]))
    if kind == "yaml":
        return draw(sections())
    purpose = draw(st.sampled_from(PURPOSES))
    if kind == "revert":
        return purpose
    changed = frozenset(draw(st.lists(st.sampled_from(FIELDS), min_size=1, unique=True)))
    choices: list[dict[str, object]] = [
        {"temperature": 0.2},
        {"style": "terse"},
        {"temprature": 1.0},  # a typo: an override the overlay must leave out
    ]
    options = draw(st.sampled_from(choices))
    submitted = RouteOverride(
        model=draw(st.none() | st.sampled_from(MODELS)),
        fallbacks=draw(st.none() | st.lists(st.sampled_from(MODELS), max_size=2).map(tuple)),
        options=draw(st.none() | st.just(MappingProxyType(options))),
    )
    return Edit(purpose, changed, submitted)


def model_id(ref: object) -> object:
    return ref.get("model") if isinstance(ref, dict) else ref


def same_ref(ref: ModelRef, written: object) -> bool:
    """Whether ``ref`` is datasette.yaml's reference ``written``, with all it carries."""
    other = parse_config({"default_model": written}).default_model
    assert other is not None
    return ref == other and dict(ref.options) == dict(other.options)  # eq leaves options out


@pytest.fixture(scope="module")
def registry() -> Iterator[Any]:
    import os

    import llm

    # The keys the references name, so that a keyed model is admitted.
    names = [f"KEY_{number}" for number in range(4) if f"KEY_{number}" not in os.environ]
    os.environ.update({name: f"value-of-{name}" for name in names})
    plugin = TestModelsPlugin()
    llm.plugins.pm.register(plugin, name="overlay-property-models")
    try:
        yield build_registry()
    finally:
        llm.plugins.pm.unregister(name="overlay-property-models")
        for name in names:
            del os.environ[name]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=sections(), steps=st.lists(edits(), max_size=8))
def test_the_configuration_in_effect_is_the_yaml_with_the_edited_fields_replaced(
    registry: Any, first: dict[str, object], steps: list[Edit | str | dict[str, object]]
) -> None:
    section = first
    stored: dict[str, RouteOverride] = {}
    last: dict[tuple[str, str], object] = {}  # (purpose, field): the last value written
    for step in steps:
        if isinstance(step, dict):
            section = step
        elif isinstance(step, str):
            stored.pop(step, None)
            for field in FIELDS:
                last.pop((step, field), None)
        else:
            current = stored.get(step.purpose, RouteOverride())
            stored[step.purpose] = patched(current, step.submitted, step.changed)
            for field in step.changed:
                last[step.purpose, field] = getattr(step.submitted, field)

    # The store holds, field by field, the last value written (the form's rule).
    for name, override in stored.items():
        for field in FIELDS:
            assert getattr(override, field) == last.get((name, field))

    base = parse_config(section)
    overrides = {
        name: StoredOverride(name, override, 1, None, "")
        for name, override in stored.items()
        if not override.empty
    }
    layers = overlay(section, base, overrides, registry)
    purposes: dict[str, Any] = section["purposes"]  # type: ignore[assignment]
    for name, written in purposes.items():
        effective = layers.config.purposes[name]
        everywhere: Any = section.get("blocked_models", ())
        blocked = {*everywhere, *written.get("blocked_models", ())}
        if name not in layers.applied:
            event("ignored" if name in layers.ignored else "no override")
            assert effective == base.purposes[name]  # ignored or none: datasette.yaml's
            continue
        event("applied")
        override = layers.applied[name].override
        # Never widens: an override never routes to a model datasette.yaml blocks.
        assert not {override.model, *(override.fallbacks or ())} & blocked
        assert effective.model is not None
        if override.model is None or override.model == model_id(written["model"]):
            if override.options is None:
                assert same_ref(effective.model, written["model"])  # key, options, limits
        else:
            assert effective.model.model_id == override.model
        if override.options is not None:
            assert dict(effective.model.options) == dict(override.options)
        if override.fallbacks is None:
            assert effective.fallbacks == base.purposes[name].fallbacks
        else:
            assert tuple(ref.model_id for ref in effective.fallbacks or ()) == override.fallbacks
            yaml_refs = {model_id(ref): ref for ref in reversed(written.get("fallbacks", []))}
            for ref in effective.fallbacks or ():
                if ref.model_id in yaml_refs:
                    assert same_ref(ref, yaml_refs[ref.model_id])
        # Limits stay with their model, for every purpose, whatever was re-routed.
        for purpose in purposes:
            policy = Policy(layers.config, purpose, registry)
            for ref in base.limit_refs():
                reference = policy.references[ref.model_id]
                assert (reference.rpm, reference.concurrency) == (ref.rpm, ref.concurrency)
