"""The recipes of the two training stages, in groups a two-stage run can pass on whole.

* ``data``: which images, at which size, through which input pipeline (``sfseg.data.config``);
* ``runtime``: where and how fast it runs (device, precision, workers, state saving) — never what it computes;
* ``method``: what adaptation computes (pseudo-labels, loss parts, teacher, mixing; ``sfseg.adapt.config``);
* ``schedule``: how long and how fast it learns (rounds, epochs, batch size, optimiser).

Plus the run's identity: ``name``, ``checkpoint``, ``out``, ``seed``, ``init_from`` and ``select``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sfseg.adapt.config import MethodConfig
from sfseg.config import MAX_BATCH, MAX_SEED, in_range, require
from sfseg.data.config import DataConfig
from sfseg.engine.runtime.config import RuntimeConfig
from sfseg.engine.training.optim import OptimConfig
from sfseg.errors import ConfigError
from sfseg.registry import MODELS, VALIDATORS
from sfseg.yaml_io import SHIPPED_CONFIGS


@dataclass
class ScheduleConfig:
    """How long and how fast the network learns.

    Attributes:
        rounds: self-training rounds (0 = no training: source-only or AdaBN).
        epochs_per_round: passes over the target train set per round.
        batch_size: training batch size per process (under ``torchrun`` the global batch is
            ``batch_size x processes``).
        optim: SGD settings (backbone lr; head at ``head_lr_mult`` x).
        lr_round_decay: the learning rate is divided by this after every round (reference: sqrt 2).
        max_weight_growth: stop the run (one clear error, the last good state kept) when the trainable
            weights' norm grows beyond this many times its start (0 disables); non-finite losses and
            weights always stop it.
        max_loss: also stop when a loss part exceeds this value (0 disables).
    """

    rounds: int = 3
    epochs_per_round: int = 2
    batch_size: int = 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, head_lr_mult=10.0))
    lr_round_decay: float = 2**0.5
    max_weight_growth: float = 100.0
    max_loss: float = 0.0

    def check(self) -> None:
        in_range(self.rounds, 0, 100, "rounds")
        in_range(self.epochs_per_round, 1, 1000, "epochs_per_round")
        in_range(self.batch_size, 1, MAX_BATCH, "batch_size")
        require(self.lr_round_decay > 0, "lr_round_decay", f"must be positive, got {self.lr_round_decay}")
        require(
            self.max_weight_growth >= 0, "max_weight_growth", f"must be >= 0, got {self.max_weight_growth}"
        )
        require(self.max_loss >= 0, "max_loss", f"must be >= 0, got {self.max_loss}")


@dataclass
class SelectConfig:
    """Label-free model selection (see ``sfseg.select``).

    Attributes:
        validator: a validator name; when set, the run scores every round's model with it and keeps the
            one it prefers as ``selected.pt`` (``final.pt`` stays the last round). Empty = off.
        max_images: images of the target train split the validator reads (evenly spaced; 0 = all).
    """

    validator: str = ""
    max_images: int = 0

    def check(self) -> None:
        in_range(self.max_images, 0, 10**7, "max_images")
        if self.validator:
            VALIDATORS.validate(self.validator, "validator")


@dataclass
class AdaptConfig:
    """Recipe for ``sfseg adapt``. Adaptation reads only the target domain and the source *model*.

    Attributes:
        name: the method's name, for reports and run directories.
        checkpoint: the source model: an sfseg checkpoint or a community DeepLab-v2 file (imported).
        checkpoint_family: for a community file whose keys fit several families (see
            ``sfseg.models.foreign``).
        out: run directory (config, metrics.jsonl, pseudo-labels, checkpoints, resumable state).
        seed: seeds sampling, crops, flips, complementary ranks and ClassMix.
        init_from: a recipe name (e.g. ``ld``, or ``gta5_to_cityscapes/ld`` outside ToyCity) to run first
            into ``<out>/<name>`` with this run's ``checkpoint``, ``seed``, ``data`` and ``runtime``
            (its method and schedule are its own); this run starts from its final checkpoint:
            LDBE = LD, then BE. ``sfseg bench`` reuses the same seed's run of that recipe when it is in
            the method list.
        data, runtime, method, schedule, select: the groups above.
    """

    name: str = "ld"
    checkpoint: str = "runs/source/source.pt"
    checkpoint_family: str = ""
    out: str = "runs/adapt"
    seed: int = 0
    init_from: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    select: SelectConfig = field(default_factory=SelectConfig)

    def check(self) -> None:
        require(bool(self.out.strip()), "out", "is empty; give a run directory (e.g. out=runs/ld)")
        require(bool(self.checkpoint), "checkpoint", "is empty; give the source model's checkpoint")
        in_range(self.seed, 0, MAX_SEED, "seed")
        # alpha + r * alpha_step above 1 is not an error: the round's alpha is capped at 1 and the round
        # log says so (``alpha_capped``).


@dataclass
class SourceScheduleConfig:
    """Attributes:
    epochs: passes over the training split.
    batch_size: batch size per process.
    optim: optimiser settings; ``nominal_steps`` 0 means "the whole run".
    """

    epochs: int = 30
    batch_size: int = 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, head_lr_mult=1.0))

    def check(self) -> None:
        in_range(self.epochs, 1, 10000, "epochs")
        in_range(self.batch_size, 1, MAX_BATCH, "batch_size")


def _source_data() -> DataConfig:
    return DataConfig(train_split="source_train", val_split="source_val")


@dataclass
class SourceConfig:
    """Recipe for ``sfseg train-source`` (stage 0: supervised training on the labelled source domain).

    Attributes:
        out: where to write the checkpoint (a file).
        seed: seeds initialisation, sampling, crops and flips.
        arch, arch_kwargs: registered architecture and its options (ignored when ``init`` is given).
        init: a checkpoint to start from (sfseg or another project's; a file without a head gets a new
            one).
        init_family: its format when its keys are ambiguous.
        data: the labelled images (ToyCity default: ``source_train``, scored on ``source_val``; the
            oracle trains on the target's ``train``), with ``input_size`` for the val evaluation and
            ``augment`` for the training crops.
        runtime, schedule: as for ``sfseg adapt``.
    """

    out: str = "runs/source/source.pt"
    seed: int = 0
    arch: str = "deeplab_small"
    arch_kwargs: dict = field(default_factory=dict)
    init: str = ""
    init_family: str = ""
    data: DataConfig = field(default_factory=_source_data)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    schedule: SourceScheduleConfig = field(default_factory=SourceScheduleConfig)

    def check(self) -> None:
        require(bool(self.out.strip()), "out", "is empty; give the checkpoint's file path")
        in_range(self.seed, 0, MAX_SEED, "seed")
        if not self.init:
            MODELS.validate(self.arch, "arch")


# The shipped recipes, and loading one by name.
CONFIGS_ROOT = SHIPPED_CONFIGS
PACKAGE_CONFIGS = CONFIGS_ROOT / "toycity"


def config_dir(path: str | Path | None) -> Path:
    """The recipe directory: ``path`` when given (it must exist: never a silent fallback to other
    recipes), else the shipped ``configs/toycity``."""
    if path:
        if not Path(path).is_dir():
            raise ConfigError(f"recipe directory not found: {path} (--configs names a directory of recipes)")
        return Path(path)
    if not PACKAGE_CONFIGS.is_dir():
        raise ConfigError(f"the shipped recipes are missing ({PACKAGE_CONFIGS}); reinstall sfseg")
    return PACKAGE_CONFIGS


def recipe_path(name: str, recipes: str | Path | None = None) -> Path:
    """The YAML file of recipe ``name``; a clear error listing the available recipes if absent.

    ``name`` is a recipe of ``recipes`` (default ``configs/toycity``), or ``<benchmark>/<recipe>`` for
    another directory of ``configs/`` (e.g. ``gta5_to_cityscapes/ld``).
    """
    if "/" in name:
        d, name = CONFIGS_ROOT / name.rsplit("/", 1)[0], name.rsplit("/", 1)[1]
    else:
        d = config_dir(recipes)
    path = d / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in d.glob("*.yaml"))
        raise ConfigError(f"no recipe {path}; recipes available: {known}")
    return path
