"""Test plugins that use datasette-llm without API keys: ``FakeModelRouter`` and its fixture.

The ``fake_model_router`` fixture comes from the ``pytest_datasette_llm`` pytest plugin, which
imports this package only when a test asks for it.
"""

from ._errors import RealModelRequestError, RouterStoppedError, UnmatchedPromptError
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
    "RouterStoppedError",
    "ToolResultRecord",
    "UnmatchedPromptError",
]
