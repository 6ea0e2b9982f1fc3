"""The ``sfseg`` command line: ``sfseg <command> --help`` for each; the parser is in
:mod:`sfseg.cli.parser`, the commands in :mod:`sfseg.cli.commands`.

sfseg demo
sfseg recipes
sfseg adapt --config toycity/ld checkpoint=model.pt data.dataset=folder data.root=my_images
sfseg predict --checkpoint runs/ld/selected.pt --dataset folder --data my_images --out predictions
sfseg export runs/ld/final.pt --out ld.onnx
sfseg train-source --config toycity/source [key=value ...]
sfseg eval --checkpoint ld.pt --dataset cityscapes --data /data/cityscapes --input-size 1024 512
sfseg import-checkpoint GTA5_source.pth gta5_source.pt [--family crst] [--classes cityscapes19]
sfseg bench toycity --methods source_only adabn ld --seeds 0 1 2
"""

from __future__ import annotations

import sys

import torch

from sfseg.cli.parser import build_parser
from sfseg.config import ConfigError
from sfseg.errors import SfsegError

__all__ = ["build_parser", "main"]


def _threads() -> None:
    """Intra-op threads: the user's ``OMP_NUM_THREADS`` when set (PyTorch reads it), else the available
    cores shared among the processes ``torchrun`` starts on this machine (PyTorch's own default counts
    every core of the machine, and oversubscribes shared machines)."""
    import os

    from sfseg.engine.runtime.distributed import local_world_size

    local = local_world_size()  # validates the torchrun variables first, with one line naming a bad one
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise ConfigError(
                f"environment variable OMP_NUM_THREADS is {explicit!r}; it must be an integer >= 1"
            )
        torch.set_num_threads(int(explicit))
        return
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _threads()
        from sfseg.plugins import load_plugins

        load_plugins()
        args.func(args)
    except SfsegError as e:
        # The user's input is wrong: one line (plus any listing the message carries), no traceback.
        print(f"sfseg: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from sfseg.fileio import ENVIRONMENT_ERRNOS

        if e.errno not in ENVIRONMENT_ERRNOS:
            raise  # not the environment's doing: a bug, with its traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"sfseg: error: {where}{ENVIRONMENT_ERRNOS[e.errno]} ({e.strerror})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sfseg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
