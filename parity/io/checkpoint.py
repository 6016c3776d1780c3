"""Checkpoints in: any supported file becomes a `Checkpoint`, its tensors in their own layout, its config
and where that config came from.

The config comes from the first of: the file's own metadata (parity's record, safetensors metadata),
an exact match of its shapes with one registry entry, a config the caller gives. What no tensor says
(heads, activations, eps) is never guessed: without one of these the config stays incomplete, which
conversion does not need and computing refuses. A given config that contradicts the tensors, or the
config the file already has, is an error naming the field.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from collections import Counter
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import layouts
from .. import towers as kinds
from ..config import registry
from ..config.resolve import describe_fits, given_config, resolve_config
from ..config.schema import Config, ConfigError
from ..errors import CheckpointError, ConfigMissingError
from .formats import FORMAT_NAMES, RawCheckpoint, bounded_json
from .content import read_array
from .content import parse_record, strip_prefixes, tensors_of, unwrap
from .formats.folders import open_input
from ..layouts import StateDictError, check_keys
from .tensors import Planned, Record

META_PREFIX = "parity."  # safetensors metadata keys


@dataclass
class Checkpoint:
    """A CLIP checkpoint in memory: its tensors in one layout, its config, and where both came from.

    `layout` names a layout of `parity.layouts` ("openai" is the hub). `config` is complete, or holds
    only what the shapes say (`config.missing()` names the rest); `config_source` says where it came
    from. `record` is parity's record (hub-only tensors, source dtypes) when the file carried one.
    Tensors are numpy arrays, or (from `convert`) `Stored` tensors read from the file when used.
    """

    state_dict: dict[str, np.ndarray]
    layout: str
    config: Config
    config_source: str = "unknown"
    format: str | None = None
    path: Path | None = None
    sha256: str | None = None
    record: Record | None = None
    provenance: dict = field(default_factory=dict)  # source file, its SHA-256, parity version of the writer
    unwrapped: list[str] = field(default_factory=list)  # wrappers and prefixes stripped on reading
    notes: list[str] = field(default_factory=list)
    library_config: dict | None = None  # a folder's config.json as read, for what only its library reads

    @property
    def name(self) -> str | None:
        """The registry's name for this config (None for a config the registry does not hold)."""
        return registry.name_of(self.config)

    @property
    def label(self) -> str:
        """The registry's name, else what it is: 'unregistered CLIP', 'unregistered text tower', ..."""
        if self.name:
            return self.name
        return (f"unregistered {kinds.FAMILIES[kinds.family(self.config)]}" if self.config.whole
                else f"unregistered {self.config.towers[0]} tower")

    @property
    def vocab_file(self) -> Path | None:
        """The text tower's vocabulary in the checkpoint's folder (a BERT's `vocab.txt`), where it has one:
        any entry of that name (a FIFO or a link to a device is refused when read, never passed over)."""
        name = kinds.text(self.config).vocabulary if self.config.text is not None else None
        if name and self.path is not None and self.path.is_dir() and os.path.lexists(self.path / name):
            return self.path / name
        return None

    @property
    def official(self) -> bool:
        """The file is a registered release file: its SHA-256 is the release's, and so is its config."""
        entry = registry.by_sha256(self.sha256)
        return entry is not None and entry.config.shapes() == self.config.shapes()

    def require_config(self) -> Config:
        """The complete config, or ConfigMissingError saying what is unknown and how to give it."""
        if self.config.complete:
            return self.config
        _, fits = registry.config_by_shapes(self.config.shapes())
        if fits:
            differ = sorted({f"{tower}.{name}" for a in fits for b in fits for tower in ("vision", "text")
                             for name in ("heads", "activation", "eps")
                             if getattr(getattr(a.config, tower), name) != getattr(getattr(b.config, tower), name)})
            raise ConfigMissingError(
                f"the config is ambiguous: its shapes fit {describe_fits(fits)}, which differ in "
                f"{', '.join(differ)}, and the file carries no config; give a registered name or a config file", path=self.path)
        if self.config_source != "unknown":  # a library's config file, short of what no such file says
            raise ConfigMissingError(
                f"{', '.join(self.config.missing())} is unknown: no tensor says it, nor the file's "
                f"config ({self.config_source}), and no registered model of these shapes does; give a "
                "registered name or a config file", path=self.path)
        raise ConfigMissingError(
            f"the config is unknown ({', '.join(self.config.missing())}): no tensor says it, the "
            "file carries no config, and its shapes match no registered model; give a registered name or a "
            "config file", path=self.path)

    def hub_plan(self) -> dict[str, Planned]:
        """The hub (openai) state dict, each tensor made when asked for, in the source's own dtypes."""
        if self.layout == layouts.HUB.NAME:
            return {k: Planned(lambda v=v: read_array(v), v.dtype, tuple(v.shape)) for k, v in self.state_dict.items()}
        layout = layouts.get(self.layout)
        plan, notes = layouts.rows.to_hub(self.state_dict, layout.rows_for(self.config), layouts.HUB.shapes(self.config),
                                          self.record, layouts.HUB.defaults(self.config))
        self.notes.extend(n for n in notes if n not in self.notes)
        try:  # a record short of a buffer would otherwise make a file that strict loading refuses
            check_keys({k: np.broadcast_to(np.uint8(0), p.shape) for k, p in plan.items()},
                       layouts.HUB.shapes(self.config), "hub state dict (after the record)",
                       optional=layouts.HUB.ARCHIVE_ENTRIES)
        except StateDictError as e:
            raise CheckpointError(f"{e}", path=self.path) from None
        return plan

    def hub_state(self) -> dict[str, np.ndarray]:
        """The hub state dict, with the source's own dtypes and hub-only tensors."""
        if self.layout == layouts.HUB.NAME:
            return {k: read_array(v) for k, v in self.state_dict.items()}
        return {k: p() for k, p in self.hub_plan().items()}

    def plan_in(self, name: str, dtype: str | None = "float32") -> dict[str, Planned]:
        """This checkpoint's tensors in layout `name`, each made when asked for (read from the file, where
        it is still open); into a Paddle layout, floats are cast to `dtype` (None keeps them)."""
        target = layouts.get(name)
        cast = dtype if target.framework == "paddle" else None
        if target.name == self.layout:
            def wanted(v):
                return np.dtype(cast) if cast and v.dtype.kind == "f" else v.dtype
            return {k: Planned(lambda v=v: read_array(v), wanted(v), tuple(v.shape)) for k, v in self.state_dict.items()}
        hub = self.hub_plan()
        if target.name == layouts.HUB.NAME:
            return hub
        return layouts.rows.from_hub(hub, target.rows_for(self.config), cast)[0]

    def tower(self, tower: str, projection: bool = False) -> "Checkpoint":
        """One tower of this CLIP alone ("image" or "text"), with its projection or without, in the hub
        layout: its tensors are the whole model's own, each made when used (bit for bit, in its dtype)."""
        try:
            config = self.config.only(tower, projection)
        except ConfigError as e:
            raise e.at(self.path) from None
        hub = self.hub_plan()
        state = {k: hub[k] for k in layouts.HUB.shapes(config)}
        return replace(self, state_dict=state, layout=layouts.HUB.NAME, config=config, record=None,
                       library_config=None, config_source=f"{self.config_source}, its {tower} tower")

    def in_layout(self, name: str, dtype: str | None = "float32") -> "Checkpoint":
        """This checkpoint in layout `name`; into a Paddle layout, floats are cast to `dtype` (None keeps them)."""
        name = layouts.get(name).name
        if name == self.layout:
            return self
        hub = self.hub_state()
        if name == layouts.HUB.NAME:
            return replace(self, state_dict=hub, layout=name, record=None)
        target = layouts.get(name)
        cast = dtype if target.framework == "paddle" else None
        plan, record = layouts.rows.from_hub(hub, target.rows_for(self.config), cast)
        return replace(self, state_dict={k: p() for k, p in plan.items()}, layout=name, record=record)


