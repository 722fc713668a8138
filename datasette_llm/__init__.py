"""Purpose-based LLM model routing for Datasette plugins.

No module of this package imports ``datasette.plugins`` (nor ``datasette.app`` or
``datasette_secrets``, which import it) when it is imported: importing it loads every installed
Datasette plugin, this one included. It is imported last, below, to add our hook specifications;
by then every name here is bound, whichever of ``datasette_llm`` and ``datasette.app`` was
imported first, so Datasette registers this module with all of its hooks, and plugins loaded
alongside it can import anything from it.
"""

from .actors import Actor
from .config.values import (
    Budget,
    KeySetting,
    LLMConfig,
    ModelRef,
    Price,
    PurposeConfig,
    Resilience,
    UsageSettings,
)
from .errors import ConfigProblem, ConfigurationError, ModelBlockedError, ModelNotFoundError
from .hookspecs import add_hookspecs
from .plugin import menu_links as menu_links

# Datasette finds our hook implementations as attributes of this module (the entry point).
from .plugin import permission_resources_sql as permission_resources_sql
from .plugin import register_actions as register_actions
from .plugin import register_commands as register_commands
from .plugin import register_routes as register_routes
from .plugin import register_secrets as register_secrets
from .plugin import shutdown as shutdown
from .plugin import startup as startup
from .prompting.client import LLM
from .prompting.results import Group, PromptResult
from .prompting.wrapped import WrappedAsyncModel, WrappedChainResponse, WrappedConversation
from .provider_errors import Attempt, ErrorKind, ProviderError
from .routing.catalog import get_purpose, get_purpose_collisions, get_purpose_owner, get_purposes
from .routing.keys import KeyStatus
from .routing.models import ModelStandIn, stand_in_for_models
from .routing.permissions import PurposeNotAllowedError
from .routing.purposes import Purpose, PurposeCollision
from .routing.requirements import Requirements
from .routing.route import Resolution, ResolutionStep
from .usage.budgets import BudgetExceededError
from .usage.records import Outcome, UsageRecord

__all__ = [
    "Actor",
    "Attempt",
    "Budget",
    "BudgetExceededError",
    "ConfigProblem",
    "ConfigurationError",
    "ErrorKind",
    "Group",
    "KeySetting",
    "KeyStatus",
    "LLM",
    "LLMConfig",
    "ModelBlockedError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelStandIn",
    "Outcome",
    "Price",
    "PromptResult",
    "ProviderError",
    "Purpose",
    "PurposeCollision",
    "PurposeConfig",
    "PurposeNotAllowedError",
    "Requirements",
    "Resilience",
    "Resolution",
    "ResolutionStep",
    "UsageRecord",
    "UsageSettings",
    "WrappedAsyncChainResponse",
    "WrappedAsyncModel",
    "WrappedChainResponse",
    "WrappedConversation",
    "get_purpose",
    "get_purpose_collisions",
    "get_purpose_owner",
    "get_purposes",
    "stand_in_for_models",
]

WrappedAsyncChainResponse = WrappedChainResponse
"""The name 0.1a8 gave the wrapped chain response."""

add_hookspecs()
