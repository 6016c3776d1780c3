"""An export folder is the input `verify-export` judges, not a party it trusts (the red-team report's export
classes): its manifest never sets the gate, its numbers are checked before anything is built from them,
its graphs run in a process of bounded memory, its names never leave the folder, and a malformed folder
is one line and exit 2, never a crash (3).

One tiny CLIP (a few MB) exported once per format for the module; each case edits a hard-linked copy.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest

import hostile_files as hostile
import parity
from helpers import GB, PARITY, digest, junit_cases, linked_copy, one_line, refused, run, spawn
from parity.harness.inputs import canonical_inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny CLIP A (seed 0) exported to onnx (both towers), and its paddle-inference export made on
    demand; tiny B (seed 1, same shapes, other weights) exported to onnx (image tower only)."""
    import torch

    warnings.simplefilter("ignore")
    root = tmp_path_factory.mktemp("trust")
    (root / "tiny.json").write_text(json.dumps(hostile.tiny_config().to_dict()))
    for seed, name in ((0, "A"), (1, "B")):
        torch.save(hostile.tiny_state(seed=seed), root / f"{name}.pt")
    config = str(root / "tiny.json")
    assert parity.export(root / "A.pt", "onnx", root / "A-onnx", config=config).passed
    assert parity.export(root / "B.pt", "onnx", root / "B-onnx", config=config, towers=("image",)).passed
    made = {}

    def paddle():
        if not made:
            warnings.simplefilter("ignore")  # Paddle's import-time warning, in the test that asks first
            made["out"] = root / "A-pi"
            assert parity.export(root / "A.pt", "paddle-inference", made["out"], config=config).passed
        return made["out"]
    return {"root": root, "config": config, "A": root / "A.pt", "onnx": root / "A-onnx", "B-onnx": root / "B-onnx",
            "paddle": paddle}


def put(folder: Path, name: str, data: bytes) -> None:
    (folder / name).unlink(missing_ok=True)
    (folder / name).write_bytes(data)


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, m: dict, rehash: bool = True) -> None:
    """The manifest, its files' SHA-256 recomputed (as an attacker can) unless `rehash` is False."""
    if rehash and isinstance(m.get("files"), dict):
        for name in m["files"]:
            path = folder / name
            if path.is_file() and not path.is_symlink():
                m["files"][name] = digest(path)
    put(folder, "manifest.json", json.dumps(m).encode())


# ---------------------------------------------------------------- 1. the manifest records a gate, never sets it
def test_another_models_graphs_fail_whatever_gate_the_manifest_records(tiny, tmp_path):
    folder = linked_copy(tiny["onnx"], tmp_path / "swapped")
    put(folder, "image.onnx", (tiny["B-onnx"] / "image.onnx").read_bytes())
    m = manifest(folder)
    m["verification"]["gate"] = {"atol": 1e30, "rtol": 1e30, "noise_factor": 1e30}
    write_manifest(folder, m)
    result = run("verify-export", folder, tiny["A"], "--config", tiny["config"], "--junit", tmp_path / "j.xml")
    assert result.exit_code == 1 and "FAIL" in result.output, result.output
    assert "the manifest's own gate (atol 1e+30" in result.output and "was not used" in result.output
    assert "files changed" not in result.output  # the hashes were recomputed: only the check catches it
    report = json.loads(run("verify-export", folder, tiny["A"], "--config", tiny["config"], "--json").output)
    cases = {case: message for (_, case), message in junit_cases(tmp_path / "j.xml").items()}
    failed = {f"{tower} {name}" for tower, rows in report["results"].items() for name, r in rows.items()
              if not r["passed"]}
    assert failed and {c for c, m in cases.items() if m} == failed and cases["files"] is None, cases
    assert all(cases[c].startswith(f"{c}: max |Δ|") for c in failed)
    assert report["gate"] == {"atol": 1e-4, "rtol": 1e-5, "noise_factor": 4.0}
    assert report["manifest_gate"]["atol"] == 1e30 and not report["results"]["image"]["canonical"]["passed"]
    assert report["results"]["text"]["canonical"]["passed"]  # A's own text tower, untouched
    # another model's graph of another width: fails, its features never read past the manifest's width
    put(folder, "image.onnx", _pooled())
    write_manifest(folder, manifest(folder))
    report = json.loads(run("verify-export", folder, tiny["A"], "--config", tiny["config"], "--json").output)
    assert not report["passed"] and report["results"]["image"]["photos"]["bound_kind"] == \
        "shape: the graph gave float32 [3, 3]", report["results"]["image"]
    # given bounds are the gate (and a manifest that records the same gate is not mentioned)
    put(folder, "image.onnx", (tiny["B-onnx"] / "image.onnx").read_bytes())
    write_manifest(folder, manifest(folder))
    result = run("verify-export", folder, tiny["A"], "--config", tiny["config"], "--atol", "1e30", "--rtol", "1e30")
    assert result.exit_code == 0 and "PASS" in result.output, result.output


