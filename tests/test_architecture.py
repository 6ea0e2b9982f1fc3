"""The house rules of the architecture: a new backbone is one file plus its registration, a new method is
added in adapt/ alone (per-step state included, resumed exactly), every consumer sees a model through the
inference it was scored with, and no module imports from a layer above its own."""

from __future__ import annotations

import ast
import json
import signal
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from sfseg.cli.main import main
from sfseg.models import Checkpoint, load_checkpoint
from sfseg.models.base import SegmentationModel
from sfseg.models.checkpoint import CheckpointFormatError
from sfseg.models.foreign import Importer
from sfseg.models.registry import ModelHooks
from sfseg.registry import IMPORTERS, MODELS
from tests.conftest import REPO, adapt_args, sfseg_cli, source_args

SRC = REPO / "src" / "sfseg"


class Throwaway(SegmentationModel):
    """Two convolutions and a 1x1 head: the smallest network that honours the contract."""

    def __init__(self, num_classes: int, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward_with_features(self, x):
        features = self.body(x)
        return self.head(features), features

    def head_parameters(self):
        return list(self.head.parameters())


def _convert(sd, family, protocol, where):
    """'Another project' stores the same weights under ``net.``."""
    from sfseg.data.classes import TOYCITY
    from sfseg.data.normalization import Normalization
    from sfseg.models.registry import create_model

    model = create_model("throwaway", TOYCITY.num_classes, width=4)
    model.load_state_dict({k.removeprefix("net."): v for k, v in sd.items()})
    return Checkpoint.of(
        model,
        TOYCITY.names,
        Normalization(),
        provenance={
            "family": family,
            "unused_keys": [],
            "predicting_head": "head",
            "filled_num_batches_tracked": 0,
        },
    )


@pytest.fixture
def throwaway():
    """A backbone registered by the test itself (its entry function, hooks and an importer), removed after."""

    def throwaway(num_classes: int, width: int = 4) -> nn.Module:
        return Throwaway(num_classes, width)

    hooks = ModelHooks(classes_key="head.weight", signature_keys=("body.0.weight", "head.weight"))
    MODELS.register("throwaway", throwaway, hooks=hooks)
    IMPORTERS.register(
        "throwaway_project",
        Importer(
            families={"throwaway_project": "the throwaway project's files"},
            detect=lambda sd: "throwaway_project" if "net.head.weight" in sd else None,
            convert=_convert,
        ),
    )
    yield
    MODELS.remove("throwaway")
    IMPORTERS.remove("throwaway_project")


def test_a_new_backbone_is_one_registration(throwaway, tiny_toycity, tmp_path, capsys):
    src, run = tmp_path / "src.pt", tmp_path / "ld"
    assert main(source_args(tiny_toycity, src, "arch=throwaway", "arch_kwargs={width: 4}", "epochs=2")) == 0
    assert load_checkpoint(src).arch == "throwaway"
    tiny = ["rounds=1", "epochs_per_round=1", "batch_size=4", "select.validator=snd"]
    assert main(adapt_args(tiny_toycity, src, run, "ld", *tiny)) == 0
    summary = json.loads((run / "summary.json").read_text())
    js = tmp_path / "eval.json"
    assert (
        main(["eval", "--checkpoint", str(run / "final.pt"), "--data", str(tiny_toycity), "--json", str(js)])
        == 0
    )
    assert json.loads(js.read_text())["miou"] == pytest.approx(summary["final"]["miou"], abs=1e-6)
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "final.pt"),
                "--data",
                str(tiny_toycity),
                "--out",
                str(tmp_path / "pred"),
                "--format",
                "trainid",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "pred").rglob("*.png"))) == 4
    assert main(["select", str(run), "--all"]) == 0  # SND reads the contract's features
    # Import: the registered importer converts the other project's file; a bare state dict is explained.
    sd = load_checkpoint(src).state_dict
    torch.save({f"net.{k}": v for k, v in sd.items()}, tmp_path / "theirs.pth")
    assert main(["import-checkpoint", str(tmp_path / "theirs.pth"), str(tmp_path / "ours.pt")]) == 0
    assert load_checkpoint(tmp_path / "ours.pt").arch == "throwaway"
    torch.save(sd, tmp_path / "bare.pth")
    with pytest.raises(CheckpointFormatError, match="bare state dict of sfseg's throwaway"):
        from sfseg.models.foreign import import_checkpoint

        import_checkpoint(tmp_path / "bare.pth")


def test_the_contract_is_enforced(tmp_path):
    from sfseg.models.registry import create_model

    @MODELS.register(hooks=ModelHooks())
    def not_a_segmentation_model(num_classes: int) -> nn.Module:
        return nn.Conv2d(3, num_classes, 1)

    try:
        with pytest.raises(TypeError, match="SegmentationModel"):
            create_model("not_a_segmentation_model", 3)
    finally:
        MODELS.remove("not_a_segmentation_model")


