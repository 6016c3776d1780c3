"""`parity verify-all`'s sweep: registered variants one after another through parity's torch and Paddle
models, each on its release file where the weights folder has it, else on deterministic synthetic
weights; one variant's weights in memory at a time, each variant's report written as it is done."""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..config import registry
from ..config.registry import Entry
from ..errors import ParityError
from .report import Report, write_variant


@dataclass(frozen=True)
class Selection:
    """The variants a sweep runs: `entries` (registry order), chosen by `family` ("all": every registered
    model) or by name, then the `shard` (i, n) of them: every n-th from the i-th, so that n jobs with
    i = 1..n run each chosen variant once, their counts differing by one at most."""

    entries: list[Entry]
    family: str | None
    shard: tuple[int, int] | None
    chosen: int  # how many before sharding

    def describe(self) -> str:
        """E.g. "shard 1/3 of family all: 14 of 41 models"."""
        what = f"family {self.family}" if self.family else "the variants named"
        head = f"shard {self.shard[0]}/{self.shard[1]} of {what}" if self.shard else what
        return f"{head}: {len(self.entries)} of {self.chosen} model{'s' * (self.chosen != 1)}"


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" (1 <= I <= N) as (I, N)."""
    parts = text.split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        i, n = (int(p) for p in parts)
        if 1 <= i <= n:
            return i, n
    raise ParityError(f"shard {text!r} is not I/N with 1 <= I <= N (e.g. 2/3: the second of three jobs)")


def select(family: str | None = None, names: Sequence[str] = (), shard: tuple[int, int] | None = None) -> Selection:
    """The sweep's variants: `names` (any registered), else `family` ("all", or one of the registry's
    families), else OpenAI's nine; with both, the names must be of that family. Then one `shard` of them.
    ConfigError for an unknown name or family."""
    if family not in (None, "all", *registry.FAMILIES):
        raise registry.ConfigError(f"unknown family {family!r}; known: all, {', '.join(registry.FAMILIES)}")
    pool = list(registry.ENTRIES.values()) if family == "all" else registry.family(family or "openai")
    entries = pool
    if names:
        entries = list(dict.fromkeys(registry.get(n) for n in names))
        stray = [e.name for e in entries if family and e not in pool]
        if stray:
            raise registry.ConfigError(f"{', '.join(stray)} not of family {family}")
    picked = entries[shard[0] - 1::shard[1]] if shard else entries
    return Selection(picked, family if not names else None, shard, len(entries))


@dataclass(frozen=True)
class Step:
    """Where a sweep stands: variant `index` of `total`, on its release file `weights` (None: synthetic
    weights); `report` is None as the variant starts, its report once it is done."""

    index: int
    total: int
    entry: Entry
    weights: Path | None
    report: Report | None = None


def sweep(entries: Sequence[Entry], weights_dir: Path, seed: int, report_dir: Path,
          progress: Callable[[Step], None] = lambda step: None, **options) -> list[Report]:
    """Each entry verified, in order: on `weights_dir / entry.filename` when the entry has a release file
    and it is there (labelled by its SHA-256, checked against the reference table when official), else on
    synthetic weights of `seed` (cached). `options`: verify's device, atol, rtol, noise_factor. Each report is written under
    `report_dir` (`write_variant`); `progress` hears of each variant as it starts and as it ends.
    ParityError, its message led by the variant's name, for a variant that cannot be verified."""
    from ..api import verify as verify_file
    from ..models.frameworks import require
    from .weights import cached_state_dict

    require("verify", "verifying")
    from .run import verify_state_dict

    reports = []
    for i, entry in enumerate(entries, 1):
        # a release file under its release name; entries released as folders (open_clip's, cn_clip's) have none
        real = weights_dir / entry.filename if entry.filename else None
        weights = real if real is not None and real.is_file() else None
        progress(Step(i, len(entries), entry, weights))
        try:
            if weights is not None:
                result = verify_file(weights, config=entry.config, **options)
            else:
                state = cached_state_dict(entry.config, seed)
                result = verify_state_dict(state, f"synthetic seed {seed}", entry.config, **options)
                del state
            write_variant(result, report_dir)
        except ParityError as e:
            raise ParityError(f"{entry.name}: {e}") from e
        gc.collect()
        reports.append(result)
        progress(Step(i, len(entries), entry, weights, result))
    return reports
