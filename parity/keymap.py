"""One declarative map between the official (torch) layout and parity's Paddle layout, read both ways.

Tensors travel as numpy arrays, so a conversion needs no framework. Each row pairs a torch key pattern
with a Paddle one and names a transform; `{i}` matches a layer index, `{p}` a dotted path, `{x}` one
word, and `{qkv}` on the Paddle side stands for the three keys that one torch tensor splits into.
What Paddle has no place for (BatchNorm's `num_batches_tracked`, the official archives' three int
entries, source dtypes after a cast) goes into an `Extras` record, which brings the way back home exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np

from .errors import ParityError
from .formats.source import Stored
from .variants import CLIPConfig, infer_config, match_variant

ARCHIVE_ENTRIES = ("input_resolution", "context_length", "vocab_size")


class StateDictError(ParityError):
    """A state dict that does not fit the expected layout; the message names every offending key."""


@dataclass(frozen=True)
class Row:
    torch: str
    paddle: str | None  # None: a torch-only tensor, kept in the extras record
    transform: str


ROWS: tuple[Row, ...] = (
    # transformer blocks of both towers: torch fuses q, k, v into one [3D, D] in_proj
    Row("{p}.attn.in_proj_weight", "{p}.attn.{qkv}_proj.weight", "split_qkv_linear"),
    Row("{p}.attn.in_proj_bias", "{p}.attn.{qkv}_proj.bias", "split_qkv"),
    Row("{p}.attn.out_proj.weight", "{p}.attn.out_proj.weight", "linear"),
    Row("{p}.mlp.c_{x}.weight", "{p}.mlp.c_{x}.weight", "linear"),
    Row("visual.attnpool.{x}_proj.weight", "visual.attnpool.{x}_proj.weight", "linear"),
    Row("{p}.running_mean", "{p}._mean", "same"),
    Row("{p}.running_var", "{p}._variance", "same"),
    Row("{p}.num_batches_tracked", None, "extra"),
    *(Row(name, None, "extra") for name in ARCHIVE_ENTRIES),
    Row("logit_scale", "logit_scale", "scalar"),
    Row("{p}", "{p}", "same"),  # every other name is shared (validated against the layout first)
)


def _linear(w):  # torch Linear [out, in] <-> Paddle Linear [in, out]; a view, no copy
    return w.T


def _split3(a):  # [3D, ...] -> three [D, ...]
    if a.shape[0] % 3:
        raise StateDictError(f"fused q/k/v tensor of shape {list(a.shape)} does not split in three")
    return np.split(a, 3, axis=0)


# transform name -> (torch -> paddle parts, paddle parts -> torch)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "same": (lambda a: [a], lambda parts: parts[0]),
    "linear": (lambda a: [_linear(a)], lambda parts: _linear(parts[0])),
    "split_qkv": (_split3, lambda parts: np.concatenate(parts, axis=0)),
    # [3D, D] -> q, k, v as Paddle Linear weights [D, D] each, transposed
    "split_qkv_linear": (lambda a: [_linear(p) for p in _split3(a)],
                         lambda parts: np.concatenate([_linear(p) for p in parts], axis=0)),
    # torch keeps logit_scale 0-d, Paddle as shape [1]
    "scalar": (lambda a: [a.reshape(1)], lambda parts: parts[0].reshape(())),
}

_QKV = ("q", "k", "v")
_SLOTS = {"i": r"\d+", "p": r".+", "x": r"[a-z]+", "qkv": r"[qkv]"}


def _regex(pattern: str) -> re.Pattern:
    out = re.escape(pattern)
    for slot, rx in _SLOTS.items():
        out = out.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>{rx})")
    return re.compile(out)


_COMPILED = [(row, _regex(row.torch), _regex(row.paddle) if row.paddle else None) for row in ROWS]


def _fill(pattern: str, groups: Mapping[str, str]) -> str:
    for slot, value in groups.items():
        pattern = pattern.replace("{" + slot + "}", value)
    return pattern


def torch_row(key: str) -> tuple[Row, dict[str, str]]:
    """The first row whose torch pattern matches `key`, with the placeholder values."""
    for row, rx, _ in _COMPILED:
        if m := rx.fullmatch(key):
            return row, m.groupdict()
    raise StateDictError(f"no key-map row for {key!r}")  # unreachable: the last row matches all


def paddle_row(key: str) -> tuple[Row, dict[str, str]]:
    for row, _, rx in _COMPILED:
        if rx is not None and (m := rx.fullmatch(key)):
            return row, m.groupdict()
    raise StateDictError(f"no key-map row for {key!r}")


def paddle_keys_for(torch_key: str) -> list[str]:
    """The Paddle keys that one torch key maps to (empty for a torch-only tensor)."""
    row, groups = torch_row(torch_key)
    if row.paddle is None:
        return []
    if "{qkv}" in row.paddle:
        return [_fill(row.paddle, {**groups, "qkv": s}) for s in _QKV]
    return [_fill(row.paddle, groups)]


# ---------------------------------------------------------------- expected layouts, framework-free
def _block(prefix: str, w: int) -> dict[str, tuple]:
    return {f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
            f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
            f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,),
            f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,)}


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _resnet(c: CLIPConfig) -> dict[str, tuple]:
    w, half = c.vision_width, c.vision_width // 2
    s = {"visual.conv1.weight": (half, 3, 3, 3), **_bn("visual.bn1", half),
         "visual.conv2.weight": (half, half, 3, 3), **_bn("visual.bn2", half),
         "visual.conv3.weight": (w, half, 3, 3), **_bn("visual.bn3", w)}
    inplanes = w
    for stage, blocks in enumerate(c.vision_layers, start=1):
        planes = w * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"visual.layer{stage}.{b}"
            s.update({f"{p}.conv1.weight": (planes, inplanes, 1, 1), **_bn(f"{p}.bn1", planes),
                      f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes),
                      f"{p}.conv3.weight": (4 * planes, planes, 1, 1), **_bn(f"{p}.bn3", 4 * planes)})
            if b == 0:  # the first block of every stage changes width or resolution
                s.update({f"{p}.downsample.0.weight": (4 * planes, inplanes, 1, 1),
                          **_bn(f"{p}.downsample.1", 4 * planes)})
            inplanes = 4 * planes
    d, grid = 32 * w, c.image_resolution // 32
    s["visual.attnpool.positional_embedding"] = (grid * grid + 1, d)
    for x in ("k", "q", "v"):
        s.update({f"visual.attnpool.{x}_proj.weight": (d, d), f"visual.attnpool.{x}_proj.bias": (d,)})
    s.update({"visual.attnpool.c_proj.weight": (c.embed_dim, d), "visual.attnpool.c_proj.bias": (c.embed_dim,)})
    return s


def _vit(c: CLIPConfig) -> dict[str, tuple]:
    w, p, grid = c.vision_width, c.vision_patch_size, c.image_resolution // c.vision_patch_size
    s = {"visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w),
         "visual.proj": (w, c.embed_dim), "visual.conv1.weight": (w, 3, p, p),
         "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,)}
    for i in range(c.vision_layers):
        s.update(_block(f"visual.transformer.resblocks.{i}", w))
    s.update({"visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
    return s


def torch_shapes(config: CLIPConfig, archive_entries: bool = False) -> dict[str, tuple]:
    """Every key of the official state dict for `config`, with its shape."""
    w = config.transformer_width
    s = {"positional_embedding": (config.context_length, w), "text_projection": (w, config.embed_dim),
         "logit_scale": ()}
    s.update(_vit(config) if config.is_vit else _resnet(config))
    for i in range(config.transformer_layers):
        s.update(_block(f"transformer.resblocks.{i}", w))
    s.update({"token_embedding.weight": (config.vocab_size, w), "ln_final.weight": (w,), "ln_final.bias": (w,)})
    if archive_entries:
        s.update({k: () for k in ARCHIVE_ENTRIES})
    return s


def paddle_shapes(config: CLIPConfig) -> dict[str, tuple]:
    """Every key of parity's Paddle state dict for `config`, with its shape."""
    out: dict[str, tuple] = {}
    for key, shape in torch_shapes(config).items():
        row, _ = torch_row(key)
        if row.paddle is None:
            continue
        parts = TRANSFORMS[row.transform][0](np.empty(shape, dtype=np.uint8))
        out.update({k: tuple(a.shape) for k, a in zip(paddle_keys_for(key), parts)})
    return out


