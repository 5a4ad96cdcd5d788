"""Model architectures, BatchNorm folding, inference precisions, and model bundles:
what is built from an architecture string, how many parameters it has, that the fast
inference form computes what the trained network computes, and that a bundle loads
back exactly and refuses every kind of damage with one clear message."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import irscreen
from irscreen.errors import IrscreenError, IrscreenWarning
from irscreen.models.bundle import shipped_in_training, shipped_names, shipped_root
from irscreen.models.ensemble import load_model
from irscreen.models.irnet import PRESETS, FoldedEnsemble, Net, fold, n_parameters, parse_arch

N_FEATURES = 145  # the magpie preset


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --------------------------------------------------------------------------- architectures


def layer_shortcuts(net: Net) -> list[str]:
    """Per hidden layer: 'identity', 'projection' or 'none' (IRNet shortcuts)."""
    out = []
    for stack in net.stacks:
        for layer in stack.layers:
            s = layer.shortcut
            out.append("none" if s is None else "identity" if isinstance(s, nn.Identity) else "projection")
    return out


def stack_shortcuts(net: Net) -> list[str]:
    """Per stack: 'identity', 'projection' or 'none' (SRNet shortcuts)."""
    return ["none" if s.shortcut is None else "identity" if isinstance(s.shortcut, nn.Identity) else "projection"
            for s in net.stacks]


def count(net: Net, kind) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


I, P, N = "identity", "projection", "none"

# depth, Linear layers, BatchNorm layers, per-layer shortcut placement, per-stack shortcut placement
ARCHITECTURES = {
    # 16 hidden layers (4+3+3+3+2+1) + output; a projection wherever the width changes
    # (145->1024, ->512, ->256, ->128, ->64, ->32), so 6 projections + 17 weight layers
    "irnet17": (17, 17 + 6, 16,
                [P, I, I, I, P, I, I, P, I, I, P, I, I, P, I, P], [N] * 6),
    "srnet17": (17, 17 + 6, 16, [N] * 16, [P] * 6),
    "plain17": (17, 17, 16, [N] * 16, [N] * 6),
    # 23 hidden layers (4+4+4+4+3+2+2) + output; widths change 7 times (down to 16)
    "irnet24": (24, 24 + 7, 23,
                [P, I, I, I, P, I, I, I, P, I, I, I, P, I, I, I, P, I, I, P, I, P, I], [N] * 7),
    "srnet24": (24, 24 + 7, 23, [N] * 23, [P] * 7),
    "plain24": (24, 24, 23, [N] * 23, [N] * 7),
    # 47 hidden layers (11 stacks of 4 + 3) + output; every width is used by two stacks
    # (except 16), so the second stack of each pair keeps the width: identity shortcut
    "irnet48": (48, 48 + 7, 47,
                [P] + [I] * 7 + [P] + [I] * 7 + [P] + [I] * 7 + [P] + [I] * 7 + [P] + [I] * 7
                + [P] + [I] * 3 + [P, I, I], [N] * 12),
    "srnet48": (48, 48 + 7, 47, [N] * 47, [P, I, P, I, P, I, P, I, P, I, P, P]),
    "plain48": (48, 48, 47, [N] * 47, [N] * 12),
    "irnet17-half": (17, 17 + 6, 16,
                     [P, I, I, I, P, I, I, P, I, I, P, I, I, P, I, P], [N] * 6),
}


def test_preset_strings_are_the_papers():
    assert PRESETS["irnet17"] == "1024BARx4-512BARx3-256BARx3-128BARx3-64BARx2-32BARx1-1"
    assert PRESETS["srnet17"] == "1024BAx4R-512BAx3R-256BAx3R-128BAx3R-64BAx2R-32BAx1R-1"
    assert PRESETS["plain17"] == "1024BAx4-512BAx3-256BAx3-128BAx3-64BAx2-32BAx1-1"
    assert PRESETS["irnet17-half"] == "512BARx4-256BARx3-128BARx3-64BARx3-32BARx2-16BARx1-1"
    assert parse_arch("irnet17").spec == PRESETS["irnet17"]
    assert parse_arch(PRESETS["irnet17"]) == parse_arch("irnet17")
    assert parse_arch("  srnet24 ").spec == PRESETS["srnet24"]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_layers_and_shortcuts(name):
    depth, n_linear, n_bn, per_layer, per_stack = ARCHITECTURES[name]
    arch = parse_arch(name)
    assert arch.depth == depth
    assert arch.outputs == 1
    with torch.device("meta"):  # structure only: no memory, no weight init
        net = Net(N_FEATURES, name)
    assert count(net, nn.Linear) == n_linear
    assert count(net, nn.BatchNorm1d) == n_bn
    assert len(per_layer) == depth - 1
    assert layer_shortcuts(net) == per_layer
    assert stack_shortcuts(net) == per_stack
    # every hidden layer is Linear -> BatchNorm -> ReLU; the output is a bare Linear to 1
    for stack in net.stacks:
        for layer in stack.layers:
            assert layer.bn is not None and layer.relu
    assert isinstance(net.out, nn.Linear) and net.out.out_features == 1
    assert net(torch.zeros(3, N_FEATURES, device="meta")).shape == (3, 1)


def test_custom_string_flags():
    net = Net(10, "8Ax2-8BRx1-4x1R-2")
    assert parse_arch("8Ax2-8BRx1-4x1R-2").depth == 5
    layers = [layer for s in net.stacks for layer in s.layers]
    assert [(la.bn is not None, la.relu) for la in layers] == [(False, True), (False, True), (True, False), (False, False)]
    assert layer_shortcuts(net) == [N, N, I, N]
    assert stack_shortcuts(net) == [N, N, P]
    assert net.out.out_features == 2
    assert net(torch.zeros(2, 10)).shape == (2, 2)


def test_parameter_counts_by_hand():
    """irnet17 / srnet17 / plain17 on 145 Magpie features, counted from the widths."""
    def linear(n_in, n_out):  # weight + bias
        return n_in * n_out + n_out

    def bn(width):  # gamma + beta (running statistics are buffers, not parameters)
        return 2 * width

    hidden = (
        linear(145, 1024) + 3 * linear(1024, 1024)
        + linear(1024, 512) + 2 * linear(512, 512)
        + linear(512, 256) + 2 * linear(256, 256)
        + linear(256, 128) + 2 * linear(128, 128)
        + linear(128, 64) + linear(64, 64)
        + linear(64, 32)
    )
    # = (148480 + 1024) + 3 * (1048576 + 1024) + (524288 + 512) + 2 * (262144 + 512)
    #   + (131072 + 256) + 2 * (65536 + 256) + (32768 + 128) + 2 * (16384 + 128)
    #   + (8192 + 64) + (4096 + 64) + (2048 + 32)
    assert hidden == 149504 + 3148800 + 524800 + 525312 + 131328 + 131584 + 32896 + 33024 + 8256 + 4160 + 2080
    assert hidden == 4691744
    output = linear(32, 1)  # 33
    norms = bn(1024) * 4 + bn(512) * 3 + bn(256) * 3 + bn(128) * 3 + bn(64) * 2 + bn(32)  # 2 * 6944
    assert norms == 13888
    # one projection per width change, the same for IRNet (around the first layer of a
    # stack) and SRNet (around the whole stack): 145->1024, 1024->512, ..., 64->32
    projections = (linear(145, 1024) + linear(1024, 512) + linear(512, 256) + linear(256, 128)
                   + linear(128, 64) + linear(64, 32))
    assert projections == 149504 + 524800 + 131328 + 32896 + 8256 + 2080 == 848864

    plain = hidden + output + norms
    assert plain == 4705665
    assert n_parameters(Net(145, "plain17")) == plain
    assert n_parameters(Net(145, "irnet17")) == plain + projections == 5554529
    assert n_parameters(Net(145, "srnet17")) == plain + projections == 5554529
    # identity shortcuts add nothing: an all-same-width IRNet has the plain count
    assert n_parameters(Net(16, "16BARx3-1")) == n_parameters(Net(16, "16BAx3-1")) == 3 * (16 * 16 + 16 + 32) + 17


@pytest.mark.parametrize("spec, fragment", [
    ("", "ending in the output width"),
    ("irnet18", "irnet18"),
    ("1024BARx4", "ending in the output width"),
    ("1024BARx4-", "ending in the output width"),
    ("1024BQRx4-1", "1024BQRx4"),
    ("1024BARx4R-1", "both per-layer and per-stack"),
    ("0BARx4-1", "width and count >= 1"),
    ("64BARx0-1", "width and count >= 1"),
    ("64BAR-1", "64BAR"),
    ("x4-1", "x4"),
    ("64BARx2--1", "''"),
])
def test_malformed_architecture(spec, fragment):
    with pytest.raises(IrscreenError) as e:
        parse_arch(spec)
    msg = str(e.value)
    assert msg.startswith("invalid architecture"), msg
    assert fragment in msg, msg
    assert "\n" not in msg


def test_unknown_preset_message_lists_presets():
    with pytest.raises(IrscreenError) as e:
        Net(145, "resnet50")
    assert "irnet17" in str(e.value) and "srnet17" in str(e.value) and "plain17" in str(e.value)


# --------------------------------------------------------------------------- BatchNorm folding


def randomize_bn(net: Net, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)


# the 17-layer layouts at 1/4 width (same depth, shortcut placement and folding paths),
# plus SRNet/IRNet strings with identity stack/layer shortcuts next to projections
FOLD_ARCHS = [
    "256BARx4-128BARx3-64BARx3-32BARx3-16BARx2-8BARx1-1",  # irnet
    "256BAx4R-128BAx3R-64BAx3R-32BAx3R-16BAx2R-8BAx1R-1",  # srnet
    "256BAx4-128BAx3-64BAx3-32BAx3-16BAx2-8BAx1-1",  # plain
    "32BAx2R-32BAx2R-16BAx1R-1",
    "32BARx2-32BARx2-8BARx1-1",
]


@pytest.mark.parametrize("arch", FOLD_ARCHS)
def test_folding_preserves_outputs(arch):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    nets = [Net(N_FEATURES, arch) for _ in range(2)]
    for net in nets:
        randomize_bn(net, gen)
        net.eval()
    x = torch.randn(64, N_FEATURES, generator=gen)
    with torch.no_grad():
        ref = torch.stack([net(x)[:, 0] for net in nets]).double()
    folded = FoldedEnsemble([fold(net) for net in nets], precision="fp32")
    got = folded(x).double()
    assert got.shape == (2, 64)
    scale = ref.abs().max()
    assert scale > 0
    rel = ((got - ref).abs().max() / scale).item()
    assert rel < 1e-5, rel
    # a single member folded alone gives the same numbers as inside the ensemble
    alone = FoldedEnsemble([fold(nets[1])], precision="fp32")(x)[0].double()
    assert ((alone - got[1]).abs().max() / scale).item() < 1e-6


def test_unknown_precision_refused():
    with pytest.raises(IrscreenError, match="fp16"):
        FoldedEnsemble([fold(Net(4, "4BARx1-1"))], precision="fp16")


# --------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def shipped():
    return irscreen.load_model("formation-enthalpy")


def test_shipped_bundle_loads_and_predicts_negative_enthalpies(shipped):
    assert shipped.n_members == 3
    assert shipped.units == "eV/atom"
    df = shipped.predict(["NaCl", "Fe2O3"])
    assert list(df["formula"]) == ["NaCl", "Fe2O3"]
    assert (df["prediction"] < 0).all(), df
    assert (df["prediction"] > -5).all(), df  # eV/atom, not e.g. eV per formula unit
    assert (df["uncertainty"] >= 0).all()


def test_shipped_bundle_size_and_listing(monkeypatch):
    assert "formation-enthalpy" in shipped_names()
    bundle = shipped_root() / "formation-enthalpy"
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    assert size < 40 * 1024 * 1024, size
    for name in ("manifest.json", "README.md", "learning_curve.png", "parity.png"):
        assert (bundle / name).is_file()

    from rich.console import Console

    import irscreen.cli as cli

    monkeypatch.setattr(cli, "out", Console(width=80))  # a standard terminal
    r = CliRunner().invoke(cli.app, ["models"])
    assert r.exit_code == 0, r.output
    # the name is what --model takes: it must be shown whole, not cut to "formatio…"
    assert "formation-enthalpy" in r.stdout, r.stdout
    m = json.loads((bundle / "manifest.json").read_text())
    assert f"{m['metrics']['validation']['mae']:.4f}" in r.stdout  # the validation MAE


def test_shipped_manifest_fields():
    m = json.loads((shipped_root() / "formation-enthalpy" / "manifest.json").read_text())
    for key in ("name", "target", "units", "description", "features", "scaler", "architecture", "members", "data",
                "hyperparameters", "metrics", "versions", "citations"):
        assert key in m, key
    assert m["name"] == "formation-enthalpy"
    assert m["units"] == "eV/atom"
    from irscreen.features import PRESETS as FEATURE_PRESETS

    preset = FEATURE_PRESETS[m["features"]["preset"]]
    assert m["features"]["labels_sha256"] == preset.labels_hash
    assert len(m["scaler"]["x_mean"]) == len(m["scaler"]["x_std"]) == preset.n_features
    assert parse_arch(m["architecture"]).depth == 17
    assert [x["file"] for x in m["members"]] == [f"member-{i}.safetensors" for i in range(3)]
    for member in m["members"]:
        assert len(member["sha256"]) == 64 and int(member["sha256"], 16) >= 0
    for key in ("source", "rows", "sha256", "split"):
        assert m["data"][key], key
    assert m["data"]["rows"] > 50_000
    assert {"epochs", "lr", "batch_size", "seed", "ensemble"} <= set(m["hyperparameters"])
    assert m["metrics"]["validation"]["mae"] > 0
    assert len(m["metrics"]["validation"]["members"]) == 3
    assert {"irscreen", "torch", "python"} <= set(m["versions"])
    assert any("IRNet" in c or "deeper learning" in c for c in m["citations"])


def _formulas() -> list[str]:
    cations = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Al", "Ga", "Ti", "Zr", "V", "Cr", "Mn", "Fe", "Co", "Ni",
               "Cu", "Zn", "Y", "La", "Nb", "Mo", "Sn"]
    anions = ["O", "S", "F", "Cl", "N", "Se"]
    return [f"{c}{a}{k}" for c in cations for a in anions for k in (1, 2)]


def _few_formulas() -> list[str]:
    return _formulas()[::2]


#: |mixed - fp32| and |bf16 - fp32| of the shipped model on these formulas, measured (eV/atom,
#: member predictions): the bounds below are ~2.5x these, so a real regression fails.
MEASURED_PRECISION_ERROR = {"mixed": {"mean": 1.00e-3, "max": 6.9e-3}, "bf16": {"mean": 2.55e-3, "max": 2.07e-2}}


def test_mixed_and_bf16_precision_close_to_fp32(shipped):
    X = irscreen.featurize(_few_formulas(), shipped.preset).to_numpy()
    ref = shipped.predict_members(X, precision="fp32")
    assert np.isfinite(ref).all()
    diffs = {p: np.abs(shipped.predict_members(X, precision=p) - ref) for p in ("mixed", "bf16")}
    for p, d in diffs.items():
        bound = MEASURED_PRECISION_ERROR[p]
        assert d.mean() < 2.5 * bound["mean"] and d.max() < 2.5 * bound["max"], (p, d.mean(), d.max())
    assert diffs["mixed"].mean() < diffs["bf16"].mean()


# --------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A 2-member bundle trained for a few epochs on a synthetic target that is a
    function of the Magpie features; returns (bundle dir, features, member states)."""
    import irscreen.data as td_mod
    import irscreen.models.bundle as bundle_mod
    from irscreen.config import TrainConfig
    from irscreen.data import load_training_data
    from irscreen.train import train_bundle

    root = tmp_path_factory.mktemp("tiny")
    formulas = _formulas() + [f"{c}{a}" for c in ("Li", "Na", "K") for a in ("Fe2O3", "TiO3", "MnO4", "CoO2")]
    feats = irscreen.featurize(formulas)
    y = (0.01 * feats["MagpieData mean Number"] - 0.8 * feats["avg ionic char"]
         + 0.1 * feats["MagpieData range Electronegativity"]).to_numpy()
    data = root / "synthetic.parquet"
    pq.write_table(pa.table({"formula": formulas, "y": y}), data)

    saved = {}
    real_add = bundle_mod.add_member

    def recording_add(bundle, manifest, state, storage, info):
        saved[len(manifest["members"])] = {k: v.clone() for k, v in state.items()}
        return real_add(bundle, manifest, state, storage, info)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(td_mod, "CACHE_DIR", root / "cache")
        mp.setattr(bundle_mod, "add_member", recording_add)
        td = load_training_data(data, "y", seed=0)
        cfg = TrainConfig(arch="64BARx2-32BARx1-1", epochs=4, batch_size=32, lr=3e-3, patience=0,
                          precision="fp32", device="cpu", seed=0, ensemble=2, storage="float32")
        train_bundle(td, cfg, root / "bundle", name="tiny", units="eV", checkpoint_dir=root / "ckpt")
    return root / "bundle", td, saved


