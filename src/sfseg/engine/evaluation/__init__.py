"""Seeing a model through the one inference path: evaluation, metrics, prediction export and the
label-free validators. Builds on ``runtime``."""
