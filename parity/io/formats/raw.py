"""What a format's reader returns: a checkpoint's content as read, before any layout is applied."""
from __future__ import annotations

from dataclasses import dataclass, field

FORMAT_NAMES = {"torchscript": "TorchScript archive", "torch": "torch pickle in a zip (torch.save)",
                "pdparams": "Paddle pickle (.pdparams)", "safetensors": "safetensors"}


@dataclass
class RawCheckpoint:
    format: str  # a key of FORMAT_NAMES
    content: object  # what the file holds: (nested) containers of numpy arrays and Stored tensors
    metadata: dict = field(default_factory=dict)  # safetensors header metadata
    notes: list = field(default_factory=list)
    entries: list = field(default_factory=list)  # (name, offset, length, CRC-32) of each stored zip entry
    stored_bytes: int | None = None  # the tensors' bytes as stored, each tensor counted where it appears
