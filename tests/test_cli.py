import json

from click.testing import CliRunner

from parity import __version__
from parity.cli import main


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.strip() == f"parity, version {__version__}"
    result = runner.invoke(main, ["-h"])
    assert result.exit_code == 0 and "verify-all" in result.output and "variants" in result.output


def test_variants_lists_the_nine():
    result = CliRunner().invoke(main, ["variants"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()[1:]] == [
        "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


def test_verify_all_writes_reports_and_exits_zero(tmp_path):
    result = CliRunner().invoke(main, ["verify-all", "--variant", "vit-b-32", "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "[1/1] ViT-B/32 ... PASS" in result.output
    report = json.loads((tmp_path / "verify-all.json").read_text())
    assert report["passed"] is True and [r["variant"] for r in report["results"]] == ["ViT-B/32"]
    row = report["results"][0]
    assert row["weights"] == "synthetic seed 0" and row["logit_delta"] <= row["logit_bound"]
    md = (tmp_path / "verify-all.md").read_text()
    assert "| ViT-B/32 | synthetic seed 0 |" in md and "never official" in md


def test_verify_all_exits_one_when_a_bound_is_broken(tmp_path, monkeypatch):
    # with the noise allowance off, an atol of 1e-12 cannot be met by float32 arithmetic: the gate says FAIL
    import parity.harness
    monkeypatch.setattr(parity.harness, "NOISE_FACTOR", 0.0)
    result = CliRunner().invoke(main, ["verify-all", "--variant", "ViT-B/32", "--atol", "1e-12",
                                       "--report-dir", str(tmp_path)])
    assert result.exit_code == 1 and "FAIL" in result.output


def test_unknown_variant_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["verify-all", "--variant", "ViT-H/14", "--report-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown variant 'ViT-H/14'" in result.output and "parity variants" in result.output
