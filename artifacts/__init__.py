"""Calibrated artifacts shipped for the default model (installed as scans_guard.shipped_artifacts)."""
