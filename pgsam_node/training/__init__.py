"""Training: train, evaluate, metrics and the training data sources."""
