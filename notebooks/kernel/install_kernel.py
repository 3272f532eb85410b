"""Register the `rust` Jupyter kernel for transferlab in the project's virtual environment.

The kernel spec lives in .venv/share/jupyter/kernels/rust, so it never touches a user's own
kernels; the justfile recipes put that directory first on JUPYTER_PATH.

evcxr_jupyter rewrites the kernel spec it finds under JUPYTER_PATH whenever that spec's
version.txt differs from its own, which would drop our launcher. So evcxr installs its files
first (version.txt, logos, client code) and only kernel.json is replaced.

Usage: install_kernel.py VENV EVCXR_JUPYTER
"""
import json
import os
import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).resolve().parent
venv = pathlib.Path(sys.argv[1]).resolve()
evcxr = sys.argv[2]
data_dir = venv / "share" / "jupyter"
spec_dir = data_dir / "kernels" / "rust"
spec_dir.mkdir(parents=True, exist_ok=True)
subprocess.run([evcxr, "--install"], env=dict(os.environ, JUPYTER_PATH=str(data_dir)), check=True,
               stdout=subprocess.DEVNULL)
spec = {
    "argv": ["bash", str(here / "launch.sh"), "--control_file", "{connection_file}"],
    "display_name": "Rust (transferlab)",
    "language": "rust",
    "interrupt_mode": "message",
}
tmp = spec_dir / "kernel.json.tmp"
tmp.write_text(json.dumps(spec, indent=2))
tmp.replace(spec_dir / "kernel.json")
print(f"registered kernel 'rust' in {spec_dir}")
