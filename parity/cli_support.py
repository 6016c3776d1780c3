"""What the `parity` commands share: exit statuses and one-line errors, the signals that stop a command,
the progress bar, the options several commands take, and how each command's result is printed."""
from __future__ import annotations

import functools
import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

from .errors import (ConfigMissingError, NoDeviceError, NonFiniteError, OutputExistsError, ParityError,
                     SameFileError, printable)
from .harness.gate import DEFAULT_ATOL, DEFAULT_RTOL, NOISE_FACTOR, TOWER_OUTPUTS

# what the command line adds to a library error: which of its flags fixes it
HINTS = {OutputExistsError: "pass --force to replace it, or -o to write elsewhere", NonFiniteError: "refused under --strict",
         SameFileError: "choose another output with -o", NoDeviceError: "or pass --device cpu",
         ConfigMissingError: "pass --config NAME (see parity variants) or --config FILE.json"}


class UserError(click.ClickException):
    """A one-line error about the user's input: printed without a traceback, exit status 2."""

    exit_code = 2


class InternalError(click.ClickException):
    """An error that bad input does not explain: a bug in parity. Exit status 3, so that a gate can tell it
    from bad input (2) and from frameworks that disagree (1)."""

    exit_code = 3


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread, so that every `finally` runs on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StoppedError(click.ClickException):
    """One line, and the shell's status for death by that signal (128 + its number)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}; nothing half-written was left behind")
        self.exit_code = 128 + signum


def _stop(signum, _frame):
    raise Stopped(signum)


def echo(text: str = "", err: bool = False, nl: bool = True) -> None:
    """click.echo of text that may hold names from files or the command line, shown escaped."""
    click.echo(printable(text), err=err, nl=nl)


def fail(error: Exception, debug: bool):
    """`error` as one line: UserError (exit 2) for bad input, with the flag that fixes it where one does;
    InternalError (exit 3) for anything else. With `debug`, `error` itself, for its traceback."""
    if debug:
        raise error
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if not isinstance(error, ParityError):
        raise InternalError(printable(f"internal error, a bug in parity ({type(error).__name__}: {message}); "
                                      "run with --debug for the traceback, and report it"))
    hint = next((HINTS[kind] for kind in type(error).__mro__ if kind in HINTS), None)
    message += f"; {hint}" if hint else ""
    raise UserError(printable(message))


def debugging() -> bool:
    """Whether --debug was given, before the command or after it."""
    return click.get_current_context().meta.get("parity.debug", False)


def _set_debug(ctx: click.Context, _param, value: bool) -> None:
    if value:  # the contexts of a group and its command share `meta`
        ctx.meta["parity.debug"] = True


def debug_option(f):
    """--debug, declared once: on the group (`parity --debug CMD ...`) and after a command (`parity CMD ...
    --debug`), both setting the same flag."""
    return click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug,
                        help="Show the traceback of an error.")(f)


def library_errors(command):
    """For a command whose body calls the library and returns what prints the result: the library's errors
    are `fail`ed (one line, exit 2 or 3; the traceback with --debug), then the result is printed, outside
    that handling (a closed pipe stays click's to handle)."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            show = command(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as e:
            fail(e, debugging())
        return show()
    return run


def size(path: Path) -> int:
    """The file's size for a progress bar: 0 where it cannot be told (the library then says why)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Main(click.Group):
    """The command group: SIGTERM and SIGHUP end a command as SIGINT does, cleaning up on the way out."""

    def invoke(self, ctx):
        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, _stop)
        except ValueError:  # not the main thread (an embedding program's worker): leave signals alone
            pass
        try:
            return super().invoke(ctx)
        except Stopped as e:
            raise StoppedError(e.signum) from None
        except KeyboardInterrupt:
            raise StoppedError(signal.SIGINT) from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Stages:
    """A progress bar on a terminal (stderr) for conversions that take more than a moment."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled

    def __call__(self, label: str):
        if self.enabled:
            self.done += 1
            filled = int(24 * (self.done - 1) / self.total)
            click.echo(f"\r[{'#' * filled}{'.' * (24 - filled)}] {printable(label):<60.60}", nl=False, err=True)

    def close(self):
        if self.enabled and self.done:
            click.echo("\r" + " " * 90 + "\r", nl=False, err=True)


@contextmanager
def progress_bar(src: Path):
    """A conversion's Stages: drawn on a terminal for a file of more than 50 MB; cleared when the
    conversion ends, and before the line of its error."""
    stages = Stages(2, sys.stderr.isatty() and size(src) > 50_000_000)
    try:
        yield stages
    except Exception:
        stages.close()
        raise
    stages.close()


# ---------------------------------------------------------------- options several commands take
TOWER_CHOICES = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}


