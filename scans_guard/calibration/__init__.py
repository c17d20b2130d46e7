"""Calibration: refusal vectors, d_harm, safety-critical layers and thresholds, fitted once and written as an artifact
(and the artifact format itself)."""
