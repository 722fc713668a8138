"""Test plugins that use datasette-llm without API keys: ``FakeModelRouter`` and its fixture."""

from ._errors import RealModelRequestError, UnmatchedPromptError
from ._fake_model import FakeAsyncModel
from ._matching import PromptMatch
from ._records import ModelCall, ToolResultRecord
from ._replies import FakeReply, ReplyCallback
from ._router import FakeModelRouter

__all__ = [
    "FakeAsyncModel",
    "FakeModelRouter",
    "FakeReply",
    "ModelCall",
    "PromptMatch",
    "RealModelRequestError",
    "ReplyCallback",
    "ToolResultRecord",
    "UnmatchedPromptError",
]
