"""`parity verify-all`'s sweep: registered variants one after another through parity's torch and Paddle
models, each on its release file where the weights folder has it, else on deterministic synthetic
weights; one variant's weights in memory at a time, each variant's report written as it is done."""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..config.registry import Entry
from ..errors import ParityError
from .report import Report, write_variant


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
    from .weights import cached_state_dict
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
