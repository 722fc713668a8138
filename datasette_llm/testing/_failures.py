"""The text of every failure the router reports: what happened, what was scripted, the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._matching import Matcher

if TYPE_CHECKING:
    from ._records import ModelCall
    from ._replies import ScriptedReply

__all__ = [
    "blocked_message",
    "describe_call",
    "embedding_blocked_message",
    "get_call_message",
    "repr_router",
    "stop_message",
    "stopped_message",
    "unmatched_message",
]


def describe_call(call: ModelCall) -> str:
    """Describe a call in one line: purpose, model, (shortened) prompt and error, if any."""
    prompt = call.prompt if len(call.prompt) <= 60 else call.prompt[:57] + "..."
    error = f", error={call.error!r}" if call.error is not None else ""
    return f"purpose={call.purpose!r}, model_id={call.model_id!r}, prompt={prompt!r}{error}"


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def unmatched_message(
    call: ModelCall, replies: Sequence[ScriptedReply], uses: dict[int, int]
) -> str:
    """Explain why no scripted reply answers ``call``, reply by reply, and how to fix it."""
    lines = [
        f"No scripted reply matches this call: {describe_call(call)}",
        "Scripted replies:",
    ]
    used_match = False
    for scripted in replies:
        reasons = scripted.matcher.mismatches(call)
        if not reasons and uses[scripted.number]:
            used_match = True
            reasons = ["matches, but was already used"]
        lines.append(f"  {scripted.number}. {scripted.describe()} - {'; '.join(reasons)}")
    if used_match:
        lines.append(
            "Add another reply for this call, or pass is_reusable=True to let a reply answer "
            "every matching call."
        )
    else:
        example = Matcher(purpose=call.purpose, model_id=call.model_id).describe()
        arguments = "".join(f", {part}" for part in example)
        lines.append(f"Add a reply for this call, e.g. router.add_response(text='...'{arguments}).")
    return "\n".join(lines)


def blocked_message(description: str) -> str:
    """Explain that a request to a real model was refused, and how to route it instead."""
    return (
        f"FakeModelRouter blocked a request to the real model {description}: no prompt may "
        "reach a real model while the router is active. The code under test prompted an llm "
        "model it got without datasette-llm (llm.get_async_model(), LLM.models()); get it "
        "with LLM(datasette).model(...) or .group(...) so the router answers it."
    )


def embedding_blocked_message(description: str, model_id: object) -> str:
    """Explain that a real embedding model was refused, and how to allow a test one."""
    allowed = f"allow_embedding_models=[{model_id!r}]"
    return (
        f"FakeModelRouter blocked a request to the real embedding model {description}: no "
        "request may reach a real model while the router is active, and the router does not "
        "fake embeddings. Embed outside the router's scope or, for an embedding model of your "
        f"test suite, allow it with @pytest.mark.fake_model_router({allowed}) (the fixture) "
        f"or FakeModelRouter({allowed})."
    )


def stopped_message(model_id: str) -> str:
    """Explain that a fake model was prompted after its router stopped, and what to do."""
    return (
        f"The fake model {model_id!r} was prompted after the FakeModelRouter that made it "
        "stopped: a model obtained while the router was active (LLM(datasette).model(...) or "
        ".group(...)) answers only until the router stops. Nothing was sent to a real model "
        "and nothing was recorded. Prompt it inside the router's scope (the test that uses the "
        "fake_model_router fixture, or the `with FakeModelRouter():` block), or obtain the "
        "model again after the router has stopped to get the real one."
    )


def stop_message(
    unmatched: Sequence[str],
    blocked: Sequence[str],
    unused: Sequence[ScriptedReply],
    opt_out: str,
) -> str | None:
    """Return what went wrong in a test when the router stops, or ``None`` if nothing did."""
    sections: list[str] = []
    if unmatched:
        listing = "".join(f"\n  - {line}" for line in unmatched)
        sections.append(
            f"{_plural(len(unmatched), 'prompt', 'prompts')} matched no scripted reply "
            f"(the UnmatchedPromptError was raised inside the code under test):{listing}"
        )
    if blocked:
        listing = "".join(f"\n  - {line}" for line in blocked)
        count = _plural(len(blocked), "request", "requests")
        sections.append(
            f"{count} to a real model {'was' if len(blocked) == 1 else 'were'} blocked:{listing}"
        )
    if unused:
        verb = "was" if len(unused) == 1 else "were"
        count = _plural(len(unused), "scripted reply", "scripted replies")
        listing = "".join(f"\n  {reply.number}. {reply.describe()}" for reply in unused)
        sections.append(
            f"{count} {verb} never used:{listing}\n"
            f"Remove {'it' if len(unused) == 1 else 'them'}, pass is_optional=True when "
            f"adding {'it' if len(unused) == 1 else 'them'}, or {opt_out}."
        )
    if not sections:
        return None
    return "FakeModelRouter: " + "\n".join(sections)


def get_call_message(matcher: Matcher, found: int, calls: Sequence[ModelCall]) -> str:
    """Explain that ``get_call()`` did not find exactly one call, listing every call."""
    conditions = ", ".join(matcher.describe()) or "no conditions"
    listing = "".join(f"\n  - {describe_call(call)}" for call in calls) or " none"
    return (
        f"Expected exactly one call matching {conditions}, found {found}. Calls recorded:{listing}"
    )


def repr_router(calls: int, replies: int, unused: int) -> str:
    """Return the router's repr, counting calls and replies."""
    counted = _plural(calls, "call", "calls")
    if not replies:
        return f"<FakeModelRouter: {counted}, no scripted replies>"
    scripted = _plural(replies, "scripted reply", "scripted replies")
    return f"<FakeModelRouter: {counted}, {scripted} ({unused} unused)>"
