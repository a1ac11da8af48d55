"""Settings for every process of funnelfox-enricher, read once at the edge."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
