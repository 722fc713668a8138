from typing import Any

from pluggy import PluginManager

pm: PluginManager
DEFAULT_PLUGINS: tuple[str, ...]

def get_plugins() -> list[dict[str, object]]: ...


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
