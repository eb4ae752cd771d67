"""The package's import weight: ``import poster`` and ``import poster.models`` stay light (no
OpenCV, no face stack); the public names load what they need on first use."""

import subprocess
import sys

import pytest

_HEAVY = ("cv2", "poster.face", "poster.inference.recognizer")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import poster", "import poster.models", "import poster.meta",
                                       "import poster.inference.runtime"])
def test_light_imports_load_no_opencv_nor_face_stack(statement):
    loaded = _loaded_after(statement)
    assert not {m for m in loaded if m.split(".")[0] == "cv2" or m.startswith(_HEAVY[1:])}


def test_public_names_load_on_first_use():
    loaded = _loaded_after("import poster; poster.Recognizer; poster.create_model")
    assert "cv2" in loaded and "poster.inference.recognizer" in loaded
    import poster

    assert set(poster.__all__) <= set(dir(poster))
    with pytest.raises(AttributeError):
        poster.no_such_name  # noqa: B018
