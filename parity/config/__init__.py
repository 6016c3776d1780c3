"""A CLIP's configuration: the schema (a vision part and a text part, each with its tower kind), the registry
of named models, and how a checkpoint's config is resolved (metadata, then the registry, then the user)."""
from .schema import ACTIVATIONS, Config, ConfigError, TextConfig, VisionConfig, read_config_file

__all__ = ["ACTIVATIONS", "Config", "ConfigError", "TextConfig", "VisionConfig", "read_config_file"]
