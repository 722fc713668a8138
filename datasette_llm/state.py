"""Keep what datasette-llm remembers about one Datasette in one object, owned by that Datasette.

``state_of(datasette)`` returns the ``State`` of a Datasette instance, made on first use and
collected with the instance: nothing else keeps a cache per Datasette. Each module that caches
something declares a ``Slot`` for it and keeps its value in the ``State``, so that this module
imports none of them; which slots there are, and when each is rebuilt, is ``State``'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from datasette.app import Datasette

__all__ = ["Slot", "State", "state_of"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True, eq=False)
class Slot(Generic[T]):
    """Name the place of one value of type ``T`` in every ``State``.

    A module declares its slots as private constants, and only it reads or writes them::

        _CATALOG: Final[Slot[Catalog]] = Slot("the registered purposes")

    (Annotate the constant: calling ``Slot[Catalog](...)`` fails before Python 3.12, whose
    ``typing`` cannot record the type on a frozen instance with slots.) Slots compare by
    identity: two slots with one name are two places.

    Attributes:
        name: What the slot holds, as ``State``'s repr shows it.
    """

    name: str


class State:
    """Hold every cache of one Datasette instance; get it with ``state_of(datasette)``.

    A slot's value must not refer to its Datasette other than weakly (``weakref.ref``): the
    ``State`` lives as long as its Datasette, so a strong reference would keep both forever.

    What is kept, and what rebuilds it. Each cache is checked on every use by comparing
    identities or a few small values, never the configuration value by value:

    - The configuration as written (``config/source.py``): parsed again when
      ``datasette.config``, its ``plugins`` mapping or the ``datasette-llm`` section is replaced
      by another object, or a variable or file it names with ``$env``/``$file`` changes.
    - The routing overrides, and the tasks reading them (``config/overrides.py``): read from
      the internal database; replaced by each write through ``save_override``, and read again
      when a check, at most one a second, finds a write by another process.
    - The configuration in effect, the overrides laid over the written one
      (``routing/overlay.py``): laid again when either is replaced.
    - llm's models, by id and alias, and which need a key (``routing/models.py``): rebuilt when
      a plugin is registered or unregistered on ``llm.plugins.pm``, ``LLM_USER_PATH`` changes,
      or ``aliases.json`` or ``extra-openai-models.yaml`` in llm's user directory changes (its
      modification time, size and inode, and for a file modified in the last 3 seconds its
      content too).
    - The registered purposes (``routing/catalog.py``): collected again when a
      ``register_llm_purposes`` implementation is registered or unregistered.
    - Each purpose's policy: its allow and block lists, each model's keys, options and limits
      (``routing/policy.py``): built again when the configuration or llm's models are rebuilt
      (both are frozen snapshots, so a new one is a new object). The policies under the last
      two configurations are kept: the one in effect, and the one as written that the routing
      page and the overrides are checked against.
    - The ``llm-use`` verdicts, by actor and purpose (``routing/permissions.py``): dropped when
      ``datasette.config``, its ``permissions`` block, the datasette-llm configuration as
      written (each purpose's ``allow:``) or ``default_deny`` changes, and each verdict after
      ``VERDICT_SECONDS``.
    - The secrets registered with datasette-secrets (``plugin.py``): listed again when the
      configuration or llm's models are rebuilt.
    - The usage ledger, rows waiting to be written (``usage/ledger.py``): replaced when the
      ``usage`` settings change, the new ledger taking over the rows, listeners and spend.
    - The coordinator (``coordination/backend.py``): made again when the ``coordination``
      settings change; it keeps each model's limits and cool-down and each budget's holds, in
      the process or through Redis.
    - One gate per model and limits, ``rpm`` and ``concurrency`` (``prompting/limits.py``),
      with the coordinator they ask: made again with a new coordinator; a gate keeps only a
      mirror of the model's cool-down as this process learned it (for planning which model to
      try first), the coordinator deciding.
    - The budget settles under way (``usage/budgets.py``): the tasks giving back a prompt's
      hold and charging each attempt's cost to the coordinator, awaited before the next hold
      of the purpose and at shutdown.
    - The purposes falling back, by purpose and routed model, with the fallback that answered
      (``prompting/attempts.py``): an entry is made by the first prompt a fallback answers and
      dropped by the first one its routed model answers again; each change is logged once.
    - The budgets spent, by purpose, with the period and ``usd`` they refused under
      (``usage/budgets.py``): an entry is made by a refusal and dropped once the budget admits
      a prompt in a new period or with a higher ``usd``; each change is logged once.
    - Whether the ``startup`` hook leaves validation to the ``datasette llm`` commands
      (``_operator/checks.py``).
    - The ``--internal`` file a ``datasette llm`` command was given before it exists, read as
      an empty database (``_operator/status.py``): set once by the command.

    Not cached, looked up on every call: API keys, and the answers of ``llm_default_model``,
    ``llm_filter_models`` and ``llm_prompt_context``. Because llm's models are cached, an llm
    plugin whose ``register_models`` lists different models from one call to the next without
    being re-registered is asked again only when one of the things above changes; a
    configuration value changed in place, inside the section, is seen once the section is
    replaced. ``tests/test_state.py`` proves each way a cache is rebuilt, with real llm models
    and real ``Datasette`` instances.

    Kept per process instead, because what they hold is one per process whatever the number
    of Datasette instances:

    - ``_hooks.py``: Datasette's plugin manager, and for each hook a caller per implementation
      (rebuilt when the hook's implementations change). Datasette has one plugin manager,
      ``datasette.plugins.pm``, for every instance.
    - ``log.py``: the API key values the logger redacts. The logger is the process's: a key
      read for one Datasette must not appear in any log line.
    - ``routing/catalog.py``: the purpose collisions already logged, so that each is logged
      once. The plugins that collide and the log are the process's, however many Datasette
      instances ask for the purposes.
    - ``prompting/clients.py``: the pooled ``openai`` and ``anthropic`` clients of the models
      it adapts, by event loop (weakly) and endpoint, key and headers; closed when their loop
      shuts down. A client belongs to the loop whose connections it holds, which every
      Datasette in that loop shares. And where each model class builds its ``anthropic``
      client (weakly, by class): a class is the process's.
    - ``usage/telemetry.py``: OpenTelemetry's tracer, meter and instruments, made from the
      process's global providers (the API's proxies follow a provider installed later).
    - ``routing/models.py``: llm's user directory when ``LLM_USER_PATH`` is not set (from the
      process's home directory) and the paths of the files watched in a directory (a function
      of its name); the stand-ins of a test double (``stand_in_for_models``), which answers
      for llm's models in the whole process, as llm's own registry does.
    """

    __slots__ = ("__weakref__", "_values")

    def __init__(self) -> None:
        self._values: dict[Slot[Any], object] = {}

    def get(self, slot: Slot[T]) -> T | None:
        """Return the value in ``slot``, or ``None`` when nothing was put there."""
        return cast("T | None", self._values.get(slot))

    def put(self, slot: Slot[T], value: T) -> T:
        """Put ``value`` in ``slot``, in place of any value there, and return it."""
        self._values[slot] = value
        return value

    def setdefault(self, slot: Slot[T], build: Callable[[], T]) -> T:
        """Return the value in ``slot``, first putting there what ``build()`` returns if empty."""
        if slot in self._values:
            return cast("T", self._values[slot])
        return self.put(slot, build())

    def __repr__(self) -> str:
        names = ", ".join(sorted(slot.name for slot in self._values))
        return f"<State of {len(self._values)} slots: {names}>"


_states: Final[WeakKeyDictionary[Datasette, State]] = WeakKeyDictionary()


def state_of(datasette: Datasette) -> State:
    """Return the state of ``datasette``: made on first use, collected with ``datasette``."""
    state = _states.get(datasette)
    if state is None:
        state = _states[datasette] = State()
    return state