def test_bundle_roundtrip_identical(tiny_bundle):
    bundle, td, saved = tiny_bundle
    assert sorted(p.name for p in bundle.iterdir()) == [
        "README.md", "learning_curve.png", "manifest.json", "member-0.safetensors", "member-1.safetensors",
        "parity.png"]
    model = load_model(bundle)
    assert model.n_members == 2 and model.name == "tiny"
    # float32 storage: the loaded weights are bit-identical to what training produced
    for k, net in enumerate(model.nets):
        loaded = net.state_dict()
        assert set(loaded) == set(saved[k])
        for name, value in saved[k].items():
            assert torch.equal(loaded[name], value), name
    # and the folded inference engine predicts what the trained networks predict
    Z = torch.from_numpy(model.scaler.transform(td.X))
    expected = []
    for k in range(2):
        net = Net(td.X.shape[1], "64BARx2-32BARx1-1")
        net.load_state_dict(saved[k])
        net.eval()
        with torch.no_grad():
            expected.append(net(Z)[:, 0].double().numpy() * model.scaler.y_std + model.scaler.y_mean)
    expected = np.stack(expected)
    got = model.predict_members(td.X, precision="fp32")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # loading again gives exactly the same predictions
    np.testing.assert_array_equal(load_model(bundle).predict_members(td.X), got)
    # the manifest's validation metrics are those of the loaded model on the validation rows
    m = json.loads((bundle / "manifest.json").read_text())
    val_pred = got[:, td.val_idx].mean(0)
    assert m["metrics"]["validation"]["mae"] == pytest.approx(np.mean(np.abs(val_pred - td.y[td.val_idx])), rel=1e-6)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle[0], dst)
    return dst


