"""Geometry: RELION's Euler convention, rotations on SO(3), volume transforms, wedge masks."""
