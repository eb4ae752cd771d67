"""``poster serve``: a REST API and a browser page in front of a POSTER model.

``create_app(engine, config)`` (``poster.serve.app``) builds the FastAPI application;
``InferenceEngine`` (``poster.serve.engine``) turns image bytes into ``poster predict``'s records;
``MicroBatcher`` (``poster.serve.batcher``) gathers the faces of concurrent requests into one model
batch.  FastAPI is imported only when the app is built, so ``import poster`` stays light.
"""

from .engine import InferenceEngine, InputRejected, PredictOptions, load_recognizer, model_display_name

__all__ = ["InferenceEngine", "InputRejected", "PredictOptions", "load_recognizer", "model_display_name",
           "create_app", "ServeConfig"]


def __getattr__(name: str):
    if name in ("create_app", "ServeConfig"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
