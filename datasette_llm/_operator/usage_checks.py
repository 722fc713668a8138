"""Validation of the usage settings: prices, the ledger's database, budgets that cannot work.

- a price for a model that is not installed (the nearest installed id suggested): a warning;
- a budget while ``usage: {enabled: false}``: an error, since nothing would be counted;
- a budget for a purpose whose models (its model, its fallbacks, ``default_model``) have no
  price: a warning, since their attempts cost nothing it can count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ..config import CONFIG_ROOT
from ..errors import ConfigProblem, nearest, quoted

if TYPE_CHECKING:
    from ..config import LLMConfig
    from ..models import ModelRegistry

__all__ = ["usage_problems"]

WARNING: Final = "warning"


def usage_problems(config: LLMConfig, registry: ModelRegistry) -> Iterator[ConfigProblem]:
    """Yield every problem of the ``pricing``, ``usage`` and ``budget`` settings."""
    installed = [model.model_id for model in registry.models]
    for model_id in config.pricing:
        if registry.by_name.get(model_id) is None:
            suggestion = nearest(model_id, installed)
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            yield ConfigProblem(
                f"{CONFIG_ROOT}.pricing.{model_id}",
                f"model {quoted(model_id)} is not installed, so this price is never used.{hint}",
                WARNING,
            )
    priced = {registry.canonical(name) for name in config.pricing}
    for name, purpose_config in config.purposes.items():
        budget = purpose_config.budget
        if budget is None:
            continue
        path = f"{CONFIG_ROOT}.purposes.{name}.budget"
        if not config.usage.enabled:
            yield ConfigProblem(
                path,
                "a budget needs the usage ledger, which usage: {enabled: false} turns off: "
                "nothing would count towards it. Remove the budget or enable usage.",
            )
            continue
        refs = [purpose_config.model, *config.resilience_for(name).fallbacks]
        if purpose_config.model is None:
            refs.append(config.default_model)
        unpriced = [
            ref.model_id
            for ref in refs
            if ref is not None and registry.canonical(ref.model_id) not in priced
        ]
        if unpriced:
            names = ", ".join(quoted(model_id) for model_id in unpriced)
            yield ConfigProblem(
                path,
                f"{names} {'has' if len(unpriced) == 1 else 'have'} no price under "
                f"{CONFIG_ROOT}.pricing, so {'its' if len(unpriced) == 1 else 'their'} "
                "attempts add nothing to this budget. Give each a price.",
                WARNING,
            )
