from pluggy import PluginManager

pm: PluginManager
DEFAULT_PLUGINS: tuple[str, ...]

def get_plugins() -> list[dict[str, object]]: ...
