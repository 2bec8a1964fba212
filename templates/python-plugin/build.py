"""Build the plugin: copy src/ into the bundle directory and stamp the version.

`hotrelease build` runs this (see [build] commands in hotrelease.toml) with --version and
--out; everything written to --out becomes the bundle. Keep it deterministic: same sources,
same bytes (hotrelease pins every mtime, owner and mode of the bundle itself).
"""

import argparse
import shutil
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--version", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

src = Path(__file__).parent / "src"
out = Path(args.out)
for path in sorted(src.rglob("*")):
    if path.is_dir() or "__pycache__" in path.parts:
        continue
    target = out / path.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "plugin.py":
        text = path.read_text()
        target.write_text(text.replace('VERSION = "0.0.0"', f'VERSION = "{args.version}"'))
    else:
        shutil.copyfile(path, target)
