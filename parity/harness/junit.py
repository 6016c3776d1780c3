"""JUnit XML for CI systems (GitHub Actions, GitLab, Jenkins): what `verify`, `verify-all` and
`verify-export` found, one `testcase` per compared output.

The structure is the one those tools read: `testsuites` > `testsuite` (name, tests, failures, errors,
skipped, time) > `properties` and `testcase` (classname, name, time) > `failure` (message, type) or
`skipped`. A `verify` report is one suite: a case per compared output (logits, features, each hidden
state of a tower alone), per feature over the photographs and for their ranking, and for the reference
table where it applies. A failure's message says the largest difference, its bound and the first
module where the frameworks part. The suite's properties hold each file's SHA-256 and the config.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

from ..io.formats.atomic import write_bytes
from .report import CANONICAL
from ..version import __version__

if TYPE_CHECKING:
    from ..exporter.verification import ExportReport
    from .report import LayerDiagnosis, Report


@dataclass
class Case:
    """One testcase: `failure` is its message where it failed; `skipped` its reason where not gated;
    `error` where it could not be computed at all (bad input)."""

    name: str
    failure: str | None = None
    detail: str = ""
    skipped: str | None = None
    error: str | None = None


def _where(layers: LayerDiagnosis | None) -> str:
    """Where the layer diagnosis (None: it did not run) found the frameworks part, and on which inputs."""
    if layers is None or layers.first_divergence is None:
        return f"first diverging layer: none found on {layers.inputs if layers is not None else CANONICAL}"
    return f"first diverging layer: {layers.first_divergence}{layers.on()}"


def _cosines(name: str, f, what: str, layer: LayerDiagnosis | None) -> Case:
    """A feature over a set of inputs (`what`: "a photograph", "an embedding"), gated on each row's cosine."""
    detail = f"max |Δ| {f.max_abs:.3e}, least cosine {f.min_row_cosine:.8f} (bound {f.bound})"
    return Case(name, None if f.passed else
                f"{name}: {what}'s cosine {f.min_row_cosine:.8f} is under {f.bound}; {_where(layer)}", detail)


def _difference(name: str, d, layer: LayerDiagnosis | None, gated: bool) -> Case:
    detail = (f"max |Δ| {d.max_abs:.3e}, bound {d.bound:.3e} ({d.bound_kind}), relative {d.relative:.3e}, "
              f"cosine {d.cosine:.8f}")
    if d.passed:
        return Case(name, detail=detail)
    message = f"{name}: max |Δ| {d.max_abs:.3e} exceeds its bound {d.bound:.3e} ({d.bound_kind}); {_where(layer)}"
    if not gated:
        return Case(name, detail=detail, skipped=f"not among the gated outputs: {message}")
    return Case(name, message, detail)


def verify_cases(r: "Report") -> list[Case]:
    """The cases of one `verify` report, in the report's order."""
    layer = r.layers
    gated = set(r.gated if r.gated is not None else r.differences)
    cases = [_difference(name, d, layer, name in gated) for name, d in r.differences.items()]
    if r.photos:
        cases += [_cosines(f"photos {name}", f, "a photograph", layer) for name, f in r.photos.differences.items()]
        if r.photos.argmax_agreement is not None:
            p = r.photos
            detail = (f"best caption agrees on {p.argmax_agreement:.0%} (the gate), top-{p.top_k} in order on "
                      f"{p.topk_agreement:.0%}")
            ranked = p.argmax_agreement == 1.0
            cases.append(Case(f"photos top-{p.top_k}", None if ranked else
                              f"photos top-{p.top_k}: {detail}; {_where(layer)}", detail))
    if r.search:
        cases += search_cases(r.search, layer)
    if r.reference:
        ref = r.reference
        detail = (f"reference {ref.logit}, |Δ| torch {ref.torch_delta:.2e}, paddle {ref.paddle_delta:.2e}, "
                  f"bound {ref.bound:.1e}")
        cases.append(Case("reference table", None if ref.passed else f"reference table: {detail}", detail))
    return cases


