"""`ielstudio.core` (and the headless CLI paths) must work where Qt cannot be imported."""

import subprocess
import sys
import textwrap


def test_core_imports_without_qt():
    code = textwrap.dedent(
        """
        import sys, importlib, pkgutil
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'shiboken6', 'pyqtgraph', 'qtpy'):
                    raise ImportError('Qt blocked for this test: ' + name)
                return None
        sys.meta_path.insert(0, Block())
        import ielstudio.core as core
        names = [m.name for m in pkgutil.walk_packages(core.__path__, 'ielstudio.core.')]
        for n in names:
            importlib.import_module(n)
        import ielstudio.cli
        loaded = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph')]
        assert not loaded, loaded
        print('modules', len(names))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 1
