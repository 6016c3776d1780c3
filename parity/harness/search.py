"""Verify on the user's own data: a folder of images and a file of captions through both frameworks, and the
search that CLIP apps run on them (text -> image and image -> text), compared query by query.

Each image is read through parity's bounded file reader, its header checked before any pixel is decoded
(a declared size beyond `MAX_PIXELS` is a decompression bomb), then decoded and preprocessed by the model's
own preprocessing, a batch at a time: memory is bounded by the batch, not by the folder. Every image is
decoded once before any model is built (one at a time, kept by name only): an unreadable one is named in
one line and either refused (the default) or skipped, and each framework then reads the same images.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import CheckpointError, ParityError, printable
from ..io.formats.folders import TEXT_LIMIT
from ..io.formats.source import open_source, user_stat

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 1 << 26  # 67 megapixels: more than any camera's photograph, far less than a bomb's claim
MAX_IMAGE_BYTES = 1 << 28  # 256 MiB read for one image at most
MAX_CAPTIONS = 100_000
BATCH = 16


class BadImage(ParityError):
    """An image that cannot be decoded, or that claims more pixels than parity decodes."""


def decode(path: Path):
    """The image at `path` as an RGB-ready PIL image: read bounded by its size, its header's size checked
    before decoding. BadImage (one line, naming it) for anything that is not a whole, decodable image."""
    from PIL import Image

    with open_source(path) as source:
        if source.size > MAX_IMAGE_BYTES:
            raise BadImage(f"{source.size} bytes, more than the {MAX_IMAGE_BYTES} an image may have here", path=path)
        data = source.pread(0, source.size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own bound: an error
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise BadImage(f"its header declares {width}×{height} pixels, more than the {MAX_PIXELS} "
                                   "parity decodes (a decompression bomb?)", path=path)
                image.load()  # a truncated or corrupt file fails here
                return image.copy()
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"not a readable image ({printable(str(e)) or type(e).__name__})", path=path) from None


@dataclass
class UserImages:
    """A folder's images (files with an image suffix, in name order, not in subfolders)."""

    folder: Path
    skip_bad: bool = False
    paths: list[Path] = field(default_factory=list)  # the readable images
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    ignored: list[str] = field(default_factory=list)  # files without an image suffix

    @classmethod
    def of(cls, folder, skip_bad: bool = False) -> "UserImages":
        """The folder's images, each decoded once (then let go) to know it readable: BadImage for the first
        that is not, or with `skip_bad` each such one recorded in `skipped`."""
        folder = Path(folder)
        user_stat(folder)
        if not folder.is_dir():
            raise CheckpointError("not a folder of images", path=folder)
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
        images = [p for p in entries if p.suffix.lower() in SUFFIXES]
        if not images:
            raise CheckpointError(f"holds no image ({', '.join(SUFFIXES)})", path=folder)
        found = cls(folder, skip_bad, ignored=[p.name for p in entries if p not in images])
        for path in images:
            try:
                decode(path).close()
            except BadImage as e:
                if not skip_bad:
                    raise
                found.skipped.append((path.name, str(e)))
                continue
            found.paths.append(path)
        if not found.paths:
            raise CheckpointError("holds no readable image", path=folder)
        return found

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]

    def one(self, index: int, prepare) -> np.ndarray:
        """`prepare(image)` of the `index`-th readable image, as a batch of one."""
        return next(self._prepared(self.paths[index:index + 1], 1, prepare))

    def batches(self, size: int, prepare) -> Iterator[np.ndarray]:
        """`prepare(image)` of each readable image, stacked `size` at a time (decoded as its batch is made)."""
        return self._prepared(self.paths, size, prepare)

    @staticmethod
    def _prepared(paths: list[Path], size: int, prepare) -> Iterator[np.ndarray]:
        batch = []
        for path in paths:
            try:
                image = decode(path)
            except BadImage:
                raise CheckpointError("the image changed since parity checked it", path=path) from None
            batch.append(prepare(image if image.mode == "RGB" else image.convert("RGB")))
            image.close()
            if len(batch) == size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