def search_cases(s, layer: LayerDiagnosis | None) -> list[Case]:
    """The user's data: each embedding, and each search direction (the first query whose ranking differs)."""
    cases = [_cosines(f"search {name}", f, "an embedding", layer) for name, f in s.differences.items()]
    for r in s.rankings.values():
        detail = (f"{r.queries} queries: top-1 {r.top1_agreement:.0%} (the gate), "
                  f"top-{r.top_k} {r.topk_agreement:.0%}, "
                  f"lowest rank correlation {r.min_rank_correlation:.6f}")
        if r.first_differing is not None:
            detail += f"; first query whose top-{r.top_k} differs: #{r.first_differing_index + 1} {r.first_differing!r}"
        cases.append(Case(f"search {r.direction}", None if r.passed else
                          f"search {r.direction}: {detail}; {_where(layer)}", detail))
    return cases


def verify_suite(r: "Report") -> ET.Element:
    """One report as a `testsuite` named by its variant, with its files' SHA-256 and config as properties."""
    props = {"parity": __version__, "weights": r.weights, "config": json.dumps(r.config, sort_keys=True),
             "devices": json.dumps(r.devices, sort_keys=True),
             "gate": json.dumps({"atol": r.atol, "rtol": r.rtol, "noise_factor": r.noise_factor})}
    for side, src in (r.sources or {}).items():
        props[f"{side}.sha256"] = str(src.get("sha256"))
        props[f"{side}.file"] = str(src.get("path"))
    return _suite(r.variant, f"parity.verify.{r.variant}", verify_cases(r), props, r.seconds)


def export_suite(r: "ExportReport") -> ET.Element:
    """An export's check as a `testsuite`: a case per tower and input set, and one for the files' SHA-256."""
    cases = []
    for tower, rows in r.results.items():
        for name, d in rows.items():
            detail = f"max |Δ| {d['max_abs']:.3e}, bound {d['bound']:.3e} ({d['bound_kind']})"
            cases.append(Case(f"{tower} {name}", None if d["passed"] else
                              f"{tower} {name}: max |Δ| {d['max_abs']:.3e} exceeds its bound {d['bound']:.3e} "
                              f"({d['bound_kind']})", detail))
    changed = ", ".join(r.changed_files)
    cases.append(Case("files", f"files changed since the export: {changed}" if changed else None,
                      "every file's SHA-256 is the manifest's" if not changed else ""))
    props = {"parity": __version__, "format": r.format, "against": r.against,
             "gate": json.dumps(r.gate, sort_keys=True)}
    return _suite(r.folder, f"parity.export.{r.format}", cases, props, r.seconds)


def stopped_suite(variant: str, message: str) -> ET.Element:
    """The suite of a variant that stopped a sweep (bad input: exit 2): one testcase in error, its message."""
    return _suite(variant, "parity.verify", [Case("verify", error=message)], {"parity": __version__}, 0.0)


def _suite(name: str, classname: str, cases: list[Case], properties: dict, seconds: float) -> ET.Element:
    suite = ET.Element("testsuite", {
        "name": name, "tests": str(len(cases)), "failures": str(sum(c.failure is not None for c in cases)),
        "errors": str(sum(c.error is not None for c in cases)), "skipped": str(sum(c.skipped is not None for c in cases)),
        "time": f"{seconds:.3f}",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "hostname": platform.node()})
    props = ET.SubElement(suite, "properties")
    for key, value in properties.items():
        ET.SubElement(props, "property", {"name": key, "value": value})
    for c in cases:
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": c.name, "time": "0"})
        if c.failure is not None:
            ET.SubElement(case, "failure", {"message": c.failure, "type": "parity.disagreement"}).text = c.detail
        elif c.error is not None:
            ET.SubElement(case, "error", {"message": c.error, "type": "parity.bad_input"})
        elif c.skipped is not None:
            ET.SubElement(case, "skipped", {"message": c.skipped})
        if c.detail and c.failure is None:
            ET.SubElement(case, "system-out").text = c.detail
    return suite


def write(path, suites: list[ET.Element], name: str = "parity") -> Path:
    """`testsuites` holding `suites`, written atomically to `path` (replacing what was there)."""
    root = ET.Element("testsuites", {
        "name": name, "tests": str(sum(int(s.get("tests")) for s in suites)),
        "failures": str(sum(int(s.get("failures")) for s in suites)),
        "errors": str(sum(int(s.get("errors")) for s in suites)),
        "skipped": str(sum(int(s.get("skipped")) for s in suites)),
        "time": f"{sum(float(s.get('time')) for s in suites):.3f}"})
    root.extend(suites)
    ET.indent(root)
    write_bytes(Path(path), ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return Path(path)
