from dataclasses import dataclass
from typing import Any

class Resource:
    name: str
    parent_class: type[Resource] | None
    parent: str | None
    child: str | None
    def __init__(self, parent: str | None = None, child: str | None = None) -> None: ...
    @classmethod
    async def resources_sql(cls, datasette: Any, actor: Any = None) -> str: ...

@dataclass
class PermissionSQL:
    sql: str | None = None
    params: dict[str, Any] | None = None
    source: str | None = None
    restriction_sql: str | None = None
    @classmethod
    def allow(cls, reason: str, _allow: bool = True) -> PermissionSQL: ...
    @classmethod
    def deny(cls, reason: str) -> PermissionSQL: ...

@dataclass(frozen=True, kw_only=True)
class Action:
    name: str
    description: str | None
    abbr: str | None = None
    resource_class: type[Resource] | None = None
    also_requires: str | None = None


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
