from __future__ import annotations

import dataclasses

import pytest

from poster.errors import PosterError
from poster.train.augment import AugmentConfig
from poster.train.recipes import (RECIPES, RUN_DEFAULTS, Recipe, RecipeError, RunDefaults, get_recipe, list_recipes,
                                  run_defaults)


def test_registry_names():
    names = set(list_recipes())
    assert {"v1_rafdb", "v1_affectnet7", "v1_affectnet8", "v2_rafdb", "v2_affectnet7", "v2_affectnet8",
            "v2_caers", "fer2013", "ferplus", "folder", "fer2013_small"} <= names
    assert all(RECIPES[n].name == n for n in names)
    with pytest.raises(RecipeError, match="v1_rafdb"):
        get_recipe("nope")


def test_v1_rafdb_matches_spec():
    r = get_recipe("v1_rafdb")
    assert (r.arch, r.arch_options, r.channel_order, r.dataset) == ("poster_v1_large", {"token_mixing": True}, "BGR", "rafdb")
    assert (r.lr, r.lr_gamma, r.batch_size, r.epochs, r.seed) == (4e-5, 0.98, 200, 300, 123)
    assert run_defaults("v1_rafdb") == RunDefaults(workers=2, eval_batch_size=32)
    assert (r.loss, r.flip_or_noise, r.hflip_p, r.erasing_p, r.erasing_scale, r.erasing_ratio, r.sampler) == (
        "ce+2lsce", True, 0.5, 0.5, (0.02, 0.1), (0.3, 3.3), "shuffle")
    assert (r.optimizer, r.betas, r.eps, r.weight_decay, r.sam_rho, r.sam_adaptive) == ("adam", (0.9, 0.999), 1e-8, 0.0, 0.05, False)
    assert r.input_config().channel_order == "BGR"


@pytest.mark.parametrize("name", ["v1_affectnet7", "v1_affectnet8"])
def test_v1_affectnet(name):
    r = get_recipe(name)
    assert (r.arch_options, r.channel_order, r.lr, r.sampler, r.loss, r.flip_or_noise, r.batch_size) == (
        {"token_mixing": False}, "RGB", 2e-6, "balanced", "ce+2lsce", True, 200)


@pytest.mark.parametrize(
    "name, lr, p, scale, sampler",
    [
        ("v2_rafdb", 3.5e-5, 0.5, (0.02, 0.1), "shuffle"),
        ("v2_affectnet7", 1e-6, 1.0, (0.05, 0.05), "balanced"),
        ("v2_affectnet8", 1e-6, 1.0, (0.05, 0.05), "balanced"),
        ("v2_caers", 4e-5, 1.0, (0.05, 0.05), "shuffle"),
    ],
)
def test_v2_presets(name, lr, p, scale, sampler):
    r = get_recipe(name)
    assert (r.arch, r.channel_order, r.loss, r.flip_or_noise, r.batch_size, r.epochs) == (
        "poster_v2", "RGB", "ce", False, 144, 200)
    assert run_defaults(name) == RunDefaults(workers=4, eval_batch_size=144)
    assert (r.lr, r.erasing_p, r.erasing_scale, r.sampler, r.hflip_p) == (lr, p, scale, sampler, 0.5)


def test_frozen_and_copies():
    r = get_recipe("v1_rafdb")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lr = 1.0  # type: ignore[misc]
    r.arch_options["token_mixing"] = False  # a copy: the registry is untouched
    assert RECIPES["v1_rafdb"].arch_options["token_mixing"] is True


def test_cli_overrides_are_parsed_and_type_checked():
    r = get_recipe("v1_rafdb").with_overrides(
        ["lr=1e-4", "epochs=5", "flip_or_noise=false", "erasing_scale=0.01,0.2", "betas=(0.8, 0.99)",
         "arch_options.token_mixing=False", "channel_order=RGB", "sampler=balanced"]
    )
    assert (r.lr, r.epochs, r.flip_or_noise, r.erasing_scale, r.betas) == (1e-4, 5, False, (0.01, 0.2), (0.8, 0.99))
    assert r.arch_options == {"token_mixing": False} and r.channel_order == "RGB" and r.sampler == "balanced"
    assert isinstance(r.lr, float) and isinstance(r.epochs, int)
    assert get_recipe("v2_rafdb", ["batch_size=8"]).batch_size == 8
    assert get_recipe("v2_rafdb", {"batch_size": 8, "lr": 1}).lr == 1.0  # ints accepted for floats

    bad = [
        ["epochs=2.5"], ["lr=fast"], ["flip_or_noise=maybe"], ["erasing_scale=0.1"], ["nosuchfield=1"],
        ["loss=focal"], ["channel_order=GBR"], ["erasing_p=1.5"], ["erasing_scale=0.2,0.1"], ["lr"],
        ["batch_size=0"], ["arch_options=[1, 2]"],
    ]
    for items in bad:
        with pytest.raises(RecipeError):
            get_recipe("v1_rafdb", items)
    with pytest.raises(PosterError):  # RecipeError is a user-facing error for the CLI
        get_recipe("v1_rafdb").replace(epochs=True)


def test_replace_typed_and_dict_round_trip():
    r = get_recipe("v2_affectnet7").replace(lr=2e-6, arch_options={"num_classes": 7})
    assert r.lr == 2e-6 and r.arch_options == {"num_classes": 7} and r.name == "v2_affectnet7"
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(RecipeError):
        Recipe.from_dict({**r.to_dict(), "bogus": 1})


def test_augment_config_from_recipe():
    cfg = AugmentConfig.from_recipe(get_recipe("v1_rafdb"))
    assert (cfg.flip_or_noise, cfg.hflip_p, cfg.erasing_p, cfg.erasing_scale, cfg.channel_order) == (
        True, 0.5, 0.5, (0.02, 0.1), "BGR")
    cfg = AugmentConfig.from_recipe(get_recipe("v2_caers"))
    assert (cfg.flip_or_noise, cfg.erasing_p, cfg.erasing_scale, cfg.channel_order) == (False, 1.0, (0.05, 0.05), "RGB")


def test_run_knobs_are_not_recipe_fields_but_old_recipes_still_read():
    assert set(RUN_DEFAULTS) == set(RECIPES)
    for knob, option in (("workers", "workers"), ("val_batch_size", "eval_batch_size")):
        with pytest.raises(RecipeError, match=f"{knob} is a run option.*TrainOptions.{option}"):
            get_recipe("fer2013_small", [f"{knob}=8"])
    saved = {**get_recipe("v1_rafdb").to_dict(), "workers": 2, "val_batch_size": 32}  # a checkpoint's recipe
    assert Recipe.from_dict(saved) == get_recipe("v1_rafdb")
    assert run_defaults("not registered") == RunDefaults()


def test_train_flags_take_their_defaults_from_train_options():
    """Every ``poster train`` flag that sets a TrainOptions field defaults to that field's default."""
    from poster.cli import build_parser
    from poster.train.options import TrainOptions

    args = build_parser().parse_args(["train"])
    inverted = {"progress": "no_progress"}  # --no-progress stores the negation
    checked = 0
    for f in dataclasses.fields(TrainOptions):
        dest = inverted.get(f.name, f.name)
        if f.default is dataclasses.MISSING or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        assert (not value if dest in inverted.values() else value) == f.default, f.name
        checked += 1
    assert checked >= 20
