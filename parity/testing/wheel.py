"""A fresh virtual environment holding parity's wheel and its core dependencies only, built offline.

CI has no network beyond what its install step fetched, so the core dependencies are not downloaded:
those installed beside the tests (numpy, click, safetensors, ftfy, regex and what they need) are linked
into one folder that the new environment's `.pth` file adds to its path, and the wheel is then installed
with `pip --no-index`, which resolves its dependencies against them. Neither framework is there.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def build(outdir: Path) -> tuple[Path, Path]:
    """`python -m build` of the source tree (no isolation: no network): (the wheel, the sdist)."""
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(ROOT)],
                   check=True, capture_output=True, text=True)
    return next(outdir.glob("parity-*.whl")), next(outdir.glob("parity-*.tar.gz"))


def requires(wheel: Path) -> list[str]:
    """The wheel's own Requires-Dist lines (its METADATA), extras' included."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def core_closure(wheel: Path) -> list[str]:
    """The installed distributions that the wheel's core needs (no extras), transitively, by name."""
    seen: dict[str, None] = {}
    todo = [Requirement(r) for r in requires(wheel)]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's, or not for this platform
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = None
        todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
    return list(seen)


def link_site(names: list[str], folder: Path) -> None:
    """Each distribution's installed top-level entries and its .dist-info, linked into `folder`."""
    folder.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if top != "__pycache__" and (base / top).exists() and not (folder / top).exists():
                os.symlink(base / top, folder / top)


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A new venv at `where` with `wheel` installed over the linked core; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, capture_output=True)
    site = next((where / "lib").glob("python3*/site-packages"))
    link_site(core_closure(wheel), where / "core-site")
    (site / "core.pth").write_text(str(where / "core-site") + "\n")
    subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True, text=True)
    return where / "bin"
