"""Test plugins that use datasette-llm without API keys: ``FakeModelRouter`` and its fixture.

Names are imported on first use, so that pytest loading the ``fake_model_router`` fixture (the
``pytest11`` entry point) does not import llm in every test session.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
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

_MODULES: Final = {
    "FakeAsyncModel": "._fake_model",
    "FakeModelRouter": "._router",
    "FakeReply": "._replies",
    "ModelCall": "._records",
    "PromptMatch": "._matching",
    "RealModelRequestError": "._errors",
    "ReplyCallback": "._replies",
    "ToolResultRecord": "._records",
    "UnmatchedPromptError": "._errors",
}


def __getattr__(name: str) -> object:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
