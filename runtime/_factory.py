"""The factory functions users start from, named as in the system hoard re-creates."""

from __future__ import annotations

from hoard.storage import ConfigError

from ._adapter import ContextAdapter
from ._config import ContextAdapterConfig, ContextManagerConfig
from ._manager import ContextManager
from ._system import ContextSystem

__all__ = ["create_adapter", "create_adapter_with_config", "create_manager", "create_manager_with_config"]


def create_manager() -> ContextManager:
    """A manager on a memory store with ``durability="none"``, as in the original system.

    It owns its runtime: call ``manager.stop()`` (or use it as a context manager) when done.
    """
    return ContextSystem(ContextManagerConfig(durability="none")).manager


def create_manager_with_config(config: ContextManagerConfig) -> ContextManager:
    """A manager with `config` (a path in ``config.store`` gives a durable SQLite store).

    Raises `StoreLockedError` if the store is open elsewhere, `ConfigError` for a bad config.
    """
    if not isinstance(config, ContextManagerConfig):
        raise ConfigError(f"expected a ContextManagerConfig, not {type(config).__name__}")
    return ContextSystem(config).manager


def create_adapter(manager: ContextManager) -> ContextAdapter:
    """The manager's adapter with the default `ContextAdapterConfig` (activates "default").

    A manager has one adapter: a second call raises `HoardError`.
    """
    return create_adapter_with_config(manager, ContextAdapterConfig())


def create_adapter_with_config(manager: ContextManager, config: ContextAdapterConfig) -> ContextAdapter:
    """The manager's adapter with `config`. A second adapter for one manager raises `HoardError`."""
    if not isinstance(manager, ContextManager):
        raise ConfigError(f"expected a ContextManager, not {type(manager).__name__}")
    return manager.attach_adapter(config)
