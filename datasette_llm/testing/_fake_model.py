"""``FakeAsyncModel``: a real ``llm.AsyncModel`` whose answers come from the router's script."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llm
from pydantic import ConfigDict

from ._errors import RouterStoppedError
from ._failures import stopped_message

if TYPE_CHECKING:
    from llm.models import AsyncConversation, AsyncResponse

__all__ = ["Activation", "Answer", "AnswerFunction", "FakeAsyncModel"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the fake model streams for one request.

    Attributes:
        chunks: The text chunks, in order.
        usage: ``(input_tokens, output_tokens)``.
        tool_calls: Tool calls the model makes.
    """

    chunks: tuple[str, ...]
    usage: tuple[int, int]
    tool_calls: tuple[llm.ToolCall, ...]


AnswerFunction = Callable[["FakeAsyncModel", llm.Prompt, bool], Awaitable[Answer]]


class Activation:
    """One activation of a ``FakeModelRouter``: the fake models it made answer until it ends.

    Attributes:
        active: ``True`` until the router stops.
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True

    def end(self) -> None:
        """Stop every fake model of this activation from answering."""
        self.active = False


class _AnyAttachmentType(frozenset[str]):
    """Attachment types of a model that is not installed: every type is accepted."""

    def __contains__(self, item: object) -> bool:
        return True


class FakeAsyncModel(llm.AsyncModel):
    """Stand in for the model routing chose, answering from a ``FakeModelRouter``.

    It needs no key (``needs_key`` is ``None``) and supports schemas, tools and streaming. When
    the real model is installed its ``Options`` and attachment types are kept, so invalid
    options fail as they would in production; otherwise any option and attachment is accepted.

    Once the router stops, prompting it raises ``RouterStoppedError`` and records nothing.

    Attributes:
        model_id: The real model's id (an alias is resolved to it when the model is installed).
        installed: The real model, or ``None`` when it is not installed.
        activation: The activation of the router that made it.
    """

    can_stream = True
    supports_schema = True
    supports_tools = True
    needs_key = None

    class Options(llm.AsyncModel.Options):
        """Options for a model that is not installed: any option is accepted and recorded."""

        model_config = ConfigDict(extra="allow")

    def __init__(
        self,
        model_id: str,
        installed: llm.AsyncModel | None,
        answer: AnswerFunction,
        activation: Activation,
    ) -> None:
        self.model_id = model_id
        self.installed = installed
        self.activation = activation
        self._answer = answer
        if installed is not None:
            # llm builds options with self.Options(...): keep the real model's validation.
            setattr(self, "Options", installed.Options)  # noqa: B010
            self.attachment_types = installed.attachment_types
        else:
            self.attachment_types = _AnyAttachmentType({"*/*"})

    async def execute(
        self,
        prompt: llm.Prompt,
        stream: bool,
        response: AsyncResponse,
        conversation: AsyncConversation | None,
    ) -> AsyncGenerator[str, None]:
        """Ask the router for the answer, then stream it as llm expects."""
        __tracebackhide__ = True
        if not self.activation.active:
            raise RouterStoppedError(stopped_message(self.model_id))
        answer = await self._answer(self, prompt, stream)
        for tool_call in answer.tool_calls:
            response.add_tool_call(tool_call)
        response.set_usage(input=answer.usage[0], output=answer.usage[1])
        for chunk in answer.chunks:
            yield chunk
