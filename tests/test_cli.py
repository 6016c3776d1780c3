import json

from click.testing import CliRunner

from parity import __version__
from parity.cli import main
from helpers import junit_cases


def test_version_and_help():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.strip() == f"parity, version {__version__}"
    result = runner.invoke(main, ["-h"])
    assert result.exit_code == 0 and "verify-all" in result.output and "variants" in result.output


def test_variants_lists_the_families_apart():
    result = CliRunner().invoke(main, ["variants"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    openai, open_clip = lines.index(next(x for x in lines if x.startswith("openai "))), \
        lines.index(next(x for x in lines if x.startswith("open_clip ")))
    assert [line.split()[0] for line in lines[openai + 2:open_clip]] == [
        "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
    cn_clip = lines.index(next(x for x in lines if x.startswith("cn_clip ")))
    assert [line.split()[0] for line in lines[open_clip + 2:cn_clip]] == [
        "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-32-quickgelu",
        "ViT-B-16-quickgelu", "ViT-L-14-quickgelu", "ViT-H-14-quickgelu", "ViT-bigG-14-quickgelu"]
    towers = lines.index(next(x for x in lines if x.startswith("towers ")))
    assert [line.split()[0] for line in lines[cn_clip + 2:towers]] == [
        "cn_clip/ViT-B-16", "cn_clip/ViT-L-14", "cn_clip/ViT-L-14-336", "cn_clip/ViT-H-14", "cn_clip/RN50"]
    siglip = lines.index(next(x for x in lines if x.startswith("siglip ")))
    assert [line.split()[0] for line in lines[towers + 2:siglip]] == [
        "sd1/text_encoder", "sd2/text_encoder", "sdxl/text_encoder_2", "llava/vision_tower"]
    assert [line.split()[0] for line in lines[siglip + 2:]][:2] == ["siglip-base-patch16-224", "siglip-base-patch16-256"]
    row = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  ")}
    assert row["ViT-L/14"] == ["768", "224", "24", "1024", "14", "16", "4096", "quick_gelu", "768/12/12/3072",
                               "quick_gelu"]
    # open_clip's head width (80, 88, 104) and MLP ratio, as its configs state them
    assert row["ViT-bigG-14"] == ["1280", "224", "48", "1664", "14", "16", "8192", "gelu", "1280/20/32/5120", "gelu"]
    assert row["ViT-g-14"][5:7] == ["16", "6144"] and row["ViT-H-14"][5:7] == ["16", "5120"]


def test_layouts_lists_the_hub_first():
    result = CliRunner().invoke(main, ["layouts"])
    assert result.exit_code == 0
    rows = [line.split()[:4] for line in result.output.splitlines()[1:]]
    assert rows[0] == ["openai", "torch", "vit+resnet", "25"]  # of 37: not SigLIP's twelve
    assert ["paddle", "paddle", "vit+resnet+siglip_vit", "all"] in rows
    hf = next(line for line in result.output.splitlines() if line.startswith("hf "))
    assert "31 of 37 (no ResNet)" in hf  # the 15 ViT CLIPs, Chinese-CLIP's four ViTs, the 12 SigLIPs
    paddlenlp = next(line for line in result.output.splitlines() if line.startswith("paddlenlp "))
    assert "24 of 37 (no SigLIP, no ResNet beside a BERT)" in paddlenlp


def test_verify_all_writes_reports_and_exits_zero(tmp_path):
    junit = tmp_path.parent / f"{tmp_path.name}-junit.xml"
    result = CliRunner().invoke(main, ["verify-all", "--variant", "vit-b/32", "--report-dir", str(tmp_path),
                                       "--weights-dir", str(tmp_path / "no-weights"), "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    cases = junit_cases(junit)
    assert {suite for suite, _ in cases} == {"ViT-B/32"} and len(cases) == 6 and set(cases.values()) == {None}
    assert "[1/1] ViT-B/32 (synthetic) ... PASS" in result.output
    report = json.loads((tmp_path / "verify-all.json").read_text())
    assert report["passed"] is True and [r["variant"] for r in report["results"]] == ["ViT-B/32"]
    row = report["results"][0]
    logit = row["differences"]["logits"]
    assert row["weights"] == "synthetic seed 0" and logit["max_abs"] <= logit["bound"] and logit["passed"]
    assert row["photos"]["topk_agreement"] == 1.0 and "reference" not in row
    md = (tmp_path / "verify-all.md").read_text()
    assert "| ViT-B/32 | synthetic seed 0 |" in md and "never compared with the reference table" in md
    assert "Variants: the variants named: 1 of 1 model." in md and report["selection"] == "the variants named: 1 of 1 model"
    assert "| 100% (top-1 100%) | PASS |" in md
    assert {p.name for p in tmp_path.iterdir()} == {"verify-all.md", "verify-all.json", "ViT-B-32.md",
                                                    "ViT-B-32.json", "ViT-B-32-similarity.png"}


def test_verify_all_exits_one_when_a_bound_is_broken(tmp_path):
    # with the noise allowance off, an atol of 1e-12 cannot be met by float32 arithmetic: the gate says FAIL
    result = CliRunner().invoke(main, ["verify-all", "--variant", "ViT-B/32", "--atol", "1e-12", "--rtol", "0",
                                       "--noise-factor", "0",
                                       "--report-dir", str(tmp_path), "--weights-dir", str(tmp_path / "none"),
                                       "--junit", str(tmp_path / "junit.xml")])
    assert result.exit_code == 1 and "FAIL" in result.output
    # a failure always brings the layer diagnosis
    row = json.loads((tmp_path / "verify-all.json").read_text())["results"][0]
    layers = row["layers"]
    # the first divergence is the first module, in execution order, beyond its bound; the image tower runs
    # first, and with no tolerance its first module, the patch convolution, is already beyond it (torch's and
    # Paddle's convolutions round differently in float32: some 5e-7 apart), so that is the module named
    assert layers["first_divergence"] == layers["table"][0]["module"] == "visual.conv1", layers["first_divergence"]
    failed = {case: m for (_, case), m in junit_cases(tmp_path / "junit.xml").items() if m}
    assert set(failed) == {n for n, d in row["differences"].items() if not d["passed"]} and failed
    assert all("first diverging layer: visual.conv1" in m for m in failed.values())


def test_verify_all_takes_a_model_released_as_a_folder(tmp_path):
    # cn_clip's (and open_clip's) entries have no release file to look for under --weights-dir: they
    # are verified on synthetic weights (this crashed on `weights_dir / None` before)
    weights = tmp_path / "weights"
    weights.mkdir()
    result = CliRunner().invoke(main, ["verify-all", "--variant", "cn_clip/RN50", "--report-dir", str(tmp_path / "r"),
                                       "--weights-dir", str(weights)])
    assert result.exit_code == 0, result.output
    assert "[1/1] cn_clip/RN50 (synthetic) ... PASS" in result.output
    row = json.loads((tmp_path / "r" / "verify-all.json").read_text())["results"][0]
    assert (row["variant"], row["weights"], row["passed"]) == ("cn_clip/RN50", "synthetic seed 0", True)


def listed(*args):
    result = CliRunner().invoke(main, ["verify-all", *args, "--list"])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_shards_of_every_family_cover_every_registered_model_once():
    from parity.config import registry

    shards = [listed("--family", "all", "--shard", f"{i}/3") for i in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(registry.ENTRIES)  # each once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # evenly
    assert shards == [listed("--family", "all", "--shard", f"{i}/3") for i in (1, 2, 3)]  # deterministically
    assert listed() == [e.name for e in registry.family("openai")]  # OpenAI's nine by default
    for family in registry.FAMILIES:
        assert listed("--family", family) == [e.name for e in registry.family(family)]
    assert listed("--family", "open_clip", "--variant", "ViT-H-14", "--variant", "ViT-B-32") == ["ViT-H-14", "ViT-B-32"]
    assert listed("--variant", "RN50", "--shard", "2/2") == []  # a shard may be empty: nothing to run
    result = CliRunner().invoke(main, ["verify-all", "--family", "all", "--shard", "2/3", "--list"])
    assert "shard 2/3 of family all: 14 of 41 models" in result.stderr


def test_bad_shards_and_families_are_one_line(tmp_path):
    for args, says in ((["--shard", "0/3"], "is not I/N"), (["--shard", "4/3"], "is not I/N"),
                       (["--shard", "x"], "is not I/N"), (["--family", "cn_clip", "--variant", "RN50"],
                                                          "RN50 not of family cn_clip"),
                       (["--family", "nope"], "Invalid value for '--family'")):
        result = CliRunner().invoke(main, ["verify-all", *args, "--list"])
        assert result.exit_code == 2 and says in result.output, (args, result.output)


def test_unknown_variant_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["verify-all", "--variant", "ViT-Z/14", "--report-dir", str(tmp_path)])
    assert result.exit_code == 2  # bad input; 1 would say the frameworks disagree
    assert "unknown model 'ViT-Z/14'" in result.output and "parity variants" in result.output


def test_convert_prints_one_summary_line(tmp_path):
    from parity.testing.synthetic import release_archive
    result = CliRunner().invoke(main, ["convert", str(release_archive("RN50")), "--to", "paddle",
                                       "-o", str(tmp_path / "RN50.pdparams")])
    assert result.exit_code == 0, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("RN50: 482 tensors, ") and "float32×482" in line and line.endswith(f"-> {tmp_path / 'RN50.pdparams'}")


def test_info_describes_a_file(tmp_path, monkeypatch):
    from dataclasses import replace

    from parity.config import registry
    from parity.testing.synthetic import release_archive
    archive = release_archive("RN50")
    result = CliRunner().invoke(main, ["info", str(archive), "--json"])
    assert result.exit_code == 0, result.output
    fields = json.loads(result.output)
    assert fields["format"] == "TorchScript archive" and fields["layout"] == "openai" and fields["model"] == "RN50"
    assert fields["config from"] == "registry: RN50 (by its shapes)" and "pool heads 32" in fields["config"]
    assert fields["tensors"] == 492 and fields["dtypes"] == {"float16": 160, "float32": 274, "int64": 58}
    assert fields["official"].startswith("no") and fields["record"] == "none"
    # a file whose SHA-256 is in the registry is named as that release
    monkeypatch.setitem(registry.ENTRIES, "RN50", replace(registry.ENTRIES["RN50"], sha256=fields["sha256"]))
    text = CliRunner().invoke(main, ["info", str(archive)]).output
    assert "official    yes, the RN50 release file" in text and "format      TorchScript archive" in text
    converted = tmp_path / "x.pdparams"
    CliRunner().invoke(main, ["convert", str(archive), "--to", "paddle", "-o", str(converted)])
    fields = json.loads(CliRunner().invoke(main, ["info", str(converted), "--json"]).output)
    assert fields["layout"] == "paddle" and fields["record"].startswith("parity record: 58 hub-only tensors")
    assert fields["config from"] == "the file's own record"


def test_progress_bar_draws_on_stderr_and_clears(capsys):
    from parity.cli_support import Stages as _Stages
    bar = _Stages(2, enabled=True)
    bar("reading RN50.pt")
    bar("writing and checking RN50.pdparams")
    bar.close()
    err = capsys.readouterr().err
    assert "reading RN50.pt" in err and "[############............] writing" in err and err.endswith("\r")
    quiet = _Stages(2, enabled=False)  # not a terminal, or a small file: nothing drawn
    quiet("reading")
    quiet.close()
    assert capsys.readouterr().err == ""


def test_exit_statuses_tell_bad_input_from_a_bug_in_parity(tmp_path, monkeypatch):
    """2: bad input (one line, the fix); 3: anything bad input does not explain, a bug; 1 stays 'disagree'."""
    from parity.testing.synthetic import release_archive
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["verify", str(release_archive("RN50")), "--report-dir",
                                       str(tmp_path / "afile" / "reports")])
    assert result.exit_code == 2 and "cannot hold the reports" in result.output, result.output

    import parity.io.convert

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(parity.io.convert, "nonfinite", broken)
    result = CliRunner().invoke(main, ["convert", str(release_archive("RN50")), "--to", "paddle",
                                       "-o", str(tmp_path / "x.pdparams")])
    assert result.exit_code == 3, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: internal error, a bug in parity (KeyError: 'a bug')") and "--debug" in line
    assert not (tmp_path / "x.pdparams").exists()


def test_library_messages_name_no_cli_flag_and_the_cli_adds_them(tmp_path):
    """The library says what is wrong; the command line adds which of its flags fixes it."""
    import pytest

    import parity
    from parity.errors import ParityError
    from parity.testing.synthetic import release_archive
    (tmp_path / "x.pdparams").write_bytes(b"there")
    custom = tmp_path / "custom.pt"
    import torch
    from hostile_files import tiny_state
    torch.save(tiny_state(1000), custom)
    calls = [lambda: parity.convert(release_archive("RN50"), "paddle", tmp_path / "x.pdparams"),
             lambda: parity.convert(release_archive("RN50"), "torch", release_archive("RN50")),
             lambda: parity.logits(custom, "torch", device="cpu"),
             lambda: parity.load(release_archive("RN50"), config="ViT-B/32")]
    for call in calls:
        with pytest.raises(ParityError) as caught:
            call()
        assert "--" not in str(caught.value), str(caught.value)
    result = CliRunner().invoke(main, ["logits", str(custom), "--framework", "torch"])
    assert result.exit_code == 2 and "--config" in result.output