def refused(bundle, *fragments):
    with pytest.raises(IrscreenError) as e:
        load_model(bundle)
    msg = str(e.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def test_tampered_member_refused(bundle_copy):
    path = bundle_copy / "member-1.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) - 10] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    refused(bundle_copy, "member-1.safetensors", "sha256")


def test_feature_labels_hash_mismatch_refused(bundle_copy):
    mpath = bundle_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["features"]["labels_sha256"] = "0" * 64
    mpath.write_text(json.dumps(m))
    refused(bundle_copy, "magpie", "hash")


def test_missing_member_refused(bundle_copy):
    (bundle_copy / "member-1.safetensors").unlink()
    refused(bundle_copy, "member-1.safetensors", "missing")


def test_extra_member_refused(bundle_copy):
    shutil.copy(bundle_copy / "member-0.safetensors", bundle_copy / "member-9.safetensors")
    refused(bundle_copy, "member-9.safetensors", "not listed")


def test_non_json_manifest_refused(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    refused(bundle_copy, "manifest.json", "JSON")


def test_not_a_bundle_and_unknown_name_refused(tmp_path):
    refused(tmp_path, "manifest.json")
    msg = refused("no-such-model", "no-such-model", "formation-enthalpy")
    assert "\n" not in msg


def test_member_not_fitting_architecture_refused(bundle_copy):
    mpath = bundle_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["architecture"] = "64BARx2-16BARx1-1"
    mpath.write_text(json.dumps(m))
    refused(bundle_copy, "member-0.safetensors", "architecture")


# --------------------------------------------------------------------------- manifest fields: calibration,
# element counts, element data


def _edit_manifest(bundle, edit):
    mpath = bundle / "manifest.json"
    m = json.loads(mpath.read_text())
    edit(m)
    mpath.write_text(json.dumps(m))


def test_new_bundle_records_calibration_elements_and_element_data(tiny_bundle):
    m = json.loads((tiny_bundle[0] / "manifest.json").read_text())
    cal = m["calibration"]
    assert cal["scale"] > 0 and cal["floor"] >= 0
    for key in ("validation_fitted", "validation_cross_fitted", "raw_spread"):
        assert 0 <= cal[key]["within_1_sigma"] <= cal[key]["within_2_sigma"] <= 1
    counts = m["elements"]["counts"]
    assert m["elements"]["min_count"] == 20
    train_formulas = [tiny_bundle[1].formulas[i] for i in tiny_bundle[1].train_idx]
    assert counts["Li"] == sum("Li" in f for f in train_formulas)
    from irscreen.features import PROBE_FORMULAS, element_data_fingerprint

    assert m["features"]["element_data"] == element_data_fingerprint()
    assert m["features"]["probe"]["formulas"] == list(PROBE_FORMULAS)


def test_calibration_is_applied_at_load(bundle_copy):
    X = irscreen.featurize(_few_formulas()).to_numpy(np.float32)
    raw = load_model(bundle_copy).predict_members(X)
    _edit_manifest(bundle_copy, lambda m: m.update(calibration={"scale": 3.0, "floor": 0.0}))
    model = load_model(bundle_copy)
    np.testing.assert_allclose(model.outputs(raw)["uncertainty"], 3.0 * raw.std(0), rtol=1e-6)
    _edit_manifest(bundle_copy, lambda m: m.update(calibration={"scale": 0.0, "floor": 0.25}))
    np.testing.assert_allclose(load_model(bundle_copy).uncertainty(raw), 0.25, rtol=1e-6)
    df = load_model(bundle_copy).predict(["NaCl", "Fe2O3"])
    np.testing.assert_allclose(df["uncertainty"], 0.25, rtol=1e-6)


def test_extrapolation_flag(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(elements={"counts": {"Fe": 25, "O": 30, "Cl": 19}, "min_count": 20}))
    df = load_model(bundle_copy).predict(["Fe2O3", "FeO", "FeCl3", "NaCl", "O2"])
    assert df["extrapolation"].tolist() == [False, False, True, True, False]


def test_bundle_without_the_newer_fields_still_loads(bundle_copy):
    def strip(m):
        for key in ("calibration", "elements"):
            m.pop(key, None)
        for key in ("element_data", "probe"):
            m["features"].pop(key, None)

    _edit_manifest(bundle_copy, strip)
    model = load_model(bundle_copy)
    X = irscreen.featurize(["NaCl", "Fe2O3", "Li3FeO4"]).to_numpy(np.float32)
    P = model.predict_members(X)
    out = model.outputs(P, np.array([[11, 17, 0], [26, 8, 0], [3, 26, 8]]))
    np.testing.assert_array_equal(out["uncertainty"], P.std(0))  # the raw spread
    assert not out["extrapolation"].any()


def test_other_element_data_warns_when_features_agree(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["features"]["element_data"].update(sha256="0" * 64, matminer="0.9.0"))
    with pytest.warns(IrscreenWarning, match=r"matminer 0\.9\.0.*installed: matminer"):
        load_model(bundle_copy)


def test_other_element_data_refused_when_features_differ(bundle_copy):
    def edit(m):
        m["features"]["element_data"]["sha256"] = "0" * 64
        m["features"]["probe"]["values"][0][10] *= 1.001  # one feature of Fe2O3, 1e-3 relative
    _edit_manifest(bundle_copy, edit)
    refused(bundle_copy, "other element data", "probe")


def test_output_min_clips_the_prediction_only(bundle_copy):
    X = irscreen.featurize(_few_formulas()).to_numpy(np.float32)
    P = load_model(bundle_copy).predict_members(X)
    bound = float(np.median(P.mean(0)))  # half the rows fall below it
    _edit_manifest(bundle_copy, lambda m: m.update(output_min=bound))
    out = load_model(bundle_copy).outputs(P, members=True)
    np.testing.assert_array_equal(out["prediction"], np.maximum(P.mean(0), np.float32(bound)))
    np.testing.assert_array_equal(out["member_0"], P[0])  # members are the raw networks


def test_a_shipped_bundle_still_in_training_is_listed_but_not_used(tiny_bundle, tmp_path, monkeypatch):
    import irscreen.models.bundle as bundle_mod

    root = tmp_path / "weights"
    shutil.copytree(tiny_bundle[0], root / "ready")
    shutil.copytree(tiny_bundle[0], root / "half-done")
    _edit_manifest(root / "half-done", lambda m: (m["hyperparameters"].update(ensemble=3), m["metrics"].clear()))
    monkeypatch.setattr(bundle_mod, "shipped_root", lambda: root)
    assert bundle_mod.shipped_names() == ["ready"]
    assert bundle_mod.shipped_in_training() == {"half-done": (2, 3)}
    assert load_model("ready").n_members == 2
    msg = refused("half-done", "still in training", "2 of 3", "--resume")
    assert "\n" not in msg


@pytest.mark.parametrize("name", [n for n in shipped_names() if n not in shipped_in_training()])
def test_every_shipped_bundle_reproduces_its_validation_mae(name, shared_data):
    """`irscreen evaluate` on the bundle's own validation split gives the manifest's numbers."""
    from irscreen.evaluate import evaluate_file
    from irscreen.recipes import get_recipe

    m = json.loads((shipped_root() / name / "manifest.json").read_text())
    res = evaluate_file(shared_data(get_recipe(name).data_file), name, "target", split="val", jobs=2)
    val = m["metrics"]["validation"]
    assert res["n"] == val["n"]
    assert res["mae"] == pytest.approx(val["mae"], rel=1e-6)
    assert [x["mae"] for x in res["members"]] == pytest.approx([x["mae"] for x in val["members"]], rel=1e-6)
