"""``poster serve``: a REST API and a browser page in front of a POSTER model.

``create_app(engine, config)`` (``poster.serve.app``) builds the FastAPI application;
``InferenceEngine`` (``poster.serve.engine``) turns image bytes into ``poster predict``'s records;
``MicroBatcher`` (``poster.serve.batcher``) gathers the faces of concurrent requests into one model
batch; ``ServeConfig`` (``poster.serve.config``) holds the settings.  The names load on first use,
so ``import poster`` stays light and the command line reads ``ServeConfig`` without torch or FastAPI.
"""

from ..lazy import lazy_exports

_EXPORTS = {**dict.fromkeys(("InferenceEngine", "InputRejected", "PredictOptions", "load_recognizer",
                             "model_display_name"), ".engine"),
            "create_app": ".app", "ServeConfig": ".config"}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
