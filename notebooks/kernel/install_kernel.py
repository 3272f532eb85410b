"""Register the `rust` Jupyter kernel for transferlab in the project's virtual environment.

The kernel spec lives in .venv/share/jupyter/kernels/rust, so it never touches a user's own
kernels; the justfile recipes put that directory first on JUPYTER_PATH.
"""
import json
import pathlib
import sys

here = pathlib.Path(__file__).resolve().parent
venv = pathlib.Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else here.parent.parent / ".venv"
spec_dir = venv / "share" / "jupyter" / "kernels" / "rust"
spec_dir.mkdir(parents=True, exist_ok=True)
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
