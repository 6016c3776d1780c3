"""parity: matching PyTorch and PaddlePaddle CLIP, checkpoint conversion between layouts, numerical proof."""
from .version import __version__  # noqa: E402

from .api import load_model, logits, tokenize, verify  # noqa: E402
from .io.checkpoint import Checkpoint, load  # noqa: E402
from .config.schema import Config, ConfigError, TextConfig, VisionConfig  # noqa: E402
from .io.convert import convert  # noqa: E402
from .io.pipeline import convert_pipeline  # noqa: E402
from .errors import CheckpointError, ParityError  # noqa: E402
from .exporter import export, verify_export  # noqa: E402
from .harness.inputs import preprocess  # noqa: E402
from .io.save import save  # noqa: E402

__all__ = ["__version__", "Checkpoint", "CheckpointError", "Config", "ConfigError", "ParityError", "TextConfig",
           "VisionConfig", "convert", "convert_pipeline", "export", "load", "load_model", "logits", "preprocess", "save", "tokenize", "verify",
           "verify_export"]
