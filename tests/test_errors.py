"""One module holds every exception class; library messages name parameters, the CLI names flags."""

from __future__ import annotations

import inspect

import pytest

import poster
from poster import errors
from poster.errors import ConfigError, PosterError, flag_wording, flag_words, option


def test_every_exception_class_of_the_package_lives_in_errors():
    import importlib
    import pkgutil
    import sys

    for found in pkgutil.walk_packages(poster.__path__, "poster."):  # every module, whatever ran before
        if not found.name.endswith("__main__"):
            importlib.import_module(found.name)

    defined_elsewhere = [f"{name}.{cls.__name__}" for name, module in list(sys.modules.items())
                         if name.startswith("poster") and module is not None
                         for cls in vars(module).values()
                         if inspect.isclass(cls) and issubclass(cls, BaseException)
                         and cls.__module__.startswith("poster") and cls.__module__ != "poster.errors"]
    assert defined_elsewhere == []


def test_config_error_is_a_poster_error_and_a_value_error():
    assert issubclass(ConfigError, PosterError) and issubclass(ConfigError, ValueError)
    assert issubclass(errors.RecipeError, ConfigError)
    assert poster.PosterError is PosterError


def test_option_names_the_parameter_in_python_and_the_flag_on_the_command_line():
    spelled = [option("skip_bad", True), option("device", "cpu"), option("resume"),
               option("class_map", "a=b", python="explicit={'a': 'b'}")]
    assert spelled == ["skip_bad=True", "device='cpu'", "resume", "explicit={'a': 'b'}"]
    assert not flag_words()
    with flag_wording():
        assert flag_words()
        assert [option("skip_bad", True), option("device", "cpu"), option("resume"),
                option("class_map", "a=b", python="explicit")] == ["--skip-bad", "--device cpu", "--resume",
                                                                   "--class-map a=b"]
    assert not flag_words()  # restored, also for the library calls that follow


def test_flag_wording_is_restored_after_an_error():
    with pytest.raises(PosterError), flag_wording():
        raise PosterError("boom")
    assert option("output_dir") == "output_dir"
