"""Many runs at once: shipped recipes, job pools, ``sfseg bench``, the ToyCity calibration, the demo and
label-free selection over finished runs. The top engine layer."""
