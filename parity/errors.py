"""The exceptions parity raises for bad input: each carries one line that names the file, key and fix."""
import unicodedata


class ParityError(ValueError):
    """Base of every user-facing error (the CLI prints it and exits 2). `path`: the file or folder it is
    about, shown before the message ("weights/RN50.pt: ...")."""

    def __init__(self, message: str = "", path=None):
        super().__init__(message)
        self.message, self.path = message, path

    def __str__(self) -> str:
        return self.message if self.path is None else f"{self.path}: {self.message}"

    def __reduce__(self):  # a child process's error crosses the pipe with its path
        return type(self), (self.message, self.path), self.__dict__

    def at(self, path) -> "ParityError":
        """This error, about `path`: an error about another file keeps that file's name in its message."""
        if self.path is not None and str(self.path) != str(path):
            self.message = f"{self.path}: {self.message}"
        self.path = path
        return self


class CheckpointError(ParityError):
    """A file that cannot be read as a checkpoint: missing, empty, truncated, foreign or malformed."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that asks for something other than tensors and plain containers; nothing of it ran."""


class OutputExistsError(CheckpointError):
    """The output exists and replacing it was not asked for."""


class NonFiniteError(CheckpointError):
    """NaN or Inf in a tensor, where the caller asked for finite tensors only (strict)."""


class SameFileError(CheckpointError):
    """The output is the input (by name, link or hard link)."""


def printable(text: str, newlines: bool = False) -> str:
    """`text` safe to show on a terminal: control characters (an escape sequence in a tensor's name can
    retitle or clear the terminal), bidirectional overrides and bytes that were not UTF-8 in a file name
    (surrogate escapes) are shown as Python escapes (\\x1b, \\u202e, \\xff); with `newlines`, line breaks stay."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that was not UTF-8, as os.fsdecode keeps it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\n" and newlines:
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or \
                unicodedata.category(ch) in ("Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii") if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


class ConfigError(ParityError):
    """A configuration that is malformed, incomplete for what is asked, or contradicts the tensors."""


class StateDictError(ParityError):
    """A state dict that does not fit the expected layout; the message names every offending key."""


class ExportError(ParityError):
    """An export folder that cannot be read or run: a missing, corrupt or foreign file (exit 2)."""


class ConfigMissingError(ParityError):
    """Computing needs what no tensor says (heads, activation, eps), and nothing gave it."""


class NoDeviceError(ParityError):
    """A GPU was asked for, and a framework has none."""


class MissingExtraError(ParityError):
    """What a command needs is not installed (parity's core has neither framework); the message names the
    extra that brings it."""