PLUGIN = '''
"""A method with per-step state, added beside the built-in ones: LD that also keeps the running mean of
its positive loss (reported as a loss part, so a resume that lost the state shows in the metrics)."""
from sfseg.adapt.method import SelfTraining
from sfseg.registry import METHODS


@METHODS.register("running_mean_ld")
class RunningMeanLD(SelfTraining):
    def __init__(self, cfg, num_classes, rounds):
        super().__init__(cfg, num_classes, rounds)
        self.mean, self.count = 0.0, 0

    def loss(self, forward, x, pseudo, generator, step):
        loss, values = super().loss(forward, x, pseudo, generator, step)
        self.count += 1
        self.mean += (values["positive"] - self.mean) / self.count
        return loss, {**values, "running_mean": self.mean}

    def state_dict(self):
        return {**super().state_dict(), "mean": self.mean, "count": self.count}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.mean, self.count = float(state["mean"]), int(state["count"])
'''


class _FrozenStatsLD:
    """A method with its own BatchNorm policy (statistics frozen at the source model's in every phase),
    written as a plugin would be: the engine is not touched."""

    @staticmethod
    def make():
        from sfseg.adapt.method import SelfTraining

        class FrozenStatsLD(SelfTraining):
            phases: list[str] = []

            def set_mode(self, model, phase):
                model.train(phase == "train")
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
                FrozenStatsLD.phases.append(phase)

        return FrozenStatsLD


def test_a_method_with_its_own_batchnorm_policy_runs_without_touching_the_engine(
    tiny_toycity, tiny_source, tmp_path
):
    from sfseg.api import run_adaptation
    from sfseg.registry import METHODS

    method = _FrozenStatsLD.make()
    METHODS.register("frozen_stats_ld", method)
    try:
        run = run_adaptation(
            "toycity/ld",
            [f"data.root={tiny_toycity}", f"checkpoint={tiny_source}", f"out={tmp_path / 'run'}",
             "method.kind=frozen_stats_ld", "rounds=1", "epochs_per_round=1", "batch_size=2"],
            progress=False,
        )  # fmt: skip
    finally:
        METHODS.remove("frozen_stats_ld")
    assert {"label", "train"} <= set(method.phases)
    source, final = load_checkpoint(tiny_source).state_dict, load_checkpoint(run.path / "final.pt").state_dict
    stats = [k for k in source if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(source[k], final[k]) for k in stats)  # the policy held throughout
    assert any(not torch.equal(source[k], final[k]) for k in source if k.endswith("weight"))  # it trained


def test_the_engine_reads_no_method_policy():
    """The round loop asks the Method (prepare, set_mode, labeller_for, collapse_warning); it never reads
    the recipe's method section itself, except to build the Method."""
    uses = []
    for path in (SRC / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "method"
                and isinstance(node.value, ast.Attribute)
            ):
                uses.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node)}")
            elif (
                isinstance(node, ast.Attribute) and node.attr == "method" and ast.unparse(node.value) == "cfg"
            ):
                uses.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node)}")
    allowed = {"engine/training/run.py"}  # build_method(cfg.method, ...) only
    assert all(u.split(":")[0] in allowed for u in uses), uses
    run_py = (SRC / "engine/training/run.py").read_text()
    assert run_py.count("cfg.method") == 1 and "build_method(cfg.method" in run_py


def test_no_file_over_400_lines_and_no_function_over_80():
    """Exceptions would be named in docs/architecture.md; today there are none."""
    long_files, long_functions = [], []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 400:
            long_files.append(str(path.relative_to(SRC)))
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno >= 80
            ):
                long_functions.append(f"{path.relative_to(SRC)}:{node.name}")
    assert not long_files and not long_functions, (long_files, long_functions)


@pytest.mark.slow
def test_a_new_method_with_per_step_state_resumes_exactly(tiny_toycity, tiny_source, tmp_path):
    (tmp_path / "my_methods.py").write_text(textwrap.dedent(PLUGIN))
    env = {"SFSEG_PLUGINS": "my_methods", "PYTHONPATH": str(tmp_path)}

    def args(out):
        recipe = [
            "--config",
            "configs/toycity/ld.yaml",
            f"data.root={tiny_toycity}",
            f"checkpoint={tiny_source}",
        ]
        schedule = ["rounds=2", "epochs_per_round=2", "batch_size=2", "save_every=3", "amp=false"]
        return ["adapt", *recipe, f"out={out}", "name=rmld", "method.kind=running_mean_ld", *schedule]

    ref = sfseg_cli(*args(tmp_path / "ref"), env=env)
    assert ref.returncode == 0, ref.stderr
    killed = sfseg_cli(*args(tmp_path / "run"), env={**env, "SFSEG_FAULT_KILL": "rmld:step:5"})
    assert killed.returncode == -signal.SIGKILL
    resumed = sfseg_cli("adapt", "--resume", str(tmp_path / "run"), env=env)
    assert resumed.returncode == 0, resumed.stderr

    def trains(run):
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if r["phase"] == "train"]

    got, want = trains(tmp_path / "run"), trains(tmp_path / "ref")
    assert [r["loss_running_mean"] for r in got] == [r["loss_running_mean"] for r in want]
    a, b = load_checkpoint(tmp_path / "run" / "final.pt"), load_checkpoint(tmp_path / "ref" / "final.pt")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    # Without the plugin the recipe names a method this installation does not have: one clear error.
    res = sfseg_cli(*args(tmp_path / "x"))
    assert res.returncode == 2 and "unknown method 'running_mean_ld'" in res.stderr


