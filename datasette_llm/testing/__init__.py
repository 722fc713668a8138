"""Test plugins that use datasette-llm without API keys: ``FakeModelRouter`` and its fixture.

The ``fake_model_router`` fixture comes from the ``pytest_datasette_llm`` pytest plugin, which
imports this package only when a test asks for it.
"""

from ._fake_model import FakeAsyncModel
from ._records import ModelCall, ToolResultRecord
from ._router import FakeModelRouter
from ._script import (
    FakeReply,
    PromptMatch,
    RealModelRequestError,
    ReplyCallback,
    RouterStoppedError,
    UnmatchedPromptError,
)

__all__ = [
    "FakeAsyncModel",
    "FakeModelRouter",
    "FakeReply",
    "ModelCall",
    "PromptMatch",
    "RealModelRequestError",
    "ReplyCallback",
    "RouterStoppedError",
    "ToolResultRecord",
    "UnmatchedPromptError",
]
