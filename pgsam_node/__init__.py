"""PG-SAM Node: a DICOM clinical node running report-guided multi-sequence SAM on MR studies."""

__version__ = "0.1.0"
