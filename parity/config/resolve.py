"""Where a checkpoint's config comes from, in order: the file's own metadata, an exact registry match of its
shapes (the release's SHA-256 or the file's family where shapes fit several), a library's fixed rule, or
the caller. What no tensor says is never guessed: without one of these the config stays incomplete."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, ParityError
from ..io.formats import bounded_json
from . import registry
from .schema import Config


def read_config_file(path: Path) -> Config:
    """A config from a JSON file in `Config.to_dict`'s form (`parity info --json` shows a file's as
    config_fields, with null for what is unknown), or such an object under a "config" key; or open_clip's
    own: a model config (model_configs/NAME.json) or a hub folder's open_clip_config.json."""
    try:
        data = bounded_json.read(path, bounded_json.CONFIG)
    except ParityError as e:  # a FIFO, a device, too large, too many values, too deep, not JSON
        raise ConfigError(e.message, path=e.path) from None
    try:
        if "vision_cfg" in data or "model_cfg" in data:
            from ..layouts import open_clip
            return open_clip.config_from_model_cfg(data.get("model_cfg", data))
        return Config.from_dict(data.get("config", data))
    except ConfigError as e:
        raise ConfigError(f"{e}", path=path) from None


def given_config(value) -> tuple[Config, str]:
    """A config the caller gives: a Config, a registered name, or a JSON file's path; and how to name it."""
    if isinstance(value, Config):
        value.validate()
        return value, "given"
    text = str(value)
    if text.endswith(".json") or Path(text).is_file():
        return read_config_file(Path(text)), f"given: {Path(text).name}"
    entry = registry.get(text)
    return entry.config, f"given: {entry.name}"


def resolve_config(shapes: Config, metadata: Config | None, given, path,
                   metadata_source: str = "the file's own record", sha256=None,
                   family: str | None = None, fixed: tuple | None = None) -> tuple[Config, str]:
    """The config of a checkpoint whose tensors say `shapes`: its metadata's, else the registry's (the
    entry these shapes name; where they fit entries of different configs, the one of the `family`
    (name, what says it) that the file says it is of, or the one whose release file this is by
    `sha256()`, which is called only then),
    else, for a layout whose library builds every CLIP by one rule, `fixed` (rule, what says it),
    else the given one; a given config must agree with whichever was found."""
    found, source = None, "unknown"
    if metadata is not None:
        metadata.check_shapes(shapes, f"{path}'s tensors")
        # what a library's config leaves to the tensors (open_clip's sizes of a timm trunk it names) they say
        found, source = shapes.filled(metadata), metadata_source
    else:
        entry, fits = registry.config_by_shapes(shapes)
        how = "its shapes"
        if entry is None and fits and family is not None:
            entry, fits = registry.config_by_shapes(shapes, family[0])
            how = f"its shapes and {family[1]}"
        if entry is not None:
            found, source = entry.config, f"registry: {entry.name} (by {how})"
        elif fits:
            # the hash only where it can decide: a file is known by it only if one of the fits has one
            # registered (bigG's two fits have none, and hashing 10 GB first would hold up the conversion)
            known = sha256 is not None and any(e.sha256 for e in fits)
            release = registry.by_sha256(sha256()) if known else None
            if release in fits:
                found, source = release.config, f"registry: {release.name} (by its SHA-256)"
            else:
                source = f"ambiguous: the shapes fit {describe_fits(fits)}"
        if found is None and fixed is not None:  # a layout whose library builds every CLIP by one rule
            try:
                ruled = fixed[0](shapes)
                ruled.validate()
                ruled.check_shapes(shapes)
                found, source = ruled, fixed[1]
            except ConfigError:
                pass  # shapes its library cannot build (heads of 64 that do not divide the width, ...)
    if given is not None:
        config, named = given_config(given)
        try:
            config.check_shapes(shapes, f"{path}'s tensors")
            if found is not None:
                config.check_shapes(found, f"the file's config ({source})")
        except ConfigError as e:
            raise ConfigError(f"{e}", path=path) from None
        if found is None:
            found, source = config, named
        elif not found.complete:
            found, source = found.filled(config), f"{source}, {', '.join(found.missing())} {named}"
    elif found is not None and not found.complete:
        found, source = _from_registry(found, source)
    return found or shapes, source


def _from_registry(config: Config, source: str) -> tuple[Config, str]:
    """A file's config short of what no library config says (a BERT's context), completed by the
    registry entries it agrees with, where they all complete it alike."""
    filled = {}
    for entry in registry.by_shapes(config.shapes()):
        try:
            filled.setdefault(config.filled(entry.config), []).append(entry.name)
        except ConfigError:
            continue
    if len(filled) != 1:
        return config, source
    (complete, names), = filled.items()
    return complete, f"{source}, {', '.join(config.missing())} from registry: {', '.join(names)}"


def describe_fits(entries) -> str:
    """How entries whose shapes match are named in a message: their names and activations."""
    # "ViT-B/32 (quick_gelu), ViT-B-32 (gelu)"
    return ", ".join(f"{e.name} ({e.config.vision.activation or e.config.text.activation})" for e in entries)
