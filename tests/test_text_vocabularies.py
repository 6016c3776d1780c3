"""The vocabularies parity's wheel carries (parity/text/vocabularies) are, byte for byte, the files their
libraries install: openai-clip's BPE merges and cn_clip's WordPiece vocabulary (both oracles here)."""
import importlib.util
from pathlib import Path

import pytest

from parity.text import bpe, wordpiece


def package_dir(name: str) -> Path:
    return Path(next(iter(importlib.util.find_spec(name).submodule_search_locations)))  # found, not imported


@pytest.mark.parametrize("ours, theirs", [
    (lambda: bpe.default_vocabulary(), lambda: package_dir("clip") / "bpe_simple_vocab_16e6.txt.gz"),
    (lambda: wordpiece.default_vocabulary(), lambda: package_dir("cn_clip") / "clip" / "vocab.txt"),
], ids=["clip-bpe", "cn_clip-wordpiece"])
def test_a_shipped_vocabulary_is_its_librarys_file(ours, theirs):
    assert Path(ours()).parent == Path(bpe.__file__).parent / "vocabularies"
    assert Path(ours()).read_bytes() == theirs().read_bytes()
