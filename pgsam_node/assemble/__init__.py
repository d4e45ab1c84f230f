"""Assemble: study stability, sequence classification (T1 / T2 / T1C roles) and readiness."""
