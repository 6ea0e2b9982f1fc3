"""sfseg: source-free domain adaptation for semantic segmentation (LD/LDBE and baselines)."""

__version__ = "0.1.0"

IGNORE_INDEX = 255
"""Label value meaning "no label" everywhere in sfseg (ground truth and pseudo-labels)."""
