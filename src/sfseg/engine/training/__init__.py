"""Training: the shared training step and optimisers, source training, the pseudo-labelling pass and the
adaptation round loop. Builds on ``runtime``, ``evaluation`` and ``reporting``."""
