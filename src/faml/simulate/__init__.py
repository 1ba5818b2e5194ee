"""Simulated subtomograms with known truth (fast mode: 3D wedge and noise)."""
