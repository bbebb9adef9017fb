"""Spec loader, schema, overrides, semantic checks and analysis (no framework needed)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import jsonschema
import pytest

from rosetta_cnn import SpecError, analyze, list_models, load_spec, load_spec_dict
from rosetta_cnn.core.spec import SCHEMA_PATH, SPEC_DIR, parse_overrides

# torchvision's figures: parameters (without, with aux heads) and GMACs at 224x224
# (torchvision's "GFLOPS" column counts multiply-accumulates of convs and FC layers).
EXPECTED = {
    "alexnet": (61_100_840, None, 0.714),
    "alexnet_paper": (60_965_224, None, None),
    "vgg11": (132_863_336, None, 7.609),
    "vgg11_bn": (132_868_840, None, 7.609),
    "vgg13": (133_047_848, None, 11.308),
    "vgg13_bn": (133_053_736, None, 11.308),
    "vgg16": (138_357_544, None, 15.470),
    "vgg16_bn": (138_365_992, None, 15.470),
    "vgg19": (143_667_240, None, 19.632),
    "vgg19_bn": (143_678_248, None, 19.632),
    "googlenet": (6_624_904, 13_004_888, 1.498),
    "googlenet_paper": (6_998_552, 13_378_280, None),
}


def test_registry_has_the_twelve_models():
    assert sorted(list_models()) == sorted(EXPECTED)


@pytest.mark.parametrize("model", list(EXPECTED))
def test_parameter_counts_match_torchvision(model):
    params, with_aux, _ = EXPECTED[model]
    s = analyze(load_spec(model))
    assert s.inference_params == params
    assert s.total_params == (with_aux or params)
    if with_aux:
        assert analyze(load_spec(model, {"aux_logits": False})).total_params == params


@pytest.mark.parametrize("model", [m for m, e in EXPECTED.items() if e[2]])
def test_macs_within_one_percent_of_torchvision(model):
    gmacs = analyze(load_spec(model)).total_macs / 1e9
    assert abs(gmacs - EXPECTED[model][2]) / EXPECTED[model][2] < 0.01


def test_batchnorm_statistics_are_buffers_not_parameters():
    s = analyze(load_spec("vgg11_bn"))
    bn = s.layer("block1_conv1_bn")
    assert (bn.params, bn.buffers) == (128, 128)


def test_vgg16_receptive_fields():
    s = analyze(load_spec("vgg16"))
    assert s.layer("block1_conv2").receptive_field == (5, 5)  # k + (k-1)(n-1) = 3 + 2*1
    assert s.layer("block5_conv3").receptive_field == (196, 196)
    assert s.layer("block5_pool").receptive_field == (212, 212)
    assert s.layer("block5_pool").jump == (32, 32)
    assert s.layer("fc1").receptive_field is None


@pytest.mark.parametrize("model", list(EXPECTED))
def test_shape_trace_reaches_logits(model):
    spec = load_spec(model)
    assert spec.layer(spec.outputs["logits"]).out_shape == (1000,)
    for layer in spec.layers:
        assert all(d >= 1 for d in layer.out_shape)


def test_googlenet_shapes_follow_ceil_mode():
    spec = load_spec("googlenet")
    assert spec.layer("maxpool1").out_shape == (64, 56, 56)
    assert spec.layer("inception3a_concat").out_shape == (256, 28, 28)
    assert spec.layer("inception5b_concat").out_shape == (1024, 7, 7)
    assert spec.layer("aux1_pool").out_shape == (512, 4, 4)
    assert spec.layer("aux1_fc2").training_only and not spec.layer("fc").training_only


def test_alexnet_paper_documented_choice():
    spec = load_spec("alexnet_paper")
    assert spec.layer("conv1").out_shape == (96, 55, 55)
    assert spec.layer("pool5").out_shape == (256, 6, 6)
    assert spec.layer("conv2").attrs["groups"] == 2 and spec.layer("conv3").attrs["groups"] == 1


def test_googlenet_paper_has_true_5x5_and_no_bn():
    spec = load_spec("googlenet_paper")
    assert spec.layer("inception3a_branch3").attrs["kernel_size"] == (5, 5)
    assert not any(l.op == "batch_norm" for l in spec.layers)
    assert spec.layer("aux1_pool").out_shape == (512, 4, 4)


# -- overrides -------------------------------------------------------------


def test_overrides_seed_style_small_vgg():
    spec = load_spec("vgg11", {"width_divisor": 4, "in_channels": 1, "input_size": 32, "num_classes": 10})
    assert spec.input_shape == (1, 32, 32)
    assert spec.layer("block1_conv1").attrs["out_channels"] == 16
    assert spec.layer("fc1").attrs["out_features"] == 1024
    assert spec.layer("predictions").out_shape == (10,)


def test_override_effects():
    assert load_spec("alexnet", {"dropout": 0.1}).layer("dropout6").attrs["rate"] == 0.1
    assert "aux1_fc2" not in load_spec("googlenet", {"aux_logits": False})._index
    assert load_spec("googlenet", {"aux_logits": False}).outputs == {"logits": "fc"}
    assert load_spec("googlenet", {"transform_input": True}).layers[0].op == "transform_input"
    assert load_spec("alexnet", {"input_size": [256, 320]}).layer("pool5").out_shape == (256, 7, 9)


@pytest.mark.parametrize("overrides, needle", [
    ({"colour": 1}, "valid keys: dropout, in_channels, input_size, num_classes, width_divisor"),
    ({"num_classes": "ten"}, "num_classes"),
    ({"num_classes": 0}, "integer >= 1"),
    ({"dropout": 1.5}, "dropout"),
    ({"aux_logits": True}, "unknown override 'aux_logits' for vgg16"),
    ({"width_divisor": 3}, "does not divide"),
    ({"input_size": 16}, "drops below 1"),
    ({"input_size": [224]}, "input_size"),
])
def test_bad_overrides_are_clear_errors(overrides, needle):
    with pytest.raises(SpecError) as e:
        load_spec("vgg16", overrides)
    assert needle in str(e.value)
    assert "vgg.json" in str(e.value)


def test_transform_input_needs_three_channels():
    with pytest.raises(SpecError, match="transform_input needs 3 input channels"):
        load_spec("googlenet", {"transform_input": True, "in_channels": 1})


def test_parse_overrides_cli_values():
    assert parse_overrides(["num_classes=10", "aux_logits=false", "input_size=[227,227]", "dropout=0.3"]) == {
        "num_classes": 10, "aux_logits": False, "input_size": [227, 227], "dropout": 0.3}
    with pytest.raises(SpecError, match="key=value"):
        parse_overrides(["num_classes"])


# -- schema and semantic errors ---------------------------------------------------


def test_schema_is_valid_draft_2020_12_and_specs_conform():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in SPEC_DIR.glob("*.json"):
        jsonschema.Draft202012Validator(schema).validate(json.loads(path.read_text()))


def _doc(name: str) -> dict:
    return json.loads((SPEC_DIR / f"{name}.json").read_text())


def _mutated(name: str, fn) -> dict:
    doc = copy.deepcopy(_doc(name))
    fn(doc)
    return doc


@pytest.mark.parametrize("file, model, mutate, path, needle", [
    ("alexnet", "alexnet", lambda d: d["layers"][2].update(op="conv3d"), "$.layers[2]", "op"),
    ("alexnet", "alexnet", lambda d: d["layers"][2].update(kernel_size=-5), "$.layers[2].kernel_size", ""),
    ("alexnet", "alexnet", lambda d: d["layers"][2].update(kernel_size="5"), "$.layers[2].kernel_size", ""),
    ("alexnet", "alexnet", lambda d: d["layers"][2].pop("out_channels"), "$.layers[2]", "out_channels"),
    ("alexnet", "alexnet", lambda d: d["layers"][4].update(inputs=["conv9"]), "$.layers[4].inputs[0]",
     "unknown input 'conv9'"),
    ("alexnet", "alexnet", lambda d: d["layers"][4].update(name="conv2"), "$.layers[4].name", "duplicate layer name"),
    ("alexnet", "alexnet", lambda d: d["layers"][1].update(inputs=["conv2"]), "$.layers", "cycle"),
    ("alexnet", "alexnet", lambda d: d["layers"][0].update(kernel_size=300), "$.layers[0]", "drops below 1"),
    ("alexnet", "alexnet", lambda d: d["layers"][2].update(in_channels=3), "$.layers[2]", "in_channels is 3"),
    ("alexnet", "alexnet", lambda d: d["layers"][10].update(rate="$p"), "$.layers[10].rate", "unknown parameter '$p'"),
    ("alexnet", "alexnet", lambda d: d["layers"].pop(9), "$.layers[10]", "add a flatten layer"),
    ("googlenet", "googlenet",
     lambda d: d["blocks"]["inception"]["layers"][5].update(padding=0),
     "$.blocks.inception.layers[7]", "concat inputs must share H and W"),
    ("googlenet", "googlenet", lambda d: d["layers"][6].update(block="incepton"), "$.layers[6].block",
     "unknown block 'incepton'"),
    ("googlenet", "googlenet", lambda d: d["layers"][6]["args"].pop("ch3x3"), "$.layers[6].args",
     "needs argument 'ch3x3'"),
    ("googlenet", "googlenet", lambda d: d["layers"][6]["args"].update(ch7x7=3), "$.layers[6].args.ch7x7",
     "has no argument 'ch7x7'"),
    ("vgg", "vgg16", lambda d: d["models"]["vgg16"].update(cfg=5), "$.layers[0].for", "non-empty list"),
    ("vgg", "vgg16", lambda d: d["outputs"].update(logits="fc9"), "$.outputs.logits", "unknown input 'fc9'"),
])
def test_semantic_errors_name_file_and_json_path(file, model, mutate, path, needle):
    with pytest.raises(SpecError) as e:
        load_spec_dict(_mutated(file, mutate), model, file=f"{file}.json")
    msg = str(e.value)
    assert msg.startswith(f"{file}.json: ")
    assert e.value.path.startswith(path), msg
    assert needle in msg


def test_invalid_json_file_is_a_spec_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "rosetta-spec/1",')
    with pytest.raises(SpecError, match="invalid JSON at line 1"):
        load_spec(f"{bad}:x")


def test_unknown_model_suggests():
    with pytest.raises(SpecError, match="did you mean 'googlenet_paper'"):
        load_spec("googlenet_papr")


# -- framework isolation and CLI -------------------------------------------------


def test_importing_the_library_and_cli_imports_no_framework():
    """The core, the CLI's parser, verification, training, formats and the bench runner import
    no deep-learning framework; the core and the CLI import neither matplotlib nor pygments."""
    code = ("import sys, rosetta_cnn, rosetta_cnn.cli, rosetta_cnn.core.canonical, rosetta_cnn.core.layout,"
            " rosetta_cnn.core.ports, rosetta_cnn.core.files;"
            "rosetta_cnn.analyze(rosetta_cnn.load_spec('googlenet')); rosetta_cnn.cli.build_parser();"
            "heavy = [m for m in ('matplotlib', 'pygments') if m in sys.modules];"
            "import rosetta_cnn.verification.parity, rosetta_cnn.verification.training, rosetta_cnn.training.loop,"
            " rosetta_cnn.formats.convert, rosetta_cnn.formats.fcn, rosetta_cnn.tools.bench.runner;"
            "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax') if m in sys.modules];"
            "print(heavy, bad); sys.exit(1 if bad or heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_summary_json(capsys):
    from rosetta_cnn.cli import main

    assert main(["summary", "vgg16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_params"] == 138_357_544 and data["total_macs"] == 15_470_264_320
    row = next(l for l in data["layers"] if l["name"] == "block5_conv3")
    assert set(row) >= {"name", "op", "output_shape", "params", "macs", "receptive_field"}
    assert row["receptive_field"] == [196, 196] and row["output_shape"] == [512, 14, 14]


def test_cli_summary_table_and_list(capsys):
    from rosetta_cnn.cli import main

    assert main(["summary", "vgg11", "--input", "1x32x32", "--set", "width_divisor=4", "--set", "num_classes=10"]) == 0
    out = capsys.readouterr().out
    assert "1x32x32" in out and "block1_conv1" in out and "total parameters" in out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in EXPECTED) and "138,357,544" in out


def test_cli_reports_bad_input_without_traceback(capsys):
    from rosetta_cnn.cli import main

    assert main(["summary", "vgg16", "--set", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "valid keys" in err and "Traceback" not in err
    assert main(["summary", "vgg16", "--input", "224x224"]) == 2
    assert "CxHxW" in capsys.readouterr().err
