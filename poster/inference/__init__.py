"""Inference: from pictures, videos and exported files to per-face expressions.

One job per module:

* ``recognizer``: ``Recognizer`` (detect, align, preprocess, batch, run a backend) and
  ``Recognizer.from_checkpoint``;
* ``results``: ``FaceResult`` / ``ImageResult``, what a prediction returns;
* ``prefetch``: decoding and detection in a background thread;
* ``tracking``: faces followed across video frames, probabilities smoothed;
* ``video``: reading frames (files, webcams, streams), writing annotated videos, ``VideoPrediction``;
* ``drawing``: ``annotate`` (boxes and probability panels);
* ``batch``: many inputs -> a results file and annotated copies (what ``poster predict`` runs);
* ``runtime``: backends (PyTorch, ONNX Runtime, TorchScript); ``export``: writing ONNX / TorchScript;
* ``accelerate``: BN folding, bf16, channels-last, compile, CUDA graphs.

Nothing is imported here: ``import poster.inference.runtime`` does not load OpenCV.
"""
