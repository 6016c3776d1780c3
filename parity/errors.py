"""The exceptions parity raises for bad input: each carries one line that names the file, key and fix."""


class ParityError(ValueError):
    """Base of every user-facing error (the CLI prints its message and exits 2)."""


class CheckpointError(ParityError):
    """A file that cannot be read as a checkpoint: missing, empty, truncated, foreign or malformed."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that asks for something other than tensors and plain containers; nothing of it ran."""