@pytest.mark.slow
def test_eval_of_a_refcode_run_reproduces_its_reported_score(tmp_path):
    """sfseg eval of final.pt uses the inference the run used (PIL resizing, align_corners, two-step
    upsampling, its input size and memory layout), with no pipeline flags."""
    from sfseg.data.classes import CITYSCAPES19
    from sfseg.data.fake_trees import write_cityscapes
    from sfseg.data.normalization import Normalization
    from sfseg.models.registry import create_model

    write_cityscapes(tmp_path / "cs", per_split=3, size=(128, 64))
    torch.manual_seed(0)
    Checkpoint.of(create_model("deeplab_small", 19, width=8), CITYSCAPES19.names, Normalization()).save(
        tmp_path / "src.pt"
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "adapt",
                "--config",
                "configs/gta5_to_cityscapes/ld_refcode.yaml",
                f"data.root={tmp_path / 'cs'}",
                f"checkpoint={tmp_path / 'src.pt'}",
                f"out={run}",
                "input_size=[96, 48]",
                "augment.short_side=48",
                "augment.crop=40",
                "num_workers=0",
                "rounds=1",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    settings = load_checkpoint(run / "final.pt").inference
    assert settings.resize == "pil" and settings.align_corners and settings.upsample == "two_step"
    assert settings.input_size == (96, 48) and not settings.channels_last
    js = tmp_path / "eval.json"
    common = [
        "--checkpoint",
        str(run / "final.pt"),
        "--dataset",
        "cityscapes",
        "--data",
        str(tmp_path / "cs"),
    ]
    assert main(["eval", *common, "--json", str(js)]) == 0
    assert json.loads(js.read_text())["miou"] == pytest.approx(summary["final"]["miou"], abs=1e-6)
    # A pipeline flag still overrides the stored inference.
    assert main(["eval", *common, "--json", str(js), "--resize", "torch", "--upsample", "direct"]) == 0
    assert json.loads(js.read_text())["inference"]["resize"] == "torch"


# Layers, lowest first. A module may import from its own layer and the ones below, never from above.
LAYERS = [
    {
        "sfseg.constants",
        "sfseg.errors",
        "sfseg.config",
        "sfseg.registry",
        "sfseg.fileio",
        "sfseg.plugins",
        "sfseg.yaml_io",
    },
    {"sfseg.data"},
    {"sfseg.models"},
    {"sfseg.adapt"},
    {"sfseg.engine.runtime"},
    {"sfseg.engine.evaluation"},
    {"sfseg.engine.reporting"},
    {"sfseg.engine.training"},
    {"sfseg.engine.experiments"},
    {"sfseg.api"},
    {"sfseg.cli"},
    {"sfseg"},  # the package's front door: re-exports the API (imported lazily), imported by nothing
]


def _layer(module: str) -> int:
    """The layer of a module: the one of its longest matching package."""
    return max(
        (len(n), i)
        for i, names in enumerate(LAYERS)
        for n in names
        if module == n or module.startswith(n + ".")
    )[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every sfseg module ``path`` imports, at module level or inside a function (``from a.b import c``
    counts as importing ``a.b.c`` when that is a module, else ``a.b``)."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sfseg"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("sfseg")]
    return out


def _module(path: Path) -> str:
    return ("sfseg." + ".".join(path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def test_no_import_runs_up_a_layer():
    wrong = []
    for module, path in sorted(MODULES.items()):
        own = _layer(module)
        for line, imported in _imports(path):
            if _layer(imported) > own:
                wrong.append(f"{module} (line {line}) imports {imported}")
    assert not wrong, "\n".join(wrong)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the sfseg modules it imports, counting imports inside functions, and the packages a
    module's import runs (importing ``sfseg.a.b`` from outside runs ``sfseg/a/__init__.py`` first)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for _, imported in _imports(path):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            parts = imported.split(".")
            for i in range(2, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in modules and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_no_import_circles_counting_imports_inside_functions():
    circles = import_circles(import_graph(MODULES))
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle_made_through_a_function():
    """The check above sees a circle closed by an import inside a function: the kind the former registries
    made (a registry importing, on first lookup, the modules that import it back)."""
    graph = import_graph(MODULES)
    graph["sfseg.registry"] = graph["sfseg.registry"] | {"sfseg.adapt.parts"}
    assert any({"sfseg.adapt.parts", "sfseg.registry"} <= set(c) for c in import_circles(graph))
