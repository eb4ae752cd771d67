"""Evaluation: a model over a dataset (``evaluate``), its scores (``metrics``) and figures (``plots``)."""
