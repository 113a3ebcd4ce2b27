"""The command as a person first runs it: ``kvl --help`` (without loading the engine) and ``kvl doctor``."""

from __future__ import annotations

import json
import subprocess
import sys


def test_help_does_not_load_the_engine():
    code = ("import sys; from kvl_cli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'llama_cpp' not in sys.modules and 'cv2' not in sys.modules, 'heavy import'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "caption" in r.stdout and "130 interrupted" in " ".join(r.stdout.split())


def test_doctor_json(kvl):
    r = kvl("doctor", "--json")
    rep = json.loads(r.out)
    assert rep["llama_cpp_python"] and rep["backend"] in ("CPU", "CUDA", "Metal", "Vulkan", "GPU")
    assert rep["physical_cores"] >= 1
    assert "amx" in rep and "AVX2" in rep["cpu_features"] or sys.platform == "darwin"
    assert "no model installed" in rep["model"]["error"]
