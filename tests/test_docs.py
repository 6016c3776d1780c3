"""The documentation runs as written: every example in README.md and docs/*.md, and the generated tables.

Conventions (docs/contributing.md, "Documentation"):
- ```console blocks: `$ CMD` lines run in bash, one by one, in a temporary folder per document (blocks of
  one document share it, in order); each must exit 0, or with the status of a following `$ echo $?` line.
  The output lines a block shows must appear in the command's output, in order, numbers and hashes aside
  (timings and synthetic figures vary); a `...` line stands for lines left out, `…` for text left out.
- ```python blocks run as scripts in the same folder; they must exit 0.
- a block right after `<!-- needs: REASON -->` is not run; it is listed as skipped, with REASON.
- ```text blocks are synopses and outputs: they hold no `$ ` line (a runnable example is never hidden in one).
- a region between `<!-- generated: parity CMD -->` and `<!-- end generated -->` is CMD's output rendered as
  Markdown tables: `python tests/test_docs.py --write` renders it again.

Input files the examples name (RN50.pt, ViT-B-32.pt, cat.jpg) are made from the cached synthetic weights:
release-format archives, as `parity.testing.synthetic.release_archive` makes them.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = re.compile(r"<!--\s*needs:\s*(.+?)\s*-->")
GENERATED = re.compile(r"(<!-- generated: (parity [\w-]+|registry sizes) -->\n)(.*?)(<!-- end generated -->)", re.S)
INPUTS = {"RN50.pt": "RN50", "ViT-B-32.pt": "ViT-B/32"}  # file name in the docs -> synthetic release archive
PENDING_LINKS: set[str] = set()


# ---------------------------------------------------------------- the documents' blocks
@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    needs: str | None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    lines, found, i = doc.read_text().splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, start = lines[i][3:].strip(), i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            needs = NEEDS.fullmatch(before.strip())
            found.append(Block(doc, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n",
                               needs.group(1) if needs else None))
            i = end
        i += 1
    return found


def commands(block: Block) -> list[tuple[str, list[str], int]]:
    """(command, the output lines shown after it, its expected exit status) for each `$ ` line."""
    out: list[tuple[str, list[str], int]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], [], 0))
        elif out:
            out[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"{block.where}: output before any command: {line!r}")
    for k, (cmd, shown, _) in enumerate(out):
        if cmd.strip() == "echo $?":
            assert k and len(shown) == 1 and shown[0].strip().isdigit(), f"{block.where}: `echo $?` shows a status"
            out[k - 1] = (out[k - 1][0], out[k - 1][1], int(shown[0]))
    return out


def _normal(line: str) -> str:
    line = re.sub(r"\b[0-9a-f]{12,}\b", "H", line.rstrip())
    return re.sub(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?", "N", line)


def shown_in(shown: list[str], output: str) -> str | None:
    """The first shown line that the output lacks (in order, numbers and hashes aside), or None."""
    actual = [_normal(x) for x in output.splitlines()]
    k = 0
    for line in shown:
        if line.strip() in ("", "..."):
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in _normal(line).split("…")))
        while k < len(actual) and not pattern.fullmatch(actual[k]):
            k += 1
        if k == len(actual):
            return line
        k += 1
    return None


# ---------------------------------------------------------------- generated tables
def columns(lines: list[str]) -> list[tuple[int, int | None]]:
    """Column spans of fixed-width rows: split where every row has a space, within the header's width."""
    width = len(lines[0])
    blank = [all(i >= len(x) or x[i] == " " for x in lines) for i in range(width)]
    spans, start = [], None
    for i in range(width):
        if not blank[i] and start is None:
            start = i
        elif blank[i] and start is not None:
            spans.append((start, i))
            start = None
    spans.append((start, None))  # the last column runs to the end of each row
    return [(a, spans[k + 1][0] if k + 1 < len(spans) else None) for k, (a, _) in enumerate(spans)]


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("<", "&lt;")