def read_captions(path) -> list[str]:
    """One caption a line (UTF-8), blank lines left out: read bounded by the file's size and TEXT_LIMIT."""
    with open_source(path) as source:
        if source.size > TEXT_LIMIT:
            raise CheckpointError(f"{source.size} bytes, more than the {TEXT_LIMIT} a captions file may hold", path=path)
        data = source.pread(0, source.size)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"not UTF-8 text (byte {e.start})", path=path) from None
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    if not captions:
        raise CheckpointError("holds no caption (one a line)", path=path)
    if len(captions) > MAX_CAPTIONS:
        raise CheckpointError(f"{len(captions)} captions, more than the {MAX_CAPTIONS} parity compares", path=path)
    return captions


@dataclass
class UserSet:
    """The user's images and captions, and how they go through the model: `tokens` made once (small)."""

    images: UserImages
    captions: list[str]
    tokens: np.ndarray  # (captions, context) int64
    prepare: object  # image -> (3, R, R) float32, the model's own preprocessing
    batch: int = BATCH

    def text_batches(self) -> Iterator[np.ndarray]:
        for i in range(0, len(self.tokens), self.batch):
            yield self.tokens[i:i + self.batch]


def user_set(images, texts, config, vocab_file=None, skip_bad: bool = False, batch: int = BATCH) -> UserSet:
    """The inputs of `verify --images DIR --texts FILE` for `config`: its tokenizer and preprocessing."""
    from .. import towers
    from .inputs import input_sizes, preprocess

    if batch < 1:
        raise ParityError(f"a batch of {batch} images: give 1 or more")
    if not config.whole:
        raise ParityError("searching images by text needs both towers; this model is one tower alone")
    resolution, context, kind = input_sizes(config)
    tower = towers.get("text", kind)
    if not tower.tokenizes(vocab_file):
        raise ParityError("this model's tokenizer is its checkpoint folder's own, and the checkpoint has none: "
                          "give the folder it came in")
    captions = read_captions(texts)
    tokens = []
    for i, caption in enumerate(captions, 1):
        try:
            tokens.append(tower.tokenize([caption], context, vocab_file, False))
        except (RuntimeError, ValueError) as e:
            raise ParityError(f"{texts}: caption {i} cannot be tokenized for this model ({e})") from None
    spec = tower.image_preprocessing(resolution) if tower.family != "clip" else None
    return UserSet(UserImages.of(images, skip_bad), captions, np.concatenate(tokens),
                   lambda image: preprocess(image, resolution, spec), batch)


# ---------------------------------------------------------------- the comparison
@dataclass
class Ranking:
    """One search direction: for each query, the candidates ranked by cosine similarity in each framework."""

    direction: str  # "text->image" or "image->text"
    queries: int
    top_k: int
    top1_agreement: float
    topk_agreement: float  # the same top-k, in the same order
    min_rank_correlation: float  # Spearman's, over every candidate
    first_differing: str | None  # the first query whose top-k differs (its caption or file name)
    first_differing_index: int | None
    passed: bool  # every query's best candidate the same


