"""Volumes on one reference grid: loading, geometry checks, resampling, normalisation."""
