"""Synthetic data: the multi-sequence phantom, its DICOM writer and the tiny test PACS."""
