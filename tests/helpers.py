"""What many test files share: running the CLI (in this process, or as a user runs it, in a process of its
own), the one-line refusal every bad input gets, and looking at folders and files.

tests/ is on sys.path (pytest's default `prepend` import mode puts a test file's folder there, as it does
for conftest.py and hostile_files.py), so a test file says `from helpers import run, refused`.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

from parity.cli import main

PARITY = str(Path(sys.executable).parent / "parity")  # the installed command, beside this interpreter
MB = 1 << 20
GB = 1 << 30


def run(*args):
    """`parity ARGS` in this process (a CliRunner result): every argument as a string."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(output: str, *needles) -> str:
    """Exactly one line, which starts with "Error: ": no traceback, no internal error (exit 3's message), and
    every needle (a string or a path, as str() gives it) in that line. Returns the line."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output and "internal error" not in output, output
    for needle in map(str, needles):
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def refused(result, *needles) -> str:
    """Bad input, as a CliRunner result: exit status 2 and `one_line` of its output. Returns the line."""
    assert result.exit_code == 2, result.output
    return one_line(result.output, *needles)


# A process's peak RSS survives exec (Linux keeps the larger of the old and new), so a child forked from
# this test process, which holds torch, would report this process's size: a small launcher, started
# afresh, forks the command and reports the command's own peak.
LAUNCHER = """import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


def spawn(*args, env=None, stderr=None):
    """`parity ARGS` in its own process: (status, stdout, stderr, peak RSS in bytes)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as result:
        subprocess.run([sys.executable, "-c", LAUNCHER, result.name, PARITY, *map(os.fsencode, args)],
                       stdout=out, stderr=stderr or err, env={**os.environ, **(env or {})})
        status, rss = map(int, result.read().split())
        out.seek(0)
        err.seek(0)
        return status, out.read().decode(errors="replace"), err.read().decode(errors="replace"), rss


def listing(folder: Path) -> list[str]:
    """The names in a folder, sorted."""
    return sorted(p.name for p in folder.iterdir())


def digest(path: Path) -> str:
    """A file's SHA-256 (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of a folder (an export), its files hard-linked: the tests replace files, never edit them."""
    dst.mkdir()
    for f in src.iterdir():
        os.link(f, dst / f.name)
    return dst


def siglip_inputs(image_size: int, vocab_size: int, context: int = 16):
    """Two random images in [-1, 1] (SigLIP's pixel range) and three random texts, the first short and
    padded with `</s>` (id 1) as SiglipTokenizer pads."""
    import numpy as np

    image = np.random.default_rng(0).uniform(-1, 1, (2, 3, image_size, image_size)).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, vocab_size, (3, context)).astype(np.int64)
    ids[0, 6:] = 1
    return image, ids


def junit_cases(path) -> dict:
    """A JUnit file, validated against tests/junit.xsd (the structure CI systems read), as
    {(suite, case): failure (or error) message or None}; its counts are checked against its cases."""
    import xml.etree.ElementTree as ET

    import xmlschema

    xmlschema.XMLSchema(Path(__file__).with_name("junit.xsd")).validate(str(path))
    root = ET.parse(path).getroot()
    cases = {}
    for suite in root.iter("testsuite"):
        found = suite.findall("testcase")
        assert int(suite.get("tests")) == len(found)
        assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in found)
        assert int(suite.get("errors")) == sum(c.find("error") is not None for c in found)
        for c in found:
            failure = c.find("failure") if c.find("failure") is not None else c.find("error")
            cases[suite.get("name"), c.get("name")] = None if failure is None else failure.get("message")
    assert int(root.get("tests")) == len(cases)
    assert int(root.get("errors")) == sum(int(s.get("errors")) for s in root.iter("testsuite"))
    return cases


CAPTIONS = ["a red square on a dark field", "a blue gradient", "green stripes", "a grey photograph",
            "noise in many colours", "a yellow circle", "two dark bands", "a bright sky", "a checkerboard",
            "a purple wash"]


def user_data(folder: Path, n: int = 20) -> tuple[Path, Path]:
    """A user's data as `verify --images DIR --texts FILE` takes it: `n` generated images (PNG and JPEG of
    several sizes, one grayscale, one truncated: `truncated.png`) and a file of the ten CAPTIONS."""
    import io

    import numpy as np
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n - 2):
        h, w = 96 + 16 * (i % 5), 128 - 8 * (i % 4)
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * (i + 3)) % 256, (y * (2 * i + 1)) % 256, ((x + y) * (i % 7 + 1)) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    gray = (np.add.outer(np.arange(100), np.arange(120)) % 256).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(images / "gray.png")
    whole = io.BytesIO()
    Image.fromarray(np.full((80, 80, 3), 200, np.uint8)).save(whole, format="PNG")
    (images / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    texts = folder / "captions.txt"
    texts.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    return images, texts
