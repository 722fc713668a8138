from typing import Any
from dataclasses import dataclass

from datasette.app import Datasette

@dataclass
class Secret:
    name: str
    description: str | None = None
    obtain_url: str | None = None
    obtain_label: str | None = None

async def get_secret(
    datasette: Datasette, secret_name: str, actor_id: str | None = None
) -> str | None: ...
async def get_secrets(datasette: Datasette) -> list[Secret]: ...


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
