"""`parity verify-all`'s sweep: registered variants one after another through parity's torch and Paddle
models, each on its release file where the weights folder has it, else on deterministic synthetic
weights; one variant's weights in memory at a time, each variant's report written as it is done."""
from __future__ import annotations

import gc
import time
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
    weights); `report` is None as the variant starts, its report once it is done; `stage`, a line on a
    stage of a long variant just done (`Stages`)."""

    index: int
    total: int
    entry: Entry
    weights: Path | None
    report: Report | None = None
    stage: str | None = None


class Stages:
    """One variant's verification, stage by stage: each stage timed (`done` gives the seconds, which go
    into its report), and told to `show` as it ends once the variant has run for `after` seconds (those
    before are told then), so that a long variant says what it did and a short one stays one line."""

    def __init__(self, show: Callable[[str], None], after: float = 30.0):
        self.show, self.after, self.start = show, after, time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        self._told = 0

    def __call__(self, name: str) -> None:
        """Stage `name` starts (the one before ends)."""
        self._end()
        self._current = (name, time.perf_counter())

    def _end(self) -> None:
        if self._current is None:
            return
        name, began = self._current
        self._current = None
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began
        if time.perf_counter() - self.start >= self.after:
            for told in list(self.seconds)[self._told:]:
                self.show(f"{told}: {self.seconds[told]:.1f} s")
            self._told = len(self.seconds)

    def done(self) -> dict[str, float]:
        """The seconds of each stage (the last one ends now)."""
        self._end()
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


class Stopped(ParityError):
    """A variant that could not be verified stopped the sweep: `variant` names it, `done` holds the reports
    of the variants verified before it."""

    def __init__(self, message: str = "", variant: str = "", done: list | None = None):
        super().__init__(message)
        self.variant, self.done = variant, done or []


def sweep(entries: Sequence[Entry], weights_dir: Path, seed: int, report_dir: Path,
          progress: Callable[[Step], None] = lambda step: None, **options) -> list[Report]:
    """Each entry verified, in order: on `weights_dir / entry.filename` when the entry has a release file
    and it is there (labelled by its SHA-256, checked against the reference table when official), else on
    synthetic weights of `seed` (cached). `options`: verify's device, atol, rtol, noise_factor, quick. Each report is
    written under `report_dir` (`write_variant`); `progress` hears of each variant as it starts and as it ends,
    and of each stage of one that takes over 30 s (`Stages`).
    `Stopped` (a ParityError, its message led by the variant's name) for a variant that cannot be verified."""
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
        stages = Stages(lambda line: progress(Step(i, len(entries), entry, weights, stage=line)))
        try:
            if weights is not None:
                result = verify_file(weights, config=entry.config, stage=stages, **options)
            else:
                stages("synthetic weights")
                state = cached_state_dict(entry.config, seed)
                result = verify_state_dict(state, f"synthetic seed {seed}", entry.config, stage=stages, **options)
                del state
            stages("reports")
            write_variant(result, report_dir)
            result.stages = stages.done()
        except ParityError as e:
            raise Stopped(f"{entry.name}: {e}", entry.name, reports) from e
        gc.collect()
        reports.append(result)
        progress(Step(i, len(entries), entry, weights, result))
    return reports