# ---------------------------------------------------------------- reading
def _record(data: dict | None, config: Config, layout, path) -> Record | None:
    if data is None:
        return None
    try:
        record = Record.from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"parity's record is malformed ({e})", path=path) from None
    expected = layouts.HUB.shapes(config, archive_entries=True)
    wrong = sorted(k for k in list(record.buffers) + list(record.dtypes)
                   if k not in expected or (k in record.buffers and layout.rows_for(config).hub_row(k)[0].layout is not None))
    if wrong:
        raise CheckpointError(f"parity's record names keys this CLIP does not have: {', '.join(wrong[:8])}", path=path)
    misshaped = sorted(k for k, v in record.buffers.items() if tuple(v.shape) != tuple(expected[k]))
    if misshaped:
        raise CheckpointError(f"parity's record holds buffers of the wrong shape: {', '.join(misshaped[:8])}", path=path)
    return record


def _metadata_config(record: dict | None, metadata: dict, layout, path) -> tuple[Config | None, str]:
    """The config a file carries: a folder's config file (as its library reads it), else parity's record."""
    # a folder's config file, as the folder reader parsed it (a dict); a file's own metadata holds strings
    # only, whatever their names, and is never taken for a library's config
    def parsed(name):
        return isinstance(metadata.get(name), dict)

    # a config file named for one layout (open_clip_config.json) is that layout's; a config.json, the
    # detected layout's (hf, paddlenlp)
    named = [m for m in layouts.LAYOUTS.values() if m.folder and m.folder.config_file != "config.json"]
    carrier = next((m for m in named if parsed(m.folder.config_file)), None)
    # open_clip's folder holds openai's key names (its SigLIP, its own)
    if carrier is not None and layout.name not in (layouts.HUB.NAME, carrier.name):
        raise CheckpointError(f"a {carrier.folder.config_file} beside tensors in the {layout.name} layout", path=path)
    if carrier is None and parsed("config.json") and layout.folder is not None:
        carrier = layout
    text = (record or {}).get("config") or metadata.get(META_PREFIX + "config")
    try:
        if text and not isinstance(text, dict):
            text = bounded_json.loads(text, bounded_json.CONFIG, path)
        recorded = Config.from_dict(text) if text else None
    except (ConfigError, CheckpointError) as e:
        raise CheckpointError(f"the config stored in the file is malformed ({e})", path=path) from None
    if carrier is None:
        return recorded, "the file's own record" if recorded else "unknown"
    name = carrier.folder.config_file
    try:
        config = carrier.folder.config_from_json(metadata[name])
    except ConfigError as e:
        raise ConfigError(f"{e}", path=path) from None
    if config.complete or recorded is None:
        return config, name
    # what no library config says (a BERT's context: its tokenizer's length) may be in parity's record
    try:
        return config.filled(recorded), f"{name}, {', '.join(config.missing())} from parity's record"
    except ConfigError as e:
        raise CheckpointError(f"parity's record contradicts {name} ({e})", path=path) from None


