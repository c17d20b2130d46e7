"""Steering: the refusal-vector plan every steered forward goes through, the refusal judges, and the retry of a steered
reply that still refuses."""
