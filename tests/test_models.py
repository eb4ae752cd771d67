"""Every registered architecture, checked the same way: a new ``@register_model`` builder is
covered by these tests without editing them."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

import poster
from poster.errors import ConfigError
from poster.models import create_model, get_arch, list_models, register_model

ARCHS = list_models()


def test_registry_lists_the_known_architectures():
    assert ARCHS == ["poster_v1_base", "poster_v1_large", "poster_v1_small", "poster_v1_tiny", "poster_v2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_builder_is_named_typed_and_documented(arch):
    spec = get_arch(arch)
    assert spec.builder.__name__ == arch
    assert spec.description and "\n" not in spec.description
    params = inspect.signature(spec.builder).parameters
    assert spec.options == tuple(params) and "num_classes" in spec.options
    assert all(p.annotation is not p.empty and p.default is not p.empty for p in params.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_model_gives_one_finite_logit_row_per_image(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=8).eval()
    assert model.num_classes == 8
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 8) and torch.isfinite(logits).all()


def _changed(value):
    """A value of the same type as an option's default, but another one."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return round(value + 0.05, 6)  # rates stay below 1
    if isinstance(value, tuple):
        return tuple(_changed(v) for v in value)
    raise AssertionError(f"no other value made for {value!r}: extend _changed")


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip_rebuilds_the_same_architecture_with_its_options(arch, tmp_path):
    """Every option set away from its default survives save_checkpoint -> load_model, given as the
    JSON metadata holds it (``--set arch_options.drop_path_rates=0,0.1,0.2`` writes a list)."""
    options = {name: _changed(v) for name, v in get_arch(arch).defaults.items() if name != "num_classes"}
    as_saved = json.loads(json.dumps(options))
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, **options).eval()
    assert str(model) != str(create_model(arch, num_classes=5)), "the changed options are not visible"
    meta = poster.ModelMeta(arch=arch, num_classes=5, class_names=list("abcde"), arch_options=as_saved,
                            source="unit test")
    back = poster.load_model(poster.save_checkpoint(tmp_path / "m.pth", model, meta))
    assert back.meta.arch == arch and back.meta.arch_options == as_saved and type(back) is type(model)
    assert str(back) == str(model)  # the module tree and every layer's settings (drop-path rates)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


@pytest.mark.parametrize("value,words", [
    ([0.1, 0.2], "must have 3 values"), ("0.1", "is not a list"), ([0.0, "a", 0.2], "is not a float"),
    ([0.0, True, 0.2], "is not a float"), ([0.0, float("nan"), 0.2], "is not a float"),
])
def test_option_types_come_from_the_signature(value, words):
    with pytest.raises(ConfigError, match=words):
        get_arch("poster_v2").checked_option("drop_path_rates", value)
    assert get_arch("poster_v2").checked_option("drop_path_rates", [0, 0.1, 0.2]) == (0.0, 0.1, 0.2)
    with pytest.raises(ConfigError, match=r"drop_path_rates must be in \[0, 1\)"):
        create_model("poster_v2", drop_path_rates=[0.0, 0.1, 1.0])


def test_every_family_recognises_its_own_weights_and_no_other():
    """A fresh state dict is named by its family's record (or refused by it, for a size without
    official weights), never by another family's; every family recognises some architecture."""
    recognised = set()
    for arch in ARCHS:
        family = get_arch(arch).family
        sd = create_model(arch, num_classes=3).state_dict()
        assert family.head_key in sd and sd[family.head_key].shape[0] == 3
        assert [f.match_state_dict(sd) for f in poster.models.list_families() if f is not family] == [None] * (
            len(poster.models.list_families()) - 1)
        try:
            found = family.match_state_dict(sd)
        except ConfigError:
            continue
        assert found[0] == arch and found[1]["num_classes"] == 3
        recognised.add(family.name)
    assert recognised == {f.name for f in poster.models.list_families()}


def test_builder_options_come_from_the_signature():
    assert get_arch("poster_v1_tiny").defaults == {"num_classes": 7, "token_mixing": False, "drop_path_rate": 0.0}
    assert get_arch("poster_v2").options == ("num_classes", "drop_path_rates")


def test_undocumented_or_untyped_builders_are_refused_at_registration():
    def undocumented(num_classes: int = 7):
        return torch.nn.Identity()

    def untyped(num_classes=7):
        """Has a docstring."""
        return torch.nn.Identity()

    def orphan(num_classes: int = 7) -> torch.nn.Identity:
        """Returns a class of no registered family."""
        return torch.nn.Identity()

    def mistyped(num_classes: int = 7, rate: float = "0.1") -> poster.models.PosterV1:
        """Its default is not of its own type."""
        return poster.models.PosterV1()

    for builder in (undocumented, untyped, orphan, mistyped):
        with pytest.raises(TypeError):
            register_model(builder)
    assert not {"undocumented", "untyped", "orphan", "mistyped"} & set(list_models())
