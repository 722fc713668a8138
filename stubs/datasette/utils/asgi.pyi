from collections.abc import Mapping
from typing import Any

class Forbidden(Exception): ...
class NotFound(Exception): ...

class Request:
    actor: dict[str, Any] | None
    path: str
    method: str
    scheme: str
    host: str
    url: str
    query_string: str
    args: Mapping[str, str]
    url_vars: dict[str, str]
    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    async def post_vars(self) -> dict[str, str]: ...
    async def post_body(self) -> bytes: ...
    # Partial: members not declared here are typed ``Any``.
    def __getattr__(self, name: str) -> Any: ...

class Response:
    body: str | bytes
    status: int
    headers: dict[str, str]
    content_type: str
    def __init__(
        self,
        body: str | bytes | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str = "text/plain",
    ) -> None: ...
    @classmethod
    def html(
        cls, body: str, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response: ...
    @classmethod
    def text(
        cls, body: str, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response: ...
    @classmethod
    def json(
        cls,
        body: object,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        default: object = None,
    ) -> Response: ...
    @classmethod
    def redirect(
        cls, path: str, status: int = 302, headers: Mapping[str, str] | None = None
    ) -> Response: ...


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
