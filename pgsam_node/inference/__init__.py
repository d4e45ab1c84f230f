"""Inference: the one predictor loaded from a model folder, its preprocessing and post-processing."""
