"""Reading the usage settings: ``pricing``, ``usage`` and each purpose's ``budget``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .config import CONFIG_ROOT, Budget, BudgetPeriod, UsageSettings
from .config_reader import FAILED, Reader, got
from .errors import is_text, lone_surrogate, nearest
from .usage import Price

__all__ = ["UsageReader"]

_PRICE_KEYS: Final = ("input", "output", "cached_input")
_USAGE_KEYS: Final = ("enabled", "database", "retention_days")
_BUDGET_KEYS: Final = ("usd", "per", "then")
_PERIODS: Final[tuple[BudgetPeriod, ...]] = ("day", "week", "month")
_THEN: Final = ("refuse", "fallback")


class UsageReader(Reader):
    """Reads what the usage ledger needs: prices, where rows go, budgets."""

    def price_number(self, value: object, path: str) -> float | None:
        value = self.value(value, path)
        if value is FAILED:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.fail(path, f"expected dollars per million tokens (0 or more), got {got(value)}.")
            return None
        return float(value)

    def pricing(self, value: object) -> Mapping[str, Price]:
        path = f"{CONFIG_ROOT}.pricing"
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            self.fail(
                path,
                "expected a mapping of model id to {input: ..., output: ..., cached_input: ...} "
                f"in dollars per million tokens, got {got(value)}.",
            )
            return MappingProxyType({})
        prices: dict[str, Price] = {}
        for model_id, entry in value.items():
            where = f"{path}.{model_id}"
            if not isinstance(model_id, str) or not model_id or not is_text(model_id):
                self.fail(
                    where,
                    lone_surrogate("model id", None)
                    if isinstance(model_id, str) and model_id
                    else f"expected a model id, got {model_id!r}.",
                )
                continue
            entry = self.mapping(
                entry, where, "{input: ..., output: ..., cached_input: ...}", _PRICE_KEYS
            )
            if entry is None:
                continue
            missing = [name for name in ("input", "output") if name not in entry]
            if missing:
                self.fail(
                    where,
                    f"a price needs {' and '.join(missing)}: dollars per million tokens "
                    "(write 0 for a free model).",
                )
                continue
            numbers = {
                name: self.price_number(entry.get(name), f"{where}.{name}") for name in entry
            }
            if any(number is None for name, number in numbers.items() if name in _PRICE_KEYS):
                continue
            prices[model_id] = Price(
                input=numbers["input"] or 0.0,
                output=numbers["output"] or 0.0,
                cached_input=numbers.get("cached_input"),
            )
        return MappingProxyType(prices)

    def usage(self, value: object) -> UsageSettings:
        path = f"{CONFIG_ROOT}.usage"
        if value is None:
            return UsageSettings()
        value = self.mapping(
            value, path, "a mapping with enabled, database, retention_days", _USAGE_KEYS
        )
        if value is None:
            return UsageSettings()
        database = self.value(value.get("database"), f"{path}.database")
        if (
            database is not None
            and database is not FAILED
            and (not isinstance(database, str) or not database)
        ):
            self.fail(f"{path}.database", f"expected a database name, got {got(database)}.")
            database = None
        enabled = self.boolean(value.get("enabled", True), f"{path}.enabled", True)
        retention = self.number(value.get("retention_days"), f"{path}.retention_days", "days")
        return UsageSettings(
            enabled=enabled,
            database=database if isinstance(database, str) else None,
            retention_days=retention,
        )

    def budget(self, value: object, path: str) -> Budget | None:
        if value is None:
            return None
        value = self.mapping(
            value, path, "a mapping {usd: 50, per: month, then: refuse}", _BUDGET_KEYS
        )
        if value is None:
            return None
        usd = self.number(value.get("usd"), f"{path}.usd", "US dollars")
        if usd is None and "usd" not in value:
            self.fail(path, "a budget needs usd: the dollars the purpose may spend per period.")
        per = self.choice(value.get("per", "month"), f"{path}.per", _PERIODS)
        then = self.choice(value.get("then", "refuse"), f"{path}.then", _THEN)
        if usd is None or per is None or then is None:
            return None
        return Budget(usd=usd, per=per, then=then)  # type: ignore[arg-type]

    def choice(self, value: object, path: str, choices: tuple[str, ...]) -> str | None:
        value = self.value(value, path)
        if value is FAILED:
            return None
        if value in choices:
            return str(value)
        suggestion = nearest(value, choices) if isinstance(value, str) else None
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        self.fail(path, f"expected one of {', '.join(choices)}, got {got(value)}.{hint}")
        return None
