"""Shared runtime of both stages: model resolution, the hub probe, inference backends, device and RuntimeConfig."""
