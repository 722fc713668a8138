"""Write docs/reference.md: every public name and hook of datasette-llm with its signature.

``tests/suites/test_docs.py`` checks that docs/reference.md is what this script writes: run
``python scripts/api_reference.py --write`` whenever the public API changes (without
``--write`` it prints the reference).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path

MODULES = ("datasette_llm", "datasette_llm.typing", "datasette_llm.testing")


def clean(signature: inspect.Signature) -> str:
    parameters = [
        parameter
        for parameter in signature.parameters.values()
        if parameter.name != "self" and not parameter.name.startswith("_")
    ]
    return str(signature.replace(parameters=parameters)).replace("'", "")


def function_line(name: str, function: object) -> str:
    wrapped = getattr(function, "__wrapped__", None)
    signature = clean(inspect.signature(function))  # type: ignore[arg-type]
    if wrapped is not None and inspect.isasyncgenfunction(wrapped):
        # An @asynccontextmanager: show what `async with` gets.
        signature = signature.replace("-> AsyncIterator[", "-> AbstractAsyncContextManager[")
        return f"`{name}{signature}`"
    if wrapped is not None and inspect.isgeneratorfunction(wrapped):
        # A @contextmanager: show what `with` gets.
        signature = signature.replace("-> Iterator[", "-> AbstractContextManager[")
        return f"`{name}{signature}`"
    prefix = "async " if inspect.iscoroutinefunction(function) else ""
    return f"`{prefix}{name}{signature}`"


def members(cls: type) -> Iterator[tuple[str, object]]:
    """``cls``'s public members, with those it inherits from datasette_llm's private bases."""
    namespace: dict[str, object] = {}
    for base in reversed(cls.__mro__):
        private_base = base.__module__.startswith("datasette_llm") and base.__name__[0] == "_"
        if base is cls or private_base:
            namespace.update(vars(base))
    for name, value in namespace.items():
        if name.startswith("_") and name not in ("__init__", "__enter__", "__aenter__"):
            continue
        if name == "__init__":
            continue
        yield name, value


def describe(module_name: str, name: str, value: object) -> Iterator[str]:
    qualified = f"{module_name}.{name}"
    if inspect.isclass(value) and not value.__module__.startswith("datasette_llm"):
        yield f"- `{qualified}`: re-export of `{value.__module__}.{value.__qualname__}`"
    elif inspect.isclass(value) and getattr(value, "_is_protocol", False):
        call = vars(value)["__call__"]
        yield f"- `{qualified}`: a protocol, {function_line('__call__', call)}"
    elif inspect.isclass(value):
        try:
            signature = clean(inspect.signature(value))
        except (TypeError, ValueError):
            signature = "(...)"
        if re.search(r":\s*_[A-Za-z]", signature):
            # Its constructor takes a private value: datasette-llm builds it, not the caller.
            yield f"- `{qualified}`: built by `LLM`"
        else:
            yield f"- `{qualified}{signature}`"
        for member_name, member in members(value):
            if isinstance(member, property):
                yield f"  - `.{member_name}` (property)"
            elif isinstance(member, (staticmethod, classmethod)):
                yield f"  - {function_line('.' + member_name, member.__func__)}"
            elif inspect.isfunction(member):
                yield f"  - {function_line('.' + member_name, member)}"
    elif inspect.isfunction(value):
        yield f"- {function_line(qualified, value)}"
    elif " at 0x" in repr(value):
        yield f"- `{qualified}`: a `{type(value).__module__}.{type(value).__qualname__}`"
    else:
        yield f"- `{qualified}` = `{repr(value).replace('typing.', '')}`"


def hooks() -> list[str]:
    from datasette_llm import hookspecs

    lines = ["\n## Hooks (implement with `@hookimpl`; every argument may be omitted)\n"]
    for name, function in vars(hookspecs).items():
        if inspect.isfunction(function) and hasattr(function, "datasette_spec"):
            lines.append(f"- {function_line(name, function)}")
    return lines


def reference() -> list[str]:
    lines: list[str] = hooks()
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        lines.append(f"\n## `{module_name}`\n")
        for name in sorted(getattr(module, "__all__", ()), key=str.lower):
            lines.extend(describe(module_name, name, getattr(module, name)))
    return lines


HEADER = """# Reference

Every public name of `datasette_llm`, `datasette_llm.typing` and `datasette_llm.testing`, and
every hook datasette-llm adds to Datasette, with its signature. Written by
`python scripts/api_reference.py --write` from the code; `tests/suites/test_docs.py` checks it is
current. Classes shown as "built by `LLM`" take private values: `LLM` builds them, not you.
Docstrings in the code say what each one does.
"""

TARGET = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def document() -> str:
    """Return the whole text of docs/reference.md."""
    return HEADER + "\n".join(reference()) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        TARGET.write_text(document())
    else:
        sys.stdout.write(document())