def table(lines: list[str], spans) -> list[str]:
    rows = [[_cell(line[a:b]) for a, b in spans] for line in lines]
    return (["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(spans)]
            + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def render(output: str) -> str:
    """A command's fixed-width output as Markdown tables: either the whole output is one table, or its
    indented runs are (each under the same header) and the lines between them are paragraphs."""
    lines = output.splitlines()
    indented = [line[2:] for line in lines if line.startswith("  ")]
    if not indented:
        return "\n".join(table(lines, columns(lines))) + "\n\n"
    spans, out, run = columns(indented), [], []
    for line in lines + [""]:
        if line.startswith("  "):
            run.append(line[2:])
            continue
        if run:
            out += [*table(run, spans), ""]
            run = []
        if line.strip():
            out += [line, ""]
    return "\n".join(out) + "\n"


def sizes() -> str:
    """Every registered model's parameter count (BatchNorm statistics aside) and float32 size."""
    from parity import layouts
    from parity.config import registry

    lines = ["| name | parameters | float32 |", "|---|---|---|"]
    for e in registry.ENTRIES.values():
        n = sum(math.prod(s) for k, s in layouts.HUB.shapes(e.config).items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        size = f"{4 * n / 2**20:.0f} MiB" if 4 * n < 2**30 else f"{4 * n / 2**30:.2f} GiB"
        lines.append(f"| {e.name} | {n / 1e6:.1f}M | {size} |")
    return "\n".join(lines) + "\n\n"


def generated(source: str) -> str:
    if source == "registry sizes":
        return sizes()
    from click.testing import CliRunner

    from parity.cli import main
    result = CliRunner().invoke(main, source.split()[1:])
    assert result.exit_code == 0, result.output
    return render(result.output)


def regions() -> list[tuple[Path, str, str]]:
    """(document, source, the text between its markers) for each generated region."""
    return [(doc, m.group(2), m.group(3)) for doc in DOCS for m in GENERATED.finditer(doc.read_text())]


def write() -> None:
    for doc in DOCS:
        text = doc.read_text()
        new = GENERATED.sub(lambda m: m.group(1) + "\n" + generated(m.group(2)) + m.group(4), text)
        if new != text:
            doc.write_text(new)
            print(f"wrote {doc.relative_to(ROOT)}")


# ---------------------------------------------------------------- tests
def test_the_generated_tables_are_what_parity_prints():
    found = {(doc.relative_to(ROOT).as_posix(), source) for doc, source, _ in regions()}
    assert {("README.md", "parity layouts"), ("docs/models.md", "parity variants"),
            ("docs/models.md", "registry sizes")} <= found
    for doc, source, text in regions():
        assert text == "\n" + generated(source), (f"{doc.relative_to(ROOT)}: the `{source}` table is out of date: "
                                                  "run python tests/test_docs.py --write")


def test_every_block_is_run_or_marked():
    for doc in DOCS:
        for block in blocks(doc):
            assert block.lang in ("console", "python", "text", "bash", "yaml"), f"{block.where}: ```{block.lang}"
            if block.lang == "text":
                assert not re.search(r"^\$ ", block.text, re.M), f"{block.where}: a `$ ` line in a ```text block"
            if block.lang == "bash":  # set-up commands: never run here (make test runs this file)
                assert block.needs, f"{block.where}: a ```bash block without `<!-- needs: ... -->`"
            if block.lang == "console" and not block.needs:
                commands(block)  # well-formed


def test_the_readme_is_a_front_page_with_the_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    fenced = "".join(b.text for b in blocks(ROOT / "README.md"))
    assert re.search(r"^make verify-all\b", fenced, re.M) and re.search(r"^make test\b", fenced, re.M)
    assert [b for b in blocks(ROOT / "README.md") if b.lang == "python" and not b.needs]


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives the document's headings (fenced blocks aside)."""
    found, fenced = set(), False
    for line in doc.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            found.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return found


def test_the_links_lead_somewhere():
    for doc in DOCS:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path = (doc.parent / target).resolve() if target else doc
            where = f"{doc.relative_to(ROOT)}: a link to {target}#{anchor}"
            if path.relative_to(ROOT).as_posix() in PENDING_LINKS:
                continue
            assert path.exists(), f"{where}: no such file"
            if anchor and path.suffix == ".md":
                assert anchor in anchors(path), f"{where}: no such heading"


@pytest.mark.parametrize("block", [b for doc in DOCS for b in blocks(doc) if b.needs],
                         ids=lambda b: b.where)
def test_examples_that_need_what_the_tests_lack(block):
    pytest.skip(f"{block.where}: needs {block.needs}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The files the examples start from, and a bin folder where `parity` and `python` are this project's."""
    from PIL import Image

    from parity.harness.inputs import sample_path
    from parity.testing.synthetic import release_archive

    folder = tmp_path_factory.mktemp("inputs")
    for name, model in INPUTS.items():
        (folder / name).symlink_to(release_archive(model))
    Image.open(sample_path("chelsea")).convert("RGB").save(folder / "cat.jpg")
    bin_dir = tmp_path_factory.mktemp("bin")
    shims = {"python": f"exec '{sys.executable}' \"$@\"",  # a symlink would lose the venv (pyvenv.cfg)
             "parity": f"exec '{sys.executable}' -c 'import sys; from parity.cli import main; "
                       "sys.exit(main(prog_name=\"parity\"))' \"$@\""}
    for name, line in shims.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return folder, env


@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.lang in ("console", "python") and not b.needs
                                                         for b in blocks(d))],
                         ids=lambda d: d.relative_to(ROOT).as_posix())
def test_the_examples_run(doc, inputs, tmp_path):
    folder, env = inputs
    work, scripts = tmp_path / "work", tmp_path / "scripts"
    work.mkdir()
    scripts.mkdir()
    for f in folder.iterdir():
        (work / f.name).symlink_to(f.resolve() if f.is_symlink() else f)
    for block in blocks(doc):
        if block.needs or block.lang not in ("console", "python"):
            continue
        if block.lang == "python":
            script = scripts / f"line{block.line}.py"
            script.write_text(block.text)
            result = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, f"{block.where}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            continue
        for cmd, shown, status in commands(block):
            if cmd.strip() == "echo $?":
                continue
            result = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True,
                                    timeout=600)
            output = result.stdout + result.stderr
            assert result.returncode == status, f"{block.where}: `{cmd}` exit {result.returncode}\n{output}"
            missing = shown_in(shown, output)
            assert missing is None, f"{block.where}: `{cmd}` did not print {missing!r}; it printed:\n{output}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_docs.py --write   (renders the generated tables again)")
    sys.path.insert(0, str(ROOT))
    write()
