from typing import Any

import click

cli: click.Group


# Partial stub: names not declared here are typed ``Any`` rather than reported as missing.
def __getattr__(name: str) -> Any: ...
