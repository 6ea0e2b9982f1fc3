"""How a run runs: processes and devices (torchrun), run directories and their logs, data loading, and the
divergence guard. Imports nothing from the other engine packages."""
