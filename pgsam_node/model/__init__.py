"""PG-SAM model: modules, presets, checkpoints, training, evaluation and synthetic data."""
