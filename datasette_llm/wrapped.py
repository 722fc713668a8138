"""The wrapped model and conversation: llm's objects whose prompts take the one prompt path."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .chains import WrappedChainResponse
from .results import Group
from .targets import Sender, Target, in_conversation, prompt_model, send

if TYPE_CHECKING:
    from datasette.app import Datasette
    from llm import AsyncConversation, AsyncResponse
    from llm.models import AsyncChainResponse

    from .actors import Actor
    from .resolution import Resolution
    from .routing import Routed

__all__ = ["WrappedAsyncModel", "WrappedConversation", "wrap"]


class _Prompting:
    """What the wrapped model and the wrapped conversation share: where prompts go."""

    _target: Target
    _sender: Sender

    @property
    def model_id(self) -> str:
        """The id of the model."""
        return self._target.model_id

    @property
    def purpose(self) -> str | None:
        """The purpose name the model was asked for, or ``None``."""
        return self._target.purpose

    @property
    def resolution(self) -> Resolution:
        """How routing chose the model."""
        return self._target.resolution

    @property
    def group(self) -> Group | None:
        """The ``Group`` the prompts belong to, inside ``LLM.group()``; else ``None``."""
        return self._target.group

    async def prompt(self, prompt: str | None = None, **kwargs: Any) -> AsyncResponse:
        """Run a prompt through the hooks and return llm's response once it has completed.

        ``kwargs`` are passed through to llm's ``prompt()`` of the model or conversation
        (``system=``, ``attachments=``, ``schema=``, ``tools=``, model options...), which is why
        they are typed ``Any``. Configured ``options`` are merged in; the caller's values win.
        The response's ``reply()`` takes the same path: hooks, routed key and options.
        """
        return await send(self._target, self._sender, prompt, kwargs)


class WrappedConversation(_Prompting):
    """llm's ``AsyncConversation``; every ``prompt()`` and ``chain()`` runs the hooks.

    Attributes:
        model_id: The id of the model this conversation talks to.
        purpose: The purpose name, or ``None``.
        resolution: How routing chose the model.
        group: The ``Group`` its prompts belong to, inside ``LLM.group()``.
    """

    def __init__(self, target: Target, conversation: AsyncConversation) -> None:
        self._target = target
        self._conversation = conversation
        self._sender = in_conversation(conversation)

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain in this conversation; the hooks wrap its iteration.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``, ``before_call=``...), which is why they are typed ``Any``.
        """
        target, conversation = self._target, self._conversation

        def start(routed: Routed, resume: list[Any] | None) -> AsyncChainResponse:
            on_model = conversation
            if routed.model is not conversation.model:
                on_model = dataclasses.replace(conversation, model=routed.model)
            if resume is None:
                return on_model.chain(prompt, **target.chain_kwargs(kwargs, routed))
            going_on = {**kwargs, "messages": resume}
            going_on.pop("tool_results", None)  # in the messages already
            return on_model.chain(None, **target.chain_kwargs(going_on, routed))

        return WrappedChainResponse(target, start, prompt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conversation, name)

    def __repr__(self) -> str:
        return f"<WrappedConversation {self.model_id!r} purpose={self.purpose!r}>"


class WrappedAsyncModel(_Prompting):
    """An llm async model whose prompts run datasette-llm's hooks.

    Attributes:
        model_id: The id of the model.
        purpose: The purpose name the model was asked for, or ``None``.
        resolution: How routing chose the model.
        group: The ``Group`` its prompts belong to, inside ``LLM.group()``.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        # Third-party code reads getattr(model, "_model", model) to reach llm's model.
        self._model = target.routed.model
        self._sender = prompt_model

    def conversation(self) -> WrappedConversation:
        """Start a conversation whose every prompt runs the hooks."""
        return WrappedConversation(self._target, self._model.conversation())

    def chain(self, prompt: str | None = None, **kwargs: Any) -> WrappedChainResponse:
        """Start a tool-calling chain; the hooks wrap its whole iteration.

        ``kwargs`` are passed through to llm's ``AsyncConversation.chain`` (``tools=``,
        ``system=``, ``options=``, ``before_call=``...), which is why they are typed ``Any``.
        """
        return self.conversation().chain(prompt, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<WrappedAsyncModel {self.model_id!r} purpose={self.purpose!r} "
            f"step={self.resolution.step!r}>"
        )


def wrap(datasette: Datasette, routed: Routed, actor: Actor | None) -> WrappedAsyncModel:
    """Wrap the model routing chose, so its prompts run the hooks."""
    return WrappedAsyncModel(Target(datasette, routed, actor, None))
