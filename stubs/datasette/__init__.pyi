from typing import Any

from pluggy import HookimplMarker, HookspecMarker

from .utils.asgi import Forbidden as Forbidden
from .utils.asgi import NotFound as NotFound
from .utils.asgi import Request as Request
from .utils.asgi import Response as Response

hookimpl: HookimplMarker
hookspec: HookspecMarker
__version__: str


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
