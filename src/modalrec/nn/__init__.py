"""Shared neural building blocks: propagation, losses, scoring helpers."""
