"""sfseg: source-free domain adaptation for semantic segmentation (LD/LDBE and baselines).

The Python API (see :mod:`sfseg.api`)::

    import sfseg

    model = sfseg.load_model("runs/ld/final.pt")      # any checkpoint sfseg reads
    labels = model.predict(image)                      # PIL image, (H, W, 3) uint8 array or tensor
    run = sfseg.run_adaptation(
        "toycity/ld", ["checkpoint=source.pt", "data.dataset=folder", "data.root=images"]
    )
"""

from sfseg.constants import IGNORE_INDEX, VERSION

__version__ = VERSION

_API = {"DEMO_CHECKPOINT", "Model", "Run", "export_model", "load_model", "run_adaptation", "train_source"}

__all__ = ["IGNORE_INDEX", *sorted(_API)]


def __getattr__(name: str):
    # The API is imported on first use, so that `import sfseg` (and every submodule) stays light.
    if name in _API or name == "api":
        import sfseg.api as api

        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'sfseg' has no attribute {name!r}")