def from_raw(raw: RawCheckpoint, path, config=None, sha256=None) -> Checkpoint:
    """A Checkpoint from what a reader returned: unwrapped, its layout detected, checked, its config found.

    `config`: a Config, a registered name or a JSON file; used where the file has none, checked where it has.
    `sha256`: a callable giving the file's SHA-256, asked only where the shapes fit registered models of
    different configs (a release file is known by its hash).
    """
    content, unwrapped = unwrap(raw.content, path)
    notes = list(raw.notes)
    tensors, record = tensors_of(content, path, notes)
    tensors = strip_prefixes(tensors, unwrapped)
    if raw.metadata.get(META_PREFIX + "extras"):
        record = parse_record(raw.metadata[META_PREFIX + "extras"], path)
    refused = next(filter(None, (layout.foreign(tensors) for layout in layouts.LAYOUTS.values())), None)
    if refused:
        raise CheckpointError(f"{refused}; parity converts and verifies CLIP's own architecture only", path=path)
    try:
        name = layouts.detect(tensors)
        layout = layouts.get(name)
        unheld = layout.unheld(tensors)
        if unheld:
            raise CheckpointError(f"{unheld}, so this file cannot be converted or verified", path=path)
        keymap = layout.rows_for(tensors)
        shapes = layouts.HUB.infer(keymap.hub_shapes({k: v.shape for k, v in tensors.items()}))
    except ConfigError as e:
        sample = ", ".join(list(tensors)[:3])
        raise CheckpointError(f"not a CLIP checkpoint in a layout parity reads ({e}; {len(tensors)} "
                              f"tensors, e.g. {sample}); parity reads the layouts {', '.join(layouts.LAYOUTS)}", path=path) from None
    try:
        expected = keymap.layout_shapes(layouts.HUB.shapes(shapes))
        optional = layouts.HUB.ARCHIVE_ENTRIES if name == layouts.HUB.NAME else ()
        check_keys(tensors, expected, f"{name} state dict", optional=optional)
        stored, stored_from = _metadata_config(record, raw.metadata, layout, path)
        # openai/CLIP's model alone keeps input_resolution, context_length and vocab_size in its state dict
        # (the release archives), and a layout whose library builds every CLIP by openai's rule (PASSL)
        # holds no other: such a file is of the openai family, whatever else shares its shapes
        family, fixed, rule = None, None, layout.fixed and layout.fixed.rule
        if all(k in tensors for k in layouts.HUB.ARCHIVE_ENTRIES):
            family = ("openai", "openai/CLIP's archive entries")
        elif rule is not None:
            family = ("openai", f"the {name} layout, whose library builds openai's CLIP only")
        if rule is not None:  # what its library computes from shapes no registry entry names
            fixed = (rule, f"the {name} layout: {layout.fixed.library} builds every CLIP with {layout.fixed.text}")
        resolved, source = resolve_config(shapes, stored, config, path, stored_from, sha256, family, fixed)
    except (StateDictError, ConfigError) as e:
        raise e.at(path) from None
    provenance = {k: v for k, v in (record or {}).items() if k not in ("buffers", "dtypes", "config")}
    provenance.update({k[len(META_PREFIX):]: v for k, v in raw.metadata.items()
                       if k.startswith(META_PREFIX) and k not in (META_PREFIX + "extras", META_PREFIX + "config")})
    library_config = raw.metadata.get("config.json")
    return Checkpoint(tensors, name, resolved, source, raw.format, Path(path), None,
                      _record(record, resolved, layout, path), provenance, unwrapped, notes,
                      library_config if isinstance(library_config, dict) else None)


