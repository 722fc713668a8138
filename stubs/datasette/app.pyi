from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .permissions import Action
from .utils.asgi import Request

class Database:
    name: str
    async def execute(self, sql: str, params: Sequence[object] | Mapping[str, object] | None = None) -> Any: ...
    async def execute_write(self, sql: str, params: Sequence[object] | Mapping[str, object] | None = None) -> Any: ...
    # Partial: members not declared here are typed ``Any``.
    def __getattr__(self, name: str) -> Any: ...

class ClientResponse:
    """What ``datasette.client`` returns (an httpx or httpx2 response, by Datasette version)."""

    status_code: int
    text: str
    content: bytes
    headers: Mapping[str, str]
    def json(self) -> Any: ...
    # Partial: members not declared here are typed ``Any``.
    def __getattr__(self, name: str) -> Any: ...

class DatasetteClient:
    def actor_cookie(self, actor: Mapping[str, object]) -> str: ...
    async def get(self, path: str, skip_permission_checks: bool = False, **kwargs: Any) -> ClientResponse: ...
    async def post(self, path: str, skip_permission_checks: bool = False, **kwargs: Any) -> ClientResponse: ...
    async def request(
        self, method: str, path: str, skip_permission_checks: bool = False, **kwargs: Any
    ) -> ClientResponse: ...
    # Partial: members not declared here are typed ``Any``.
    def __getattr__(self, name: str) -> Any: ...

class Urls:
    def path(self, path: str, format: str | None = None) -> str: ...
    def instance(self, format: str | None = None) -> str: ...

class Datasette:
    INFO: int
    WARNING: int
    ERROR: int
    client: DatasetteClient
    root_enabled: bool
    default_deny: bool
    config: dict[str, Any] | None
    actions: dict[str, Action]
    databases: dict[str, Database]
    urls: Urls
    def __init__(
        self,
        files: Iterable[str] | None = None,
        immutables: Iterable[str] | None = None,
        cache_headers: bool = True,
        cors: bool = False,
        inspect_data: object = None,
        config: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        sqlite_extensions: object = None,
        template_dir: str | None = None,
        plugins_dir: str | None = None,
        static_mounts: object = None,
        memory: bool = False,
        settings: Mapping[str, object] | None = None,
        secret: str | None = None,
        version_note: str | None = None,
        config_dir: object = None,
        pdb: bool = False,
        crossdb: bool = False,
        nolock: bool = False,
        internal: str | None = None,
        default_deny: bool = False,
    ) -> None: ...
    def plugin_config(
        self,
        plugin_name: str,
        database: str | None = None,
        table: str | None = None,
        fallback: bool = True,
    ) -> Any: ...
    async def invoke_startup(self) -> None: ...
    async def allowed(
        self, *, action: str, resource: object = None, actor: Mapping[str, Any] | None = None
    ) -> bool: ...
    async def ensure_permission(
        self, *, action: str, resource: object = None, actor: Mapping[str, Any] | None = None
    ) -> None: ...
    async def render_template(
        self,
        templates: str | Sequence[str],
        context: Mapping[str, object] | None = None,
        request: Request | None = None,
        view_name: str | None = None,
    ) -> str: ...
    def get_database(self, name: str | None = None, route: str | None = None) -> Database: ...
    def add_message(self, request: Request, message: str, type: int = ...) -> None: ...
    def absolute_url(self, request: Request, path: str) -> str: ...
    def get_internal_database(self) -> Database: ...
    def add_memory_database(
        self, memory_name: str, name: str | None = None, route: str | None = None
    ) -> Database: ...
    # Partial: members not declared here are typed ``Any``, and plugins may set their own.
    def __getattr__(self, name: str) -> Any: ...
    def __setattr__(self, name: str, value: Any) -> None: ...


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