@dataclass
class Search:
    """What `verify --images --texts` found: each embedding's differences and both search directions."""

    images: list[str]
    skipped: list[tuple[str, str]]
    ignored: list[str]
    captions: int
    differences: dict  # image_features, text_features: PhotoFeature
    rankings: dict[str, Ranking]
    passed: bool


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each row of `a` with the same row of `b` (no ties in float scores)."""
    n = a.shape[1]
    if n < 2:
        return np.ones(a.shape[0])
    ra, rb = np.argsort(np.argsort(a, axis=1), axis=1), np.argsort(np.argsort(b, axis=1), axis=1)
    d = (ra - rb).astype(np.float64)
    return 1 - 6 * np.sum(d * d, axis=1) / (n * (n * n - 1))


def rank(direction: str, torch_scores: np.ndarray, paddle_scores: np.ndarray, queries: list[str],
         top_k: int) -> Ranking:
    """Queries are rows: each row's candidates ranked by score, in each framework."""
    k = min(top_k, torch_scores.shape[1])
    top_t = np.argsort(-torch_scores, axis=1, kind="stable")[:, :k]
    top_p = np.argsort(-paddle_scores, axis=1, kind="stable")[:, :k]
    same = np.all(top_t == top_p, axis=1)
    first = int(np.argmin(same)) if not same.all() else None
    top1 = top_t[:, 0] == top_p[:, 0]
    return Ranking(direction, len(queries), k, float(top1.mean()), float(same.mean()),
                   float(spearman(torch_scores, paddle_scores).min()), None if first is None else queries[first],
                   first, bool(top1.all()))


def compare_search(data: UserSet, torch_out, paddle_out, min_cosine: float, top_k: int) -> Search:
    """Both frameworks' features of the user's set (Outputs), compared: features by cosine, rankings."""
    from .gate import cosine_features, similarity

    diffs = cosine_features(torch_out, paddle_out, ("image_features", "text_features"), min_cosine)
    st, sp = similarity(torch_out), similarity(paddle_out)  # (images, texts)
    rankings = {"text->image": rank("text->image", st.T, sp.T, data.captions, top_k),
                "image->text": rank("image->text", st, sp, data.images.names, top_k)}
    passed = all(d.passed for d in diffs.values()) and all(r.passed for r in rankings.values())
    return Search(data.images.names, data.images.skipped, data.images.ignored, len(data.captions), diffs,
                  rankings, passed)


def summary(s: Search) -> str:
    """The verdict line's part: each direction's agreement, and the first query whose ranking differs."""
    parts = []
    for r in s.rankings.values():
        part = f"{r.direction} top-1 {r.top1_agreement:.0%}, top-{r.top_k} {r.topk_agreement:.0%}"
        if r.first_differing is not None:
            part += f" (first differing query #{r.first_differing_index + 1} {printable(r.first_differing)!r})"
        parts.append(part)
    skipped = f", {len(s.skipped)} unreadable image{'s' * (len(s.skipped) != 1)} skipped" if s.skipped else ""
    return f"your {len(s.images)} images × {s.captions} captions{skipped}: " + "; ".join(parts)


def markdown(s: Search) -> list[str]:
    """The report's section on the user's data."""
    md = ["", "## Your images and captions", "",
          f"{len(s.images)} images and {s.captions} captions, through each model's own preprocessing and "
          "tokenizer. Gate: each feature vector's cosine between the frameworks ≥ "
          f"{s.differences['image_features'].bound}, and the same best result for every query in both "
          "search directions.", "",
          "| output | max abs Δ | relative Δ | lowest cosine | status |", "|---|---|---|---|---|"]
    md += [f"| {name} | {d.max_abs:.3e} | {d.relative:.3e} | {d.min_row_cosine:.10f} | {'PASS' if d.passed else 'FAIL'} |"
           for name, d in s.differences.items()]
    md += ["", "| search | queries | top-1 agreement | top-k agreement | lowest rank correlation | first query "
           "whose top-k differs | status |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r.direction} | {r.queries} | {r.top1_agreement:.0%} | {r.topk_agreement:.0%} (k={r.top_k}) | "
           f"{r.min_rank_correlation:.6f} | {'none' if r.first_differing is None else printable(r.first_differing)} | "
           f"{'PASS' if r.passed else 'FAIL'} |" for r in s.rankings.values()]
    if s.skipped:
        md += ["", "Unreadable images, skipped:", ""] + [f"- `{printable(n)}`: {printable(why)}" for n, why in s.skipped]
    if s.ignored:
        md += ["", f"Files without an image suffix, left out: {', '.join(printable(n) for n in s.ignored)}."]
    return md
