"""``poster serve``: a REST API and a browser page in front of a POSTER model.

``create_app(engine, config)`` (``poster.serve.app``) builds the FastAPI application;
``InferenceEngine`` (``poster.serve.engine``) turns image bytes into ``poster predict``'s records;
``MicroBatcher`` (``poster.serve.batcher``) gathers the faces of concurrent requests into one model
batch; ``ServeConfig`` (``poster.serve.config``) holds the settings.  The names load on first use,
so ``import poster`` stays light and the command line reads ``ServeConfig`` without torch or FastAPI.
"""

import importlib as _importlib

_EXPORTS = {**dict.fromkeys(("InferenceEngine", "InputRejected", "PredictOptions", "load_recognizer",
                             "model_display_name"), ".engine"),
            "create_app": ".app", "ServeConfig": ".config"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poster.serve' has no attribute {name!r}")
    return getattr(_importlib.import_module(module, __name__), name)
