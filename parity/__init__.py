"""parity: matching PyTorch and PaddlePaddle CLIP, checkpoint conversion both ways, numerical proof."""
__version__ = "0.1.0"

from .api import load_model, logits, verify  # noqa: E402
from .checkpoint import Checkpoint, convert, load, save  # noqa: E402
from .errors import CheckpointError, ParityError  # noqa: E402
from .inputs import preprocess  # noqa: E402
from .tokenizer import tokenize  # noqa: E402
from .variants import VARIANTS, CLIPConfig, get_config, infer_config  # noqa: E402

__all__ = ["__version__", "VARIANTS", "CLIPConfig", "Checkpoint", "CheckpointError", "ParityError",
           "convert", "get_config", "infer_config", "load", "load_model", "logits", "preprocess", "save",
           "tokenize", "verify"]
