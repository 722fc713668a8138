"""Purpose-based LLM model routing for Datasette plugins."""

from ._registration import register_fully
from .catalog import get_purpose, get_purpose_collisions, get_purpose_owner, get_purposes
from .client import LLM
from .config import LLMConfig, ModelRef, PurposeConfig
from .errors import ConfigProblem, ConfigurationError, ModelNotFoundError
from .keys import KeyStatus

# Datasette finds our hook implementations as attributes of this module (the entry point).
from .plugin import menu_links as menu_links
from .plugin import register_actions as register_actions
from .plugin import register_commands as register_commands
from .plugin import register_routes as register_routes
from .plugin import register_secrets as register_secrets
from .plugin import startup as startup
from .purposes import Purpose, PurposeCollision
from .resolver import Resolution
from .results import Group, PromptResult
from .types import Actor, ResolutionStep
from .wrapped import WrappedAsyncModel, WrappedChainResponse, WrappedConversation

__all__ = [
    "LLM",
    "Actor",
    "ConfigProblem",
    "ConfigurationError",
    "Group",
    "KeyStatus",
    "LLMConfig",
    "ModelNotFoundError",
    "ModelRef",
    "PromptResult",
    "Purpose",
    "PurposeCollision",
    "PurposeConfig",
    "Resolution",
    "ResolutionStep",
    "WrappedAsyncModel",
    "WrappedAsyncChainResponse",
    "WrappedChainResponse",
    "WrappedConversation",
    "get_purpose",
    "get_purpose_collisions",
    "get_purpose_owner",
    "get_purposes",
]

WrappedAsyncChainResponse = WrappedChainResponse

register_fully(__name__)
