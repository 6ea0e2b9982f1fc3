"""sfseg as an installed package: a wheel built from the repository holds every recipe, and, installed
without ``-e`` into a fresh environment, finds them by name from an unrelated directory."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            out,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("sfseg-*.whl")
    return path


def test_the_wheel_holds_every_recipe_and_the_demo_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(
        p.relative_to(REPO) for p in (REPO / "configs").rglob("*") if p.suffix in (".yaml", ".md")
    )
    assert len(recipes) > 100
    missing = [str(p) for p in recipes if f"sfseg/{p}" not in names]
    assert not missing, missing
    assert "sfseg/assets/demo_source.pt" in names and "sfseg/py.typed" in names


def test_the_installed_wheel_runs_recipes_by_name_from_anywhere(wheel, tmp_path):
    # A fresh environment with the wheel installed (not editable); its dependencies are this test
    # environment's (a .pth line), so that the test needs no network.
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True)
    py = env_dir / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([py, "-c", where], text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel], check=True
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = """
import sfseg, sfseg.yaml_io as y
from pathlib import Path
from sfseg.config import load_config
from sfseg.engine.training.recipe import AdaptConfig, SourceConfig
assert "site-packages" in sfseg.__file__, sfseg.__file__
names = y.shipped_recipes()
for n in names:
    errors = []
    for kind in (AdaptConfig, SourceConfig):  # an adaptation recipe, or a source (oracle) one
        try:
            load_config(kind, n)
            break
        except Exception as e:
            errors.append(str(e))
    else:
        raise SystemExit(f"{n}: {errors}")
import sfseg.api
print(len(names), sfseg.api.DEMO_CHECKPOINT)
"""
    done = subprocess.run([py, "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    count, demo = done.stdout.split()
    assert int(count) > 90 and "site-packages" in demo
    cli = env_dir / "bin" / "sfseg"
    gen = [cli, "toycity", "generate", "--small", "--quiet", "--variant", "small_objects", "--out", "world"]
    subprocess.run(gen, cwd=work, env=env, check=True, capture_output=True)
    adapt = [cli, "adapt", "--config", "toycity/ld", f"checkpoint={demo}",
             "data.root=world", "out=run", "rounds=1", "epochs_per_round=1"]  # fmt: skip
    done = subprocess.run(adapt, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "run" / "final.pt").is_file() and "run directory: run" in done.stdout
