"""Experiments: benchmark tables with significance tests, ablations and sensitivity sweeps."""
