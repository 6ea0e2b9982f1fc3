"""Constants every layer shares."""

IGNORE_INDEX = 255
"""Label value meaning "no label" everywhere in sfseg (ground truth and pseudo-labels)."""

VERSION = "0.1.0"
"""sfseg's version (``sfseg.__version__``), recorded in every checkpoint it writes."""
