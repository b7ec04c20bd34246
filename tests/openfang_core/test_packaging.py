"""The wheel carries every subpackage under the one import root and its console scripts work."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = [
    "openfang.supervisor",
    "openfang.control",
    "openfang.workers",
    "openfang.workers.sandbox",
    "openfang.workers.llm",
    "openfang.workers.tools",
    "openfang.workers.host",
    "openfang.protocol",
    "openfang.memory",
    "openfang.security",
    "openfang.cli",
]


def test_package_list_names_every_package_folder() -> None:
    """Every folder with an __init__.py under a mapped directory is listed in pyproject's packages."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    for name, folder in cfg["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            dotted = ".".join([name, *rel.parts]) if rel.parts else name
            assert dotted in listed, f"{dotted} ({init.parent}) is missing from [tool.setuptools] packages"


def test_root_folder_links_every_mapped_subpackage_to_its_folder() -> None:
    """openfang/<name> is a link to the folder package-dir maps openfang.<name> to, so tools see one tree."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        if name == "openfang":
            continue
        link = ROOT / "openfang" / name.removeprefix("openfang.")
        assert link.is_symlink(), f"{link} should link to ../{folder} (package-dir maps {name} there)"
        assert link.resolve() == (ROOT / folder).resolve(), f"{link} points to {link.resolve()}, not {folder}"
    linked = {p.name for p in (ROOT / "openfang").iterdir() if p.is_symlink()}
    mapped = {n.removeprefix("openfang.") for n in mapping if n != "openfang"}
    assert linked == mapped, f"links without a package-dir entry: {sorted(linked - mapped)}"


def test_repo_root_on_sys_path_imports_the_whole_package() -> None:
    """python -m from the checkout (repo root first on sys.path) finds every subpackage, not a shadow."""
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in SUBPACKAGES)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_wheel_installs_in_fresh_venv_and_imports_every_subpackage(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Build the wheel, install it (no deps) into a fresh venv that borrows our deps, import everything."""
    if not (ROOT / "build").exists():  # setuptools builds in the checkout: leave it as it was found
        request.addfinalizer(lambda: shutil.rmtree(ROOT / "build", ignore_errors=True))
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("openfang-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Dependencies come from the project venv; the package itself only from the wheel.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)], check=True
    )
    code = "import importlib, openfang\n" + "".join(f"importlib.import_module({m!r})\n" for m in SUBPACKAGES)
    code += "print(openfang.__file__)\n"
    out = subprocess.run([py, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.strip().startswith(site), f"openfang imported from {out.strip()}, not from the wheel"
    for script in ("openfang-supervisor", "openfang"):
        helped = subprocess.run(
            [
                py,
                "-c",
                f"import sys; from importlib.metadata import entry_points; "
                f"ep = next(e for e in entry_points(group='console_scripts') if e.name == {script!r}); "
                f"sys.argv = [{script!r}, '--help']; ep.load()()",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert helped.returncode == 0, helped.stderr
        assert "usage:" in helped.stdout
    assert (Path(site) / "openfang" / "data" / "cluster.toml").is_file()
    for page in ("index.html", "app.js", "style.css"):  # the dashboard is served from the package
        assert (Path(site) / "openfang" / "control" / "http" / "static" / page).is_file(), page
