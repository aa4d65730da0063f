"""The house rules that a refactor could quietly break: one entry point, no import loop, SQL in the store only."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE_TRAINER = """
import runpy, sys
sys.argv = ["core.train", "--help"]
try:
    runpy.run_module("core.train", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
import pkgutil, importlib, core
for m in pkgutil.iter_modules(core.__path__):
    importlib.import_module(f"core.{m.name}")
copies = {id(m.__dict__["StopRequested"]) for name, m in list(sys.modules.items())
          if (name.startswith("core") or name == "__main__") and "StopRequested" in getattr(m, "__dict__", {})}
print("copies", len(copies))
"""


def test_python_m_core_train_loads_the_loop_once():
    """`python -m core.train` is the command users type; the loop module must not run as __main__ and
    again as core.train (two Trainer and StopRequested classes in one process)."""
    out = subprocess.run([sys.executable, "-c", ONE_TRAINER], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "copies 1" in out.stdout, out.stdout
    assert "usage: python -m core.train" in out.stdout


def test_every_core_module_imports_on_its_own():
    """Each module imports in a fresh interpreter (an import loop shows up as a partially initialised module)."""
    names = sorted(p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__") + ["train"]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module('core.' + n)\n"
    for name in names:
        out = subprocess.run([sys.executable, "-c", code, name], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"core.{name}: {out.stderr[-500:]}"


def test_no_sql_outside_the_run_store():
    offenders = []
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")]:
        if path == ROOT / "core" / "runs.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bsqlalchemy\b|\.engine\b|\bsa\.", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
