"""Weight files: round trips, official formats, backbones, and loud failures."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

import poster
from poster.checkpoint.checked import remap_ir50_for_v2
from golden_fill import fill_state_dict, load_manifest

MANIFEST_MODELS = {
    "poster_v1_rafdb_small_7cls": ("poster_v1_small", {}),
    "poster_v1_rafdb_base_7cls": ("poster_v1_base", {}),
    "poster_v1_rafdb_large_7cls": ("poster_v1_large", {}),
    "poster_v1_affectnet_large_7cls": ("poster_v1_large", {"token_mixing": False}),
    "poster_v1_affectnet_large_8cls": ("poster_v1_large", {"num_classes": 8, "token_mixing": False}),
    "poster_v2_7cls": ("poster_v2", {}),
    "poster_v2_8cls": ("poster_v2", {"num_classes": 8}),
}


@pytest.fixture(scope="module")
def small_v1():
    torch.manual_seed(0)
    return poster.create_model("poster_v1_small", num_classes=7).eval()


@pytest.mark.parametrize("manifest", list(MANIFEST_MODELS))
def test_official_export_has_exactly_the_manifest_keys(manifest, tmp_path):
    arch, options = MANIFEST_MODELS[manifest]
    model = poster.create_model(arch, **options)
    flavor = "v1" if arch.startswith("poster_v1") else "v2"
    path = poster.export_official(tmp_path / "official.pth", model, flavor)
    obj = torch.load(path, weights_only=True)
    sd = obj["model_state_dict" if flavor == "v1" else "state_dict"]
    entries = load_manifest(manifest)["entries"]
    assert list(sd) == [f"module.{e['key']}" for e in entries]
    for e in entries:
        assert list(sd[f"module.{e['key']}"].shape) == e["shape"], e["key"]
    # ...and the file loads back, with the architecture inferred from its keys alone.
    back = poster.load_model(path)
    assert back.meta.arch == arch
    assert back.meta.num_classes == options.get("num_classes", 7)


def test_our_checkpoint_round_trip_is_bit_identical(small_v1, tmp_path):
    meta = poster.ModelMeta(arch="poster_v1_small", num_classes=7, class_names=list("abcdefg"),
                            input=poster.InputConfig(channel_order="BGR", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)),
                            arch_options={"token_mixing": True}, source="unit test", dataset="custom")
    path = poster.save_checkpoint(tmp_path / "m.pth", small_v1, meta, epoch=3)
    back = poster.load_model(path)
    assert back.meta == meta
    for (k, a), (k2, b) in zip(small_v1.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(back(x), small_v1(x))
    # Saving again gives the same bytes: nothing random or time-dependent is written.
    path2 = poster.save_checkpoint(tmp_path / "m2.pth", back, meta, epoch=3)
    assert hashlib.sha256(path.read_bytes()).digest() != b""  # sanity
    sd1 = torch.load(path, weights_only=True)["state_dict"]
    sd2 = torch.load(path2, weights_only=True)["state_dict"]
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_plain_state_dict_with_and_without_module_prefix(small_v1, tmp_path):
    sd = small_v1.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "prefixed.pth")
    for name in ("plain.pth", "prefixed.pth"):
        model = poster.load_model(tmp_path / name)
        assert model.meta.arch == "poster_v1_small"
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), sd.values()))


def test_wrong_architecture_lists_mismatched_keys(tmp_path):
    large = poster.create_model("poster_v1_large", num_classes=7)
    sd = large.state_dict()
    # Remove the token-mixing layer of one block only: keys no longer fit any release.
    del sd["pyramid_fuse.blocks.3.block_l.conv.weight"]
    sd["pyramid_fuse.blocks.0.block_m.norm1.weight"] = torch.ones(3)
    sd["extra.thing"] = torch.zeros(1)
    torch.save({"iter": 1, "model_state_dict": sd, "optimizer_state_dict": {}}, tmp_path / "bad.pth")
    with pytest.raises(poster.CheckpointError) as err:
        poster.load_model(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "bad.pth" in msg
    assert "pyramid_fuse.blocks.3.block_l.conv.weight" in msg
    assert "extra.thing" in msg
    assert "pyramid_fuse.blocks.0.block_m.norm1.weight (3,) vs model (256,)" in msg


def test_class_count_mismatch_between_metadata_and_weights(small_v1, tmp_path):
    meta = poster.ModelMeta(arch="poster_v1_small", num_classes=8, class_names=list("abcdefgh"),
                            arch_options={"token_mixing": True})
    path = poster.save_checkpoint(tmp_path / "m.pth", small_v1, meta)
    with pytest.raises(poster.CheckpointError, match="8 classes but the classifier weights have 7 rows"):
        poster.load_model(path)


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "optimizer_state_dict": Payload()}, path)
    with pytest.raises(poster.CheckpointError) as err:
        poster.load_model(path)
    assert "evil.pth" in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_missing_file_and_unknown_name(tmp_path, monkeypatch):
    with pytest.raises(poster.CheckpointError, match="no such file"):
        poster.load_model("/nonexistent/rafdb_best.pth")
    monkeypatch.setenv("POSTER_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("POSTER_OFFLINE", "1")  # a release not present is fetched on first use otherwise
    monkeypatch.chdir(tmp_path)
    with pytest.raises(poster.CheckpointError, match="poster_v1_large.rafdb: not in .* offline"):
        poster.load_model("poster_v1_large.rafdb")


def test_v2_optimizer_only_best_file_is_explained(tmp_path):
    torch.save({"state_dict": {"state": {}, "param_groups": [{"lr": 1.0}]}}, tmp_path / "model_best.pth")
    with pytest.raises(poster.CheckpointError, match="optimizer"):
        poster.load_model(tmp_path / "model_best.pth")


def test_backbone_files_load_into_fresh_models(tmp_path):
    v1 = poster.create_model("poster_v1_small")
    # A face.evoLVe-style IR-50: the 3-stage entries plus a 4th stage POSTER drops.
    ir = fill_state_dict(load_manifest("ir50_backbone_3stage"), seed=5)
    ir["body.21.res_layer.1.weight"] = torch.zeros(512, 256, 3, 3)
    torch.save(ir, tmp_path / "ir50.pth")
    mfn = fill_state_dict(load_manifest("mobilefacenet_136"), seed=6)
    torch.save({"state_dict": mfn}, tmp_path / "mobilefacenet_model_best.pth.tar")

    report = poster.load_backbone_weights(v1, ir50=tmp_path / "ir50.pth",
                                          landmark=tmp_path / "mobilefacenet_model_best.pth.tar")
    assert report["ir50"] == {"loaded": 304, "dropped": ["body.21.res_layer.1.weight"]}
    assert report["landmark"] == {"loaded": 333}
    assert torch.equal(v1.ir_back.state_dict()["body.20.res_layer.3.weight"], ir["body.20.res_layer.3.weight"])
    assert torch.equal(v1.face_landback.state_dict()["conv_6_sep.conv.weight"], mfn["conv_6_sep.conv.weight"])

    v2 = poster.create_model("poster_v2")
    report = poster.load_backbone_weights(v2, ir50=tmp_path / "ir50.pth")
    assert report["ir50"]["loaded"] == 304  # body.N renamed to body1/2/3, nothing silently lost
    assert torch.equal(v2.ir_back.body3[13].res_layer[3].weight, ir["body.20.res_layer.3.weight"])
    assert torch.equal(v2.ir_back.body2[0].shortcut_layer[0].weight, ir["body.3.shortcut_layer.0.weight"])


def test_landmark_file_is_not_a_model(tmp_path):
    torch.save({"state_dict": fill_state_dict(load_manifest("mobilefacenet_136"), 1)}, tmp_path / "mfn.pth.tar")
    with pytest.raises(poster.CheckpointError, match="landmark"):
        poster.load_model(tmp_path / "mfn.pth.tar")


def test_real_landmark_weights_load(shared_dir):
    """The rebuilt official-format MobileFaceNet file in ../shared loads strictly."""
    model = poster.create_model("poster_v2")
    report = poster.load_backbone_weights(
        model, landmark=shared_dir / "weights" / "mobilefacenet_landmark68_from_openvino.pth.tar")
    assert report["landmark"]["loaded"] == 333


def test_remap_ir50_names():
    names = remap_ir50_for_v2({"body.0.a": 0, "body.2.a": 0, "body.3.a": 0, "body.6.a": 0, "body.7.a": 0,
                               "body.20.a": 0, "input_layer.0.weight": 0})
    assert sorted(names) == sorted(["body1.0.a", "body1.2.a", "body2.0.a", "body2.3.a", "body3.0.a",
                                    "body3.13.a", "input_layer.0.weight"])


def test_gpu_saved_file_loads_on_cpu(small_v1, tmp_path, monkeypatch):
    """A checkpoint whose tensors are tagged 'cuda:0' (as on the authors' machines) loads here."""
    sd = small_v1.state_dict()
    original = torch.serialization.location_tag
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"iter": 1, "model_state_dict": sd, "optimizer_state_dict": {}}, tmp_path / "gpu.pth")
    monkeypatch.setattr(torch.serialization, "location_tag", original)
    model = poster.load_model(tmp_path / "gpu.pth")
    assert next(model.parameters()).device.type == "cpu"