def outputs_option(f):
    return click.option("--outputs", default=None, metavar="NAME[,NAME...]",
                        help="For a tower alone, the outputs that gate the verdict, from "
                             f"{', '.join(TOWER_OUTPUTS)}. [default: all compared]")(f)


def tower_option(f):
    return click.option("--tower", type=click.Choice(list(TOWER_CHOICES)), default="both", show_default=True,
                        help="Which towers compute: both (and the logit), or the image or the text tower alone "
                             "(e.g. a diffusion model's text encoder). One tower is in memory at a time either way.")(f)


def config_option(f):
    return click.option("--config", "--variant", "config", default=None, metavar="NAME|FILE.json",
                        help="The model's config where the file has none: a name from `parity variants` or a "
                             "JSON file; checked against the tensors (and the file's own config) where it has.")(f)


def report_options(f):
    f = click.option("--atol", default=DEFAULT_ATOL, show_default=True, help="Absolute tolerance.")(f)
    f = click.option("--rtol", default=DEFAULT_RTOL, show_default=True,
                     help="Relative tolerance: |Δ| ≤ max(atol + rtol·|x|, noise factor × float32 noise floor).")(f)
    f = click.option("--noise-factor", default=NOISE_FACTOR, show_default=True,
                     help="How many times float32's own noise floor a difference may be (0: atol and rtol alone).")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
                     help="auto: the GPU in both frameworks when both have one, else the CPU.")(f)
    f = click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
                     show_default=True, help="Where the reports are written.")(f)
    f = click.option("--quick", is_flag=True,
                     help="No float64 pass: the bound is atol + rtol·|x| alone, with no noise floor (faster on "
                          "big models; the report says so). Default: the float64 floor, kept under .cache/ and "
                          "read again for the same weights, inputs and code.")(f)
    return f


def export_gate(f):
    # the gate is the command line's or parity's: an export folder's manifest records one, never sets it
    never = "never the export manifest's"
    f = click.option("--atol", default=None, type=float,
                     help=f"Absolute tolerance [default: parity's, {DEFAULT_ATOL}; {never}].")(f)
    f = click.option("--rtol", default=None, type=float,
                     help=f"Relative tolerance [default: parity's, {DEFAULT_RTOL}; {never}].")(f)
    f = click.option("--noise-factor", default=None, type=float,
                     help="Multiple of float32's noise floor a difference may be [default: parity's, "
                          f"{NOISE_FACTOR}; {never}].")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON on stdout.")(f)
    return debug_option(f)


def gate(atol: float | None, rtol: float | None, noise_factor: float | None) -> dict:
    """The export gate's tolerances given on the command line (the library's defaults for the others)."""
    return {k: v for k, v in (("atol", atol), ("rtol", rtol), ("noise_factor", noise_factor)) if v is not None}


# ---------------------------------------------------------------- results as printed
def show_variants():
    from .config import registry

    n = max(21, *(len(name) for name in registry.ENTRIES))
    header = (f"{'name':{n}} {'embed':>5} {'res':>4} {'vision layers':>14} {'width':>5} {'patch':>5} {'heads':>5} "
              f"{'mlp':>5} {'act':>10} {'text w/h/l/mlp':>17} {'text act':>10}")
    for family in registry.FAMILIES:
        click.echo(f"{family} ({registry.FAMILY_NOTES[family]}):")
        click.echo("  " + header)
        for e in registry.family(family):
            click.echo(f"  {e.name:{n}} {e.config.embed_dim or '-':>5} {_vision_columns(e.config.vision)} "
                       f"{_text_columns(e.config.text)}")