def _listing(keys: list[str], limit: int = 12) -> str:
    # one line even for a foreign model's hundreds of keys
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_keys(state_dict: Mapping, expected: Mapping[str, tuple], what: str = "state dict",
               optional: Iterable[str] = ()) -> None:
    """Raise StateDictError naming every missing, unexpected and mis-shaped key (sorted)."""
    optional = set(optional)
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected) - optional)
    misshaped = sorted(f"{k} {list(state_dict[k].shape)} (expected {list(expected[k])})"
                       for k in set(state_dict) & set(expected) if tuple(state_dict[k].shape) != tuple(expected[k]))
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise StateDictError(f"{what} does not fit the layout: " + "; ".join(problems))


# ---------------------------------------------------------------- the extras record
@dataclass
class Extras:
    """What Paddle has no place for, so that paddle -> torch restores the source exactly."""

    buffers: dict[str, np.ndarray] = field(default_factory=dict)  # torch-only tensors by torch key
    dtypes: dict[str, str] = field(default_factory=dict)  # torch key -> its dtype before a cast

    def to_dict(self) -> dict:
        """A JSON-able form (to store beside the tensors)."""
        return {"buffers": {k: {"dtype": str(v.dtype), "value": v.tolist()} for k, v in self.buffers.items()},
                "dtypes": dict(self.dtypes)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Extras":
        return cls({k: np.asarray(v["value"], dtype=v["dtype"]) for k, v in d.get("buffers", {}).items()},
                   dict(d.get("dtypes", {})))


def as_numpy(x) -> np.ndarray:
    """numpy view of a torch/paddle tensor or array-like (a Stored tensor: read), without copying where possible."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Stored):
        return x.read()
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu()
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _resolve(state_dict: Mapping, config: CLIPConfig | None) -> CLIPConfig:
    if config is None:
        return infer_config(state_dict)
    inferred = infer_config(state_dict)
    if inferred.architecture() != config.architecture():
        raise StateDictError(f"tensor shapes are those of {inferred.name or 'an unregistered CLIP'}, "
                             f"not of {config.name or 'the given config'}")
    return match_variant(config)


class Planned(NamedTuple):
    """One target tensor, made only when asked for: a conversion holds one such tensor at a time.

    `make` gives it in the source's dtype (often a view of the source); `dtype` is what it is cast to."""

    make: Callable[[], np.ndarray]
    dtype: np.dtype
    shape: tuple

    def __call__(self) -> np.ndarray:
        a = self.make()
        # astype keeps the memory order (K), so a transposed Linear weight stays Fortran-ordered
        return a if a.dtype == self.dtype else a.astype(self.dtype)


def _paddle_part(array, transform: str, index: int) -> np.ndarray:
    # views: a split slice and/or a transpose; the cast comes after the split, so a fused q/k/v tensor is
    # cast once per part, never whole three times
    return TRANSFORMS[transform][0](as_numpy(array))[index]


def _shapes(value, transform: str) -> list[tuple]:
    # the parts' shapes, from a stand-in of the tensor's shape that holds no memory (nothing is read)
    stand_in = np.broadcast_to(np.zeros((), np.uint8), tuple(value.shape))
    return [tuple(p.shape) for p in TRANSFORMS[transform][0](stand_in)]


def paddle_plan(state_dict: Mapping, config: CLIPConfig | None = None,
                dtype: str | None = "float32") -> tuple[dict[str, Planned], Extras]:
    """`to_paddle` without doing it: each Paddle tensor as a Planned (made on demand), and the extras record."""
    config = _resolve(state_dict, config)
    check_keys(state_dict, torch_shapes(config), "torch state dict", optional=ARCHIVE_ENTRIES)
    plan: dict[str, Planned] = {}
    extras = Extras()
    for key, value in state_dict.items():
        value = value if isinstance(value, Stored) else as_numpy(value)  # a Stored tensor is read when made
        row, _ = torch_row(key)
        if row.paddle is None:
            extras.buffers[key] = np.array(as_numpy(value))  # a copy: small, and kept
            continue
        cast = dtype is not None and value.dtype.kind == "f" and value.dtype != np.dtype(dtype)
        if cast:
            extras.dtypes[key] = str(value.dtype)
        for i, (pkey, shape) in enumerate(zip(paddle_keys_for(key), _shapes(value, row.transform))):
            plan[pkey] = Planned(partial(_paddle_part, value, row.transform, i),
                                 np.dtype(dtype) if cast else value.dtype, tuple(shape))
    return plan, extras


def to_paddle(state_dict: Mapping, config: CLIPConfig | None = None,
              dtype: str | None = "float32") -> tuple[dict[str, np.ndarray], Extras]:
    """Official (torch) layout -> parity's Paddle layout.

    `dtype` casts every floating tensor (default float32, what Paddle loads on a CPU); None keeps them.
    Returns the Paddle state dict and the extras record that `to_torch` needs to come back bit-exact.
    """
    plan, extras = paddle_plan(state_dict, config, dtype)
    return {k: p() for k, p in plan.items()}, extras


def _dtype(x) -> np.dtype:  # without reading a Stored tensor
    return x.dtype if isinstance(x, (np.ndarray, Stored)) else as_numpy(x).dtype


def _torch_tensor(parts: list, transform: str) -> np.ndarray:
    return TRANSFORMS[transform][1]([as_numpy(p) for p in parts])


def torch_plan(state_dict: Mapping, extras: Extras | None = None, config: CLIPConfig | None = None,
               archive_entries: bool = False) -> tuple[dict[str, Planned], list[str]]:
    """`to_torch` without doing it: each official tensor as a Planned (made on demand), and the notes."""
    config = _resolve(state_dict, config)
    check_keys(state_dict, paddle_shapes(config), "paddle state dict")
    notes: list[str] = []
    plan: dict[str, Planned] = {}
    for key, shape in torch_shapes(config, archive_entries=archive_entries).items():
        row, _ = torch_row(key)
        if row.paddle is None:
            continue
        parts = [state_dict[k] for k in paddle_keys_for(key)]
        source = extras.dtypes.get(key) if extras else None
        plan[key] = Planned(partial(_torch_tensor, parts, row.transform),
                            np.dtype(source) if source else _dtype(parts[0]), tuple(shape))
    if extras is not None:
        buffers = extras.buffers
    else:
        buffers = {k: np.array(0, dtype=np.int64) for k in torch_shapes(config) if k.endswith("num_batches_tracked")}
        if archive_entries:
            buffers.update({"input_resolution": np.array(config.image_resolution, dtype=np.int64),
                            "context_length": np.array(config.context_length, dtype=np.int64),
                            "vocab_size": np.array(config.vocab_size, dtype=np.int64)})
        notes.append(f"no extras record: restored {len(buffers)} torch-only tensors with defaults "
                     "(num_batches_tracked = 0" + (", archive entries from the config" if archive_entries else "")
                     + "); floating tensors keep the Paddle file's dtype")
    plan.update({k: Planned(partial(as_numpy, v), as_numpy(v).dtype, tuple(as_numpy(v).shape))
                 for k, v in buffers.items()})
    return plan, notes


def to_torch(state_dict: Mapping, extras: Extras | None = None, config: CLIPConfig | None = None,
             archive_entries: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """parity's Paddle layout -> official (torch) layout; the inverse of `to_paddle` given its extras.

    Without an extras record, torch-only tensors get defaults (num_batches_tracked 0; with
    `archive_entries`, the official archives' int entries from the config) and the returned notes say so.
    """
    plan, notes = torch_plan(state_dict, extras, config, archive_entries)
    return {k: p() for k, p in plan.items()}, notes