def test_a_check_without_the_checkpoint_says_it_proves_only_self_agreement(tiny, tmp_path):
    result = run("verify-export", tiny["onnx"])
    assert result.exit_code == 0, result.output
    assert "PASS against the folder's own recorded reference (a pass proves only that the folder agrees with " \
           "itself, not with any checkpoint)" in result.output
    assert "manifest's own gate" not in result.output
    # another model's graphs with that model's own reference: self-consistent, and said to be no more
    folder = linked_copy(tiny["onnx"], tmp_path / "b")
    put(folder, "image.onnx", (tiny["B-onnx"] / "image.onnx").read_bytes())
    ref = json.loads((tiny["onnx"] / "reference.json").read_text())
    ref["image"] = json.loads((tiny["B-onnx"] / "reference.json").read_text())["image"]
    put(folder, "reference.json", json.dumps(ref).encode())
    write_manifest(folder, manifest(folder))
    result = run("verify-export", folder)
    assert result.exit_code == 0 and "agrees with itself, not with any checkpoint" in result.output, result.output
    result = run("verify-export", folder, tiny["A"], "--config", tiny["config"])
    assert result.exit_code == 1 and "FAIL against checkpoint" in result.output, result.output


def _pooled() -> bytes:
    """An onnx image tower of another model: each image's mean per channel, 3 features wide."""
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMean", ["image"], ["features"], axes=[2, 3], keepdims=0)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 32, 32])
    graph = helper.make_graph([node], "pooled", [image],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


# ---------------------------------------------------------------- 2. numbers checked before they are used
def _bomb(elements: int) -> bytes:
    """An onnx graph of 150 bytes, input `image` like the tower's, whose output is ConstantOfShape of
    `elements` float32s."""
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [elements])
    node = helper.make_node("ConstantOfShape", ["shape"], ["features"],
                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 32, 32])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None])
    graph = helper.make_graph([node], "bomb", [image], [features], initializer=[shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_graph_that_asks_for_gigabytes_stops_at_the_runtimes_memory_bound(tiny, tmp_path):
    folder = linked_copy(tiny["onnx"], tmp_path / "bomb")
    put(folder, "image.onnx", _bomb(10_000_000_000))  # 40 GB
    write_manifest(folder, manifest(folder))
    start = time.perf_counter()
    status, out, err, rss = spawn("verify-export", folder)
    seconds = time.perf_counter() - start
    assert status == 2 and out == "", (status, out, err)
    one_line(err, "ran out of its memory bound", "GiB) on the image tower")
    assert rss < 1.5 * GB and seconds < 60, (rss, seconds)


def test_a_runtime_that_dies_or_hangs_is_one_error(tiny):
    import importlib

    export = importlib.import_module("parity.exporter.runtime")
    x = canonical_inputs(32)[0]
    with export.Runtime(tiny["onnx"], "onnx", ["image", "text"]) as runtime:
        assert runtime.run("image", x, 32).shape == (1, 32)
        runtime.proc.kill()
        with pytest.raises(export.ExportError, match=r"runtime's process died \(killed by SIGKILL\) on the image"):
            runtime.run("image", x, 32)
    with export.Runtime(tiny["onnx"], "onnx", ["image", "text"]) as runtime:
        runtime.deadline = 1.0
        os.kill(runtime.proc.pid, signal.SIGSTOP)  # a runtime that never answers
        with pytest.raises(export.ExportError, match=r"did not answer within 1 s on the image tower"):
            runtime.run("image", x, 32)


def _resized(folder: Path, size) -> None:
    m = manifest(folder)
    m["config"]["vision"]["image_size"] = size
    m["inputs"]["image"]["shape"] = [None, 3, size, size]
    write_manifest(folder, m)


def test_a_manifests_config_is_checked_before_inputs_are_built_from_it(tiny, tmp_path):
    folder = linked_copy(tiny["onnx"], tmp_path / "huge")
    _resized(folder, 3008)  # inputs of 1.8 GB
    refused(run("verify-export", folder), "vision.image_size 3008: more than the 1024 of any CLIP")
    status, _, err, rss = spawn("verify-export", folder, tiny["A"], "--config", tiny["config"])
    assert status == 2 and rss < 1.0 * GB, (status, err, rss)
    one_line(err, "holds another model than the export")
    _resized(folder, 2_000_000_000)
    refused(run("verify-export", folder), "vision.image_size 2000000000")
    refused(run("verify-export", folder, tiny["A"], "--config", tiny["config"]), "another model")
    m = manifest(tiny["onnx"])  # features of a million values each: refused before the reference is read
    m["config"]["embed_dim"] = 10 ** 6
    m["outputs"] = {t: {"name": "features", "shape": [None, 10 ** 6], "dtype": "float32"} for t in m["towers"]}
    wide = linked_copy(tiny["onnx"], tmp_path / "wide")
    write_manifest(wide, m)
    refused(run("verify-export", wide), "embed_dim 1000000: more than the 8192")


def test_the_recorded_reference_must_have_the_manifests_shapes(tiny, tmp_path):
    ref = json.loads((tiny["onnx"] / "reference.json").read_text())
    rows = ref["image"]["photos"]["features"]
    cases = {"wide": lambda r: r["image"]["photos"].update(features=[row + [0.0] for row in rows]),
             "short": lambda r: r["image"]["photos"].update(features=rows[:2]),
             "ragged": lambda r: r["image"]["photos"].update(features=[rows[0], rows[1][:5]] + rows[2:]),
             "strings": lambda r: r["image"]["canonical"].update(features=[["x"] * len(rows[0])]),
             "flat": lambda r: r["image"]["canonical"].update(features=rows[0]),
             "no features": lambda r: r["text"]["canonical"].pop("features"),
             "no noise": lambda r: r["text"]["canonical"].pop("noise"),
             "a tower short": lambda r: r.pop("text"),
             "a list": lambda r: r["text"].update(canonical=[1, 2])}
    for name, edit in cases.items():
        folder = linked_copy(tiny["onnx"], tmp_path / name.replace(" ", "-"))
        changed = json.loads(json.dumps(ref))
        edit(changed)
        put(folder, "reference.json", json.dumps(changed).encode())
        write_manifest(folder, manifest(folder))
        refused(run("verify-export", folder), "reference.json: not a recorded reference")


def test_a_recorded_noise_floor_cannot_widen_the_gate(tiny, tmp_path):
    """The gate widens to noise_factor x the reference's noise floor: a folder that records a huge one,
    with another model's text graph, must not pass even against itself."""
    folder = linked_copy(tiny["onnx"], tmp_path / "noisy")
    put(folder, "text.onnx", (tiny["B-onnx"] / "image.onnx").read_bytes())  # not A's text tower
    ref = json.loads((tiny["onnx"] / "reference.json").read_text())
    for rows in ref.values():
        for entry in rows.values():
            entry["noise"] = 1e300
    put(folder, "reference.json", json.dumps(ref).encode())
    write_manifest(folder, manifest(folder))
    refused(run("verify-export", folder), "reference.json", "noise floor of 1e+300", "would widen the gate")


def test_a_noise_floor_raised_by_one_huge_column_cannot_widen_the_gate(tiny, tmp_path):
    """One column made 1000 in the reference, noise 1.0 recorded (1e-3 of the largest value), and graphs
    that give that constant whatever the input: the cap is on the features' median magnitude."""
    folder = linked_copy(tiny["onnx"], tmp_path / "spike")
    ref = json.loads((tiny["onnx"] / "reference.json").read_text())
    for rows in ref.values():
        for entry in rows.values():
            for row in entry["features"]:
                row[0] = 1000.0
            entry["noise"] = 1.0
    put(folder, "reference.json", json.dumps(ref).encode())
    write_manifest(folder, manifest(folder))
    refused(run("verify-export", folder), "reference.json", "median magnitude")


def test_a_sparse_graph_file_cannot_raise_the_runtimes_bounds(tiny, tmp_path):
    """A graph file made 10 TB by `truncate` (sparse: nothing stored) is no export of this model: refused
    before it is hashed or loaded, and never counted for the runtime's memory bound or deadline."""
    folder = linked_copy(tiny["onnx"], tmp_path / "sparse")
    put(folder, "image.onnx", (tiny["onnx"] / "image.onnx").read_bytes())
    with open(folder / "image.onnx", "r+b") as f:
        f.truncate(10 << 40)
    write_manifest(folder, manifest(folder), rehash=False)
    start = time.perf_counter()
    refused(run("verify-export", folder), "more than the", "bytes an export of its model can hold")
    assert time.perf_counter() - start < 60
    m = manifest(folder)  # nor left out of the manifest, where nothing would hash it
    m["files"].pop("image.onnx")
    write_manifest(folder, m, rehash=False)
    refused(run("verify-export", folder), "records no SHA-256 for image.onnx")


def test_a_checkpoint_named_in_bytes_that_are_not_utf8_exports(tiny, tmp_path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/m\xff.pt"))
    os.link(tiny["A"], odd)
    out = Path(os.fsdecode(bytes(tmp_path) + b"/out\xff"))  # and the export's own folder so named
    result = run("export", odd, "--to", "onnx", "-o", out, "--tower", "image", "--config", tiny["config"])
    assert result.exit_code == 0 and "PASS" in result.output, result.output
    assert "m\\udcff.pt" in (out / "report.md").read_text()
    result = run("verify-export", out)  # the runtimes are given plain names inside it
    assert result.exit_code == 0 and "PASS" in result.output, result.output


def test_every_graph_in_the_folder_is_checked(tiny, tmp_path):
    """A manifest that lists the image tower only, beside a text graph that is not the model's: the check
    would never run it, so the folder is refused for holding what its manifest does not say."""
    folder = linked_copy(tiny["onnx"], tmp_path / "unlisted")
    put(folder, "text.onnx", (tiny["B-onnx"] / "image.onnx").read_bytes())
    m = manifest(folder)
    m["towers"] = ["image"]
    for key in ("inputs", "outputs"):
        m[key].pop("text")
    m["files"].pop("text.onnx")
    write_manifest(folder, m)
    for args in ((folder, tiny["A"], "--config", tiny["config"]), (folder,)):
        refused(run("verify-export", *args), "holds the text tower's graph, which its manifest does not list")


def test_a_file_changed_since_the_export_fails_the_check(tiny, tmp_path):
    folder = linked_copy(tiny["onnx"], tmp_path / "changed")
    pre = json.loads((folder / "preprocess.json").read_text())
    pre["mean"] = [0.0, 0.0, 0.0]  # deploys other inputs than those verified
    put(folder, "preprocess.json", json.dumps(pre).encode())
    result = run("verify-export", folder, tiny["A"], "--config", tiny["config"], "--junit", tmp_path / "j.xml")
    assert result.exit_code == 1 and "FAIL" in result.output, result.output
    assert "files changed since the export: preprocess.json" in result.output
    cases = {case: message for (_, case), message in junit_cases(tmp_path / "j.xml").items()}
    assert [c for c, m in cases.items() if m] == ["files"] and "preprocess.json" in cases["files"]


# ---------------------------------------------------------------- 3. names stay inside the folder
def test_manifest_file_names_never_leave_the_folder(tiny, tmp_path):
    outside = tmp_path / "secret"
    os.mkfifo(outside)  # opened for reading, it would block the command until the timeout
    for name in ("../secret", str(outside), "/etc/hostname", "", ".", "..", "sub/x", "a\\b"):
        folder = linked_copy(tiny["onnx"], tmp_path / f"names{len(list(tmp_path.iterdir()))}")
        m = manifest(folder)
        m["files"][name] = "0" * 64
        write_manifest(folder, m, rehash=False)
        if name == "../secret":
            done = subprocess.run([PARITY, "verify-export", str(folder)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, done
            one_line(done.stderr, "is not the name of a file in the folder")
        else:
            refused(run("verify-export", folder), "is not the name of a file in the folder")


def test_a_symbolic_link_in_the_folder_is_refused_not_followed(tiny, tmp_path):
    linked = linked_copy(tiny["onnx"], tmp_path / "linked")
    (linked / "image.onnx").unlink()
    (linked / "image.onnx").symlink_to(tiny["onnx"] / "image.onnx")  # the right bytes, through a link
    refused(run("verify-export", linked), "image.onnx: a symbolic link")
    refused(run("verify-export", linked, tiny["A"], "--config", tiny["config"]), "image.onnx: a symbolic link")
    hashed = linked_copy(tiny["onnx"], tmp_path / "hashed")  # a hashed file that points outside: never read
    (hashed / "preprocess.json").unlink()
    (hashed / "preprocess.json").symlink_to("/etc/hostname")
    refused(run("verify-export", hashed), "preprocess.json: a symbolic link")
    fifo = linked_copy(tiny["onnx"], tmp_path / "fifo")
    (fifo / "text.onnx").unlink()
    os.mkfifo(fifo / "text.onnx")
    done = subprocess.run([PARITY, "verify-export", str(fifo)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    one_line(done.stderr, "text.onnx: not a regular file")
    manifest_link = linked_copy(tiny["onnx"], tmp_path / "manifest-link")
    (manifest_link / "manifest.json").unlink()
    (manifest_link / "manifest.json").symlink_to(tiny["onnx"] / "manifest.json")
    refused(run("verify-export", manifest_link), "manifest.json: a symbolic link")


# ---------------------------------------------------------------- 4. a malformed folder is exit 2, never 3
def _edit(**changes):
    def edit(m):
        for path, value in changes.items():
            *parents, key = path.split("__")
            target = m
            for p in parents:
                target = target[p]
            if value is DELETE:
                target.pop(key)
            else:
                target[key] = value
    return edit


DELETE = object()
MANIFEST_CASES = {
    "files a list": _edit(files=["image.onnx"]),
    "files digest a number": lambda m: m["files"].update({"image.onnx": 1}),
    "gate atol a string": _edit(verification__gate__atol="0.1"),
    "gate a list": _edit(verification__gate=[1e-4, 1e-5, 4.0]),
    "gate missing": _edit(verification=DELETE),
    "towers a string": _edit(towers="image"),
    "towers unknown": _edit(towers=["image", "audio"]),
    "towers empty": _edit(towers=[]),
    "format unknown": _edit(format="tensorrt"),
    "format a list": _edit(format=["onnx"]),
    "config missing keys": _edit(config__embed_dim=DELETE),
    "config vision a list": _edit(config__vision=[1, 2]),
    "config a string": _edit(config="ViT-B/32"),
    "config float size": _edit(config__vision__image_size=32.5),
    "inputs a string": _edit(inputs="image"),
    "inputs wrong shape": _edit(inputs__image__shape=[None, 3, 64, 64]),
    "inputs tower missing": _edit(inputs__text=DELETE),
    "outputs a list": _edit(outputs=[1]),
    "outputs wrong width": _edit(outputs__text__shape=[None, 64]),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_a_malformed_manifest_is_one_line_and_exit_2(case, tiny, tmp_path):
    folder = linked_copy(tiny["onnx"], tmp_path / "bad")
    m = manifest(folder)
    MANIFEST_CASES[case](m)
    write_manifest(folder, m, rehash=False)
    refused(run("verify-export", folder))
    refused(run("verify-export", folder, tiny["A"], "--config", tiny["config"]))


def test_a_manifest_that_is_not_an_object_or_not_json_is_one_line(tiny, tmp_path):
    for name, data in {"list": b"[1, 2]", "text": b"not json", "deep": b"[" * 100 + b"]" * 100, "empty": b""}.items():
        folder = linked_copy(tiny["onnx"], tmp_path / name)
        put(folder, "manifest.json", data)
        refused(run("verify-export", folder), "manifest.json")


def test_swapped_onnx_towers_are_one_line_and_exit_2(tiny, tmp_path):
    folder = linked_copy(tiny["onnx"], tmp_path / "swapped")
    image, text = (folder / "image.onnx").read_bytes(), (folder / "text.onnx").read_bytes()
    put(folder, "image.onnx", text)
    put(folder, "text.onnx", image)
    write_manifest(folder, manifest(folder))
    refused(run("verify-export", folder), "the onnx runtime cannot run the image tower")
    refused(run("verify-export", folder, tiny["A"], "--config", tiny["config"]), "cannot run the image tower")


# ---------------------------------------------------------------- Paddle Inference: the same process rules
def test_paddle_inference_runs_in_a_bounded_process_without_torch(tiny, tmp_path):
    import importlib

    export = importlib.import_module("parity.exporter.runtime")
    out = tiny["paddle"]()
    result = run("verify-export", out, tiny["A"], "--config", tiny["config"])
    assert result.exit_code == 0 and "PASS against checkpoint" in result.output, result.output
    assert manifest(out)["runtime"]["onednn"] == {"image": True, "text": False}
    x = canonical_inputs(32)[0]
    with export.Runtime(out, "paddle-inference", ["image", "text"]) as runtime:
        assert runtime.run("image", x, 32).shape == (1, 32)
        maps = Path(f"/proc/{runtime.proc.pid}/maps").read_text()
        limits = Path(f"/proc/{runtime.proc.pid}/limits").read_text()
    assert "libpaddle" in maps or "paddle" in maps
    assert "libtorch" not in maps  # with torch loaded, a predictor ran 5x slower
    data_limit = next(line for line in limits.splitlines() if line.startswith("Max data size")).split()[3]
    assert int(data_limit) == runtime.bound < 8 * GB
    # towers swapped: Paddle's own error, one line
    swapped = linked_copy(out, tmp_path / "swapped")
    for suffix in (".json", ".pdiparams"):
        image, text = (out / f"image{suffix}").read_bytes(), (out / f"text{suffix}").read_bytes()
        put(swapped, f"image{suffix}", text)
        put(swapped, f"text{suffix}", image)
    write_manifest(swapped, manifest(swapped))
    refused(run("verify-export", swapped), "image tower")


# ---------------------------------------------------------------- export: never into its own input
def test_export_refuses_an_output_that_holds_its_checkpoint(tiny, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    source = folder / "A.pt"
    os.link(tiny["A"], source)
    before = digest(source)
    result = run("export", source, "--to", "onnx", "-o", folder, "--force", "--config", tiny["config"])
    refused(result, "contains the input")
    assert digest(source) == before and sorted(os.listdir(folder)) == ["A.pt"]