def load(path, layout: str | None = None, config=None) -> Checkpoint:
    """Read a checkpoint of any supported format and layout, without running code from it.

    `layout` converts to that layout (None: as stored); `config` (a Config, a registered name or a JSON
    file) gives the config where the file has none, and is checked where it has. Raises a ParityError
    with a one-line message on bad input.

    >>> ck = parity.load("RN50.pt")                       # doctest: +SKIP
    >>> ck.name, ck.layout, ck.config_source
    ('RN50', 'openai', 'registry: RN50 (by its shapes)')
    """
    if config is not None:
        given_config(config)  # a bad name or file fails before the file is read
    with open_input(path) as source, ThreadPoolExecutor(1) as pool:
        stop = threading.Event()
        digest = pool.submit(source.sha256, (), stop)  # beside reading: hashlib releases the GIL
        try:
            ck = from_raw(source.read(), Path(path), config, digest.result)
            ck.state_dict = {k: read_array(v) for k, v in ck.state_dict.items()}  # each read (and checked) once
            ck.sha256 = digest.result()
            source.check_unchanged()
        except BaseException:
            stop.set()
            raise
    return ck.in_layout(layout) if layout else ck


@contextmanager
def opened(path, config=None) -> Iterator[Checkpoint]:
    """A checkpoint whose tensors are read when used (`Stored`: each read checked as `load` checks it),
    its file held open meanwhile; the SHA-256 is known on entry, and the file is checked unchanged on exit.
    For work that holds part of a model at a time (`plan_in`)."""
    if config is not None:
        given_config(config)
    with open_input(path) as source, ThreadPoolExecutor(1) as pool:
        stop = threading.Event()
        digest = pool.submit(source.sha256, (), stop)
        try:
            ck = from_raw(source.read(), Path(path), config, digest.result)
            ck.sha256 = digest.result()
            yield ck
            source.check_unchanged()
        except BaseException:
            stop.set()
            raise


# ---------------------------------------------------------------- info
def describe(path, config=None) -> dict:
    """What `parity info` prints: format, layout, config and its source, tensors, dtypes, bytes, SHA-256, official."""
    with open_input(path) as source:
        raw = source.read()  # shapes and dtypes only: no tensor is read, the CRC-32s are checked on the hash pass
        digest = functools.cache(lambda: source.sha256(raw.entries))
        ck = from_raw(raw, Path(path), config, digest)
        ck.sha256 = digest()
        size = sum(f.size for f in source.files)
    mix = Counter(str(v.dtype) for v in ck.state_dict.values())
    return {
        "file": str(ck.path), "format": FORMAT_NAMES[ck.format], "layout": ck.layout,
        "model": ("registered shapes, ambiguous config" if not ck.name and ck.config_source.startswith("ambiguous")
                  else ck.label),
        "config": ck.config.describe() + ("" if ck.config.complete else
                                          f" (unknown: {', '.join(ck.config.missing())})"),
        "config from": ck.config_source, "config_fields": ck.config.to_dict(),
        "tensors": len(ck.state_dict), "parameters": sum(math.prod(v.shape) for v in ck.state_dict.values()),
        "dtypes": dict(sorted(mix.items())), "bytes": size, "sha256": ck.sha256,
        "official": f"yes, the {ck.name} release file" if ck.official else "no (SHA-256 not in the registry)",
        "record": (f"parity record: {len(ck.record.buffers)} hub-only tensors, {len(ck.record.dtypes)} source "
                   f"dtypes" + (f", from {ck.provenance['source'].get('file')}" if isinstance(
                       ck.provenance.get("source"), dict) else "")) if ck.record is not None else "none",
        "unwrapped": ", ".join(ck.unwrapped) or "nothing",
        "notes": ck.notes,
    }