def _vision_columns(v) -> str:
    if v is None:  # a text tower alone
        return f"{'-':>4} {'-':>14} {'-':>5} {'-':>5} {'-':>5} {'-':>5} {'-':>10}"
    layers = str(v.layers) if isinstance(v.layers, int) else ",".join(map(str, v.layers))
    return (f"{v.image_size:4} {layers:>14} {v.width:5} {v.patch_size or '-':>5} {v.heads:>5} {v.mlp_width or '-':>5} "
            f"{v.activation or 'relu':>10}")


def _text_columns(t) -> str:
    return f"{'-':>17} {'-':>10}" if t is None else f"{f'{t.width}/{t.heads}/{t.layers}/{t.mlp_width}':>17} {t.activation:>10}"


def show_verified(report, paths: dict[str, Path], as_json: bool):
    from .harness.report import verdict

    for _, why in (report.search.skipped if report.search else []):
        echo(f"skipped: {why}", err=True)  # one line each, naming the image
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        echo(verdict(report))
        echo("wrote " + ", ".join(str(p) for p in paths.values()))
    sys.exit(0 if report.passed else 1)


def show_logits(out: dict, as_json: bool):
    if as_json:
        click.echo(json.dumps(out))
        return
    echo(f"{out['variant']} on {out['framework']} ({out['device']}), {out['weights']}")
    if out["logit"] is not None:
        click.echo(f"logit          {out['logit']:.6f}")
    if "sigmoid" in out:
        click.echo(f"sigmoid        {out['sigmoid']:.6f}")
    for name in ("image", "text"):
        if f"{name}_features" in out:
            v = np.asarray(out[f"{name}_features"])
            click.echo(f"{name + ' features':14} {v.size} values, norm {np.linalg.norm(v):.6f}, first "
                       f"{v[:4].round(6).tolist()}")
    for name in TOWER_OUTPUTS:  # a tower alone
        if name in out:
            v = np.asarray(out[name])
            click.echo(f"{name:24} shape {list(v.shape)}, norm {np.linalg.norm(v):.6f}, first "
                       f"{v.ravel()[:4].round(6).tolist()}")


def show_conversion(result):
    if hasattr(result, "converted"):  # a pipeline: each tower's conversion, then what was left as it was
        for part in result.converted.values():
            show_conversion(part)
        for line in result.summary():
            echo(line)
        return
    for line in result.warnings:
        echo(f"warning: {line}", err=True)
    if result.config_warning:
        echo(f"warning: {result.config_warning}; verify and logits on it will need --config NAME|FILE.json", err=True)
    for line in result.source.notes:
        echo(f"note: {line}", err=True)
    echo(result.summary())


def show_info(fields: dict, as_json: bool):
    if as_json:
        click.echo(json.dumps(fields, indent=2))
        return
    for key, value in fields.items():
        if key == "dtypes":
            value = ", ".join(f"{d} ×{n}" for d, n in value.items())
        elif key == "notes":
            value = "; ".join(value) or "none"
        elif key in ("bytes", "parameters"):
            value = f"{value:,}"
        elif isinstance(value, dict):  # the config's fields: shown in --json
            continue
        echo(f"{key:11} {value}")


def show_export(report, as_json: bool):
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        echo(report.summary())
        if report.changed_files:
            echo(f"files changed since the export: {', '.join(report.changed_files)}")
    sys.exit(0 if report.passed else 1)


def junit_option(f):
    return click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
                        help="Also write JUnit XML (a testcase per compared output) for a CI system.")(f)


def show_layouts() -> None:
    from . import layouts as layout_registry
    from .layouts.coverage import alone, coverage

    rows = [(layout.name, layout.framework, "+".join(layout.image_kinds), coverage(layout), alone(layout), layout.files)
            for layout in layout_registry.LAYOUTS.values()]
    header = ("layout", "framework", "holds", "registered models covered", "alone", "files")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(5)]
    for row in (header, *rows):
        click.echo(" ".join(f"{x:{w}}" for x, w in zip(row, widths)) + f" {row[5]}")
