"""The architecture contracts of pyproject.toml ([tool.importlinter]), run with import-linter."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(LINT is None, reason="import-linter is in the dev extra (make test installs it)")
def test_the_contracts_hold():
    out = lint()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 3 kept, 0 broken." in out.stdout


@pytest.mark.skipif(LINT is None, reason="import-linter is in the dev extra (make test installs it)")
def test_a_broken_contract_is_reported(tmp_path):
    """The checker catches what it is meant to: the window module does import Qt."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["ielstudio"]\ninclude_external_packages = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "window without Qt"\ntype = "forbidden"\n'
        'source_modules = ["ielstudio.gui.main_window"]\nforbidden_modules = ["PySide6"]\n')
    out = lint("--config", str(config))
    assert out.returncode == 1 and "0 kept, 1 broken" in out.stdout


def test_no_gui_module_grows_past_about_400_lines():
    """One concept per window module (issue 16): a module past this is split, not grown."""
    from pathlib import Path

    import ielstudio.gui

    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines())
             for p in Path(ielstudio.gui.__file__).parent.glob("*.py")}
    assert sizes and max(sizes.values()) <= 420, {n: s for n, s in sizes.items() if s > 420}
