"""Scoring against known truth: map-to-truth alignment, correlation, FSC, pose errors."""
