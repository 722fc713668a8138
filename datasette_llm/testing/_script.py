"""The router's script: the replies in the order added, how often each was used, and choosing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._errors import UnmatchedPromptError
from ._failures import describe_call, unmatched_message
from ._replies import ScriptedReply

if TYPE_CHECKING:
    from ._matching import Matcher
    from ._provider import ScriptedFailure
    from ._records import ModelCall
    from ._replies import FakeReply, ReplyCallback

__all__ = ["Script"]


class Script:
    """The scripted replies of one router and what became of them.

    Attributes:
        replies: The replies, in the order they were added.
        uses: How many calls each reply (by number) answered.
        unmatched: A line describing each call that no reply matched.
    """

    __slots__ = ("replies", "unmatched", "uses")

    def __init__(self) -> None:
        self.replies: list[ScriptedReply] = []
        self.uses: dict[int, int] = {}
        self.unmatched: list[str] = []

    def add(
        self,
        kind: Literal["response", "callback", "exception"],
        matcher: Matcher,
        *,
        is_reusable: bool,
        is_optional: bool,
        reply: FakeReply | None = None,
        callback: ReplyCallback | None = None,
        exception: BaseException | None = None,
        failure: ScriptedFailure | None = None,
    ) -> None:
        """Add a reply after the others."""
        number = len(self.replies) + 1
        self.replies.append(
            ScriptedReply(
                number=number,
                kind=kind,
                matcher=matcher,
                reply=reply,
                callback=callback,
                exception=exception,
                failure=failure,
                is_reusable=is_reusable,
                is_optional=is_optional,
            )
        )
        self.uses[number] = 0

    def choose(self, call: ModelCall) -> ScriptedReply | None:
        """Return the first unused reply matching ``call`` and count its use.

        Returns ``None`` when nothing is scripted (the default reply answers).

        Raises:
            UnmatchedPromptError: Replies are scripted and none matches ``call``.
        """
        __tracebackhide__ = True
        if not self.replies:
            return None
        for scripted in self.replies:
            if self.uses[scripted.number] and not scripted.is_reusable:
                continue
            if not scripted.matcher.mismatches(call):
                self.uses[scripted.number] += 1
                return scripted
        self.unmatched.append(describe_call(call))
        raise UnmatchedPromptError(unmatched_message(call, self.replies, self.uses))

    def unused(self, *, optional: bool) -> list[ScriptedReply]:
        """Return the replies never used, counting ``is_optional`` ones only if ``optional``."""
        return [
            scripted
            for scripted in self.replies
            if not self.uses[scripted.number] and (optional or not scripted.is_optional)
        ]
