"""`parity verify`, `parity logits`, labelling of weights, and the Python API that makes either side usable."""
import dataclasses
import json
import pickle
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

import parity
from parity.config import registry
from parity.io.convert import convert
from parity.io.formats.source import sha256 as sha256_of
from parity.cli import main
from parity.harness.gate import run_torch
from parity.harness.inputs import canonical_inputs
from parity.testing.official import build_official
from parity.testing.synthetic import release_archive
from helpers import junit_cases

PERTURBED = "visual.layer3.2.bn2.weight"  # one norm layer deep in RN50's vision tower


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """RN50's release-format archive, its conversion to .pdparams, and a copy with one tensor perturbed."""
    folder = tmp_path_factory.mktemp("verify")
    archive = folder / "RN50.pt"
    shutil.copyfile(release_archive("RN50"), archive)
    convert(archive, "paddle", folder / "RN50.pdparams")
    with open(folder / "RN50.pdparams", "rb") as f:
        content = pickle.load(f)  # our own file: plain pickle is fine here
    content[PERTURBED] = content[PERTURBED] * np.float32(1.05)
    with open(folder / "perturbed.pdparams", "wb") as f:
        pickle.dump(content, f, protocol=4)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def verify(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def failing(report: dict) -> set[str]:
    """The compared outputs a report says fail, by their JUnit names."""
    names = {n for n, d in report["differences"].items() if not d["passed"]}
    photos = report.get("photos") or {}
    names |= {f"photos {n}" for n, f in photos.get("differences", {}).items() if not f["passed"]}
    if photos.get("argmax_agreement") not in (None, 1.0):
        names.add(f"photos top-{photos['top_k']}")
    return names


def test_a_perturbed_tensor_fails_and_the_first_divergence_is_named(files, tmp_path):
    result = verify(files / "RN50.pt", files / "perturbed.pdparams", "--report-dir", tmp_path,
                    "--junit", tmp_path / "junit.xml")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "first module beyond its bound: visual.layer3.2.bn2" in result.output
    report = json.loads((tmp_path / "RN50.json").read_text())
    assert report["passed"] is False and report["layers"]["first_divergence"] == "visual.layer3.2.bn2"
    table = {row["module"]: row for row in report["layers"]["table"]}
    assert table["visual.layer3.2.bn1"]["passed"] and table["visual.layer3.2.conv2"]["passed"]  # before it: equal
    assert report["sources"]["paddle"]["path"].endswith("perturbed.pdparams")
    assert "**visual.layer3.2.bn2**" in (tmp_path / "RN50.md").read_text()
    cases = junit_cases(tmp_path / "junit.xml")  # exactly the failing outputs fail, each naming the layer
    failed = {case for (_, case), message in cases.items() if message is not None}
    assert failed == failing(report) and "logits" in failed and "image_features" in failed, failed
    assert all("first diverging layer: visual.layer3.2.bn2" in cases["RN50", name] for name in failed)
    assert {"logits", "image_features", "text_features", "photos image_features", "photos top-5"} <= {c for _, c in cases}
    root = ET.parse(tmp_path / "junit.xml").getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["torch.sha256"] == sha256_of(files / "RN50.pt")
    assert props["paddle.sha256"] == sha256_of(files / "perturbed.pdparams")
    assert json.loads(props["config"]) == report["config"]


def test_the_unperturbed_pair_passes_in_either_order(files, tmp_path):
    result = verify(files / "RN50.pdparams", files / "RN50.pt", "--report-dir", tmp_path, "--layers",
                    "--junit", tmp_path / "junit.xml")
    assert result.exit_code == 0, result.output
    cases = junit_cases(tmp_path / "junit.xml")
    assert len(cases) == 6 and set(cases.values()) == {None}, cases  # 3 outputs, 2 photo features, top-5
    report = json.loads((tmp_path / "RN50.json").read_text())
    assert report["passed"] and report["layers"]["first_divergence"] is None
    assert report["layers"]["modules_compared"] > 300 and report["layers"]["modules_torch_only"] == []
    assert report["sources"]["torch"]["sha256"] == sha256_of(files / "RN50.pt")
    assert report["devices"] == {"torch": "cpu", "paddle": "cpu"}
    assert {"torch", "paddle", "numpy", "parity"} <= set(report["versions"])
    for name in ("logits", "image_features", "text_features"):
        d = report["differences"][name]
        assert d["passed"] and d["max_abs"] <= d["bound"] and report["noise_floor"][name] > 0
    assert report["photos"]["argmax_agreement"] == 1.0 and report["photos"]["topk_agreement"] == 1.0
    assert "reference" not in report and "not an official release file" in report["weights"]
    assert (tmp_path / "RN50-similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_file_is_converted_in_memory_for_the_other_framework(files, tmp_path):
    result = verify(files / "RN50.pdparams", "--report-dir", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["sources"]["torch"]["converted_in_memory_from"]


def test_a_tight_tolerance_is_a_failure_with_exit_status_one(files, tmp_path):
    # float32 cannot meet 1e-12 without the noise allowance
    result = verify(files / "RN50.pt", "--atol", "1e-12", "--rtol", "0", "--noise-factor", "0", "--report-dir", tmp_path)
    assert result.exit_code == 1 and "FAIL" in result.output


def test_bad_input_is_one_line_and_exit_two(files, tmp_path):
    for args in ([files / "RN50.pdparams", files / "perturbed.pdparams"], [tmp_path / "missing.pt"],
                 [files / "RN50.pt", "--variant", "ViT-B/32"]):
        result = verify(*args, "--report-dir", tmp_path)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "both paddle checkpoints (paddle, paddle)" in verify(files / "RN50.pdparams", files / "perturbed.pdparams").output


def test_asking_for_a_gpu_where_there_is_none_is_a_clear_error(files, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = verify(files / "RN50.pt", "--device", "gpu", "--report-dir", tmp_path)
    assert result.exit_code == 2 and "no GPU for torch" in result.output and "--device cpu" in result.output


def test_logits_on_either_framework(files):
    runner = CliRunner()
    torch_out = json.loads(runner.invoke(main, ["logits", str(files / "RN50.pt"), "--framework", "torch",
                                                "--json"]).output)
    paddle_out = json.loads(runner.invoke(main, ["logits", str(files / "RN50.pdparams"), "--framework", "paddle",
                                                 "--json"]).output)
    for out, framework in ((torch_out, "torch"), (paddle_out, "paddle")):
        assert out["variant"] == "RN50" and out["framework"] == framework and out["device"] == "cpu"
        assert len(out["image_features"]) == len(out["text_features"]) == 1024
    official = build_official({k: __import__("torch").from_numpy(v) for k, v in
                               parity.load(files / "RN50.pt").state_dict.items()})
    want = run_torch(official, *canonical_inputs(224)).logits.item()
    assert torch_out["logit"] == pytest.approx(want, abs=1e-6)  # parity torch == openai/CLIP
    assert paddle_out["logit"] == pytest.approx(want, abs=1e-4)
    text = runner.invoke(main, ["logits", str(files / "RN50.pdparams"), "--framework", "paddle"]).output
    assert f"logit          {paddle_out['logit']:.6f}" in text


def test_a_wrong_hash_is_never_official_and_a_right_one_meets_the_reference(files, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(files / "RN50.pt", weights / "RN50.pt")  # a release file name, but not the release's bytes
    args = ["verify-all", "--variant", "RN50", "--weights-dir", str(weights), "--report-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "r" / "verify-all.json").read_text())["results"][0]
    assert "not an official release file" in row["weights"] and "official RN50" not in row["weights"]
    assert "reference" not in row and "18.114" not in (tmp_path / "r" / "verify-all.md").read_text()

    # were its SHA-256 the release's, the file would be labelled official and held to the reference
    # table (18.1140): random weights cannot meet it, so the gate fails
    digest = sha256_of(weights / "RN50.pt")
    monkeypatch.setitem(registry.ENTRIES, "RN50", dataclasses.replace(registry.ENTRIES["RN50"], sha256=digest))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    row = json.loads((tmp_path / "r" / "verify-all.json").read_text())["results"][0]
    assert row["weights"].startswith("official RN50 release") and row["reference"]["logit"] == 18.1140
    assert row["reference"]["passed"] is False and row["passed"] is False


def test_a_variant_that_cannot_be_verified_stops_the_sweep_with_its_junit(tmp_path):
    """Bad input (a release file name holding no checkpoint) stops verify-all with exit 2 and one line, and
    a CI gate still gets its JUnit: the variant as a testcase in error, with the message."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "RN50.pt").write_bytes(b"not a checkpoint at all")
    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(main, ["verify-all", "--variant", "RN50", "--weights-dir", str(weights),
                                       "--report-dir", str(tmp_path / "r"), "--junit", str(junit)])
    assert result.exit_code == 2, result.output
    assert "[1/1] RN50 (weights from " in result.output and "RN50.pt) ... stopped\n" in result.output
    assert "RN50: " in result.output and "not a checkpoint" in result.output
    cases = junit_cases(junit)
    assert list(cases) == [("RN50", "verify")] and "not a checkpoint" in cases["RN50", "verify"]
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1" and root.find("testsuite/testcase/error").get("type") == "parity.bad_input"


def test_synthetic_results_never_carry_reference_values(tmp_path):
    result = CliRunner().invoke(main, ["verify-all", "--variant", "RN50", "--weights-dir", str(tmp_path / "none"),
                                       "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "verify-all.md").read_text() + (tmp_path / "RN50.md").read_text() + result.output
    row = json.loads((tmp_path / "verify-all.json").read_text())["results"][0]
    assert row["weights"] == "synthetic seed 0" and "reference" not in row
    assert "18.114" not in text and "Reference table" not in text


def test_zero_shot_with_either_framework(files):
    """The README's example: one photograph, its caption among others, through each framework."""
    import paddle
    import torch

    from parity.harness.inputs import sample_path
    captions = ["a facial photo of a tabby cat", "a rocket standing on a launchpad", "a cup of coffee"]
    image, text = parity.preprocess(sample_path("chelsea"), 224)[None], parity.tokenize(captions)
    model = parity.load_model(files / "RN50.pt", framework="torch", device="cpu")
    assert not model.training
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(image), torch.from_numpy(text))
    torch_probs = logits.softmax(dim=-1).numpy()
    official = build_official({k: torch.from_numpy(v) for k, v in parity.load(files / "RN50.pt").hub_state().items()})
    with torch.no_grad():
        official_logits, _ = official(torch.from_numpy(image), torch.from_numpy(text))
    model = parity.load_model(files / "RN50.pdparams", framework="paddle", device="cpu")
    assert not model.training
    with paddle.no_grad():
        logits, _ = model(paddle.to_tensor(image), paddle.to_tensor(text))
    paddle_probs = paddle.nn.functional.softmax(logits, axis=-1).numpy()
    # parity's torch model gives openai/CLIP's own probabilities for the example
    np.testing.assert_allclose(torch_probs, official_logits.softmax(dim=-1).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(paddle_probs, torch_probs, atol=1e-5)


def test_the_float64_pass_runs_once_for_the_same_weights_inputs_and_code(tmp_path, monkeypatch):
    """The float64 outputs behind the noise floor are kept (parity.harness.floors) and read again for the
    same weights, inputs and code: the same floor, without the pass. Other weights, or a kept file that
    does not read as one, and the pass runs again."""
    from parity.harness import floors
    from parity.harness.run import verify_state_dict
    from parity.testing.synthetic import cached_state_dict

    monkeypatch.setattr(floors, "folder", lambda: tmp_path / "float64")
    state, config = cached_state_dict("RN50"), registry.get("RN50").config

    def measured(weights) -> tuple[bool, dict]:
        stages = []
        report = verify_state_dict(weights, "synthetic seed 0", config, photos=False, stage=stages.append)
        assert report.passed and not report.quick
        return any("float64" in s for s in stages), report.noise_floor

    ran, floor = measured(state)
    assert ran and len(list((tmp_path / "float64").iterdir())) == 1
    assert measured(state) == (False, floor)
    other = {**state, "ln_final.bias": state["ln_final.bias"] + 1e-3}
    assert measured(other)[0] and len(list((tmp_path / "float64").iterdir())) == 2
    for kept in (tmp_path / "float64").iterdir():
        kept.write_bytes(kept.read_bytes()[:-8])  # truncated: not read, measured again
    assert measured(state) == (True, floor)


def test_quick_has_no_float64_pass_and_says_its_bound(tmp_path, monkeypatch):
    from parity.harness import floors

    monkeypatch.setattr(floors, "folder", lambda: tmp_path / "float64")
    result = CliRunner().invoke(main, ["verify-all", "--quick", "--variant", "RN50", "--weights-dir",
                                       str(tmp_path / "none"), "--report-dir", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "reports" / "verify-all.json").read_text())["results"][0]
    assert row["quick"] is True and row["noise_floor"] is None and row["passed"] is True
    assert {d["bound_kind"] for d in row["differences"].values()} == {"atol+rtol"}
    assert not any("float64" in stage for stage in row["stages"]) and "torch image tower: 8 photographs" in row["stages"]
    assert "quick: no float64 pass" in (tmp_path / "reports" / "RN50.md").read_text()
    assert "quick: no float64 pass" in (tmp_path / "reports" / "verify-all.md").read_text()
    assert not (tmp_path / "float64").exists()  # nothing measured, nothing kept


def test_a_long_variant_tells_its_stages():
    """verify-all's progress: stage lines once a variant has run past its threshold, none before."""
    from parity.harness.sweep import Stages

    shown = []
    quiet = Stages(shown.append, after=1e9)
    quiet("torch image tower: canonical input")
    quiet("reports")
    assert list(quiet.done()) == ["torch image tower: canonical input", "reports"] and shown == []
    loud = Stages(shown.append, after=0.0)
    loud("a")
    loud("b")
    loud.done()
    assert [line.split(":")[0] for line in shown] == ["a", "b"] and all(line.endswith(" s") for line in shown)


def test_paddle_takes_mkl_s_avx2_path_on_amd_cpus_only(monkeypatch):
    """Paddle's bundled MKL takes its slowest GEMM path on CPUs not made by Intel; parity asks for the AVX2
    path on AMD CPUs that have it, and leaves Intel CPUs and a user's own setting alone."""
    from parity.models import frameworks

    assert frameworks.cpu_vendor() in ("GenuineIntel", "AuthenticAMD", "")  # this machine's, read from Linux
    features = np._core._multiarray_umath.__cpu_features__
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    monkeypatch.setattr(frameworks, "cpu_vendor", lambda: "GenuineIntel")
    frameworks.mkl_path_for_this_cpu()
    assert "MKL_DEBUG_CPU_TYPE" not in frameworks.os.environ
    monkeypatch.setattr(frameworks, "cpu_vendor", lambda: "AuthenticAMD")
    frameworks.mkl_path_for_this_cpu()
    avx2 = features["AVX2"] and features["FMA3"]
    assert frameworks.os.environ.get("MKL_DEBUG_CPU_TYPE") == (frameworks.MKL_AVX2 if avx2 else None)
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "4")
    frameworks.mkl_path_for_this_cpu()
    assert frameworks.os.environ["MKL_DEBUG_CPU_TYPE"] == "4"
