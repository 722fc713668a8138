from dataclasses import dataclass
from typing import Any

class Resource: ...

@dataclass(frozen=True, kw_only=True)
class Action:
    name: str
    description: str | None
    abbr: str | None = None
    resource_class: type[Resource] | None = None
    also_requires: str | None = None


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
