"""Build the greeter plugin: copy the sources and stamp the version into them.

Set GREETER_BROKEN=1 to build a release whose health check fails (the demo's bad release).
"""

import argparse
import os
import shutil
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--version", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

src = Path(__file__).parent / "src"
out = Path(args.out)
text = (src / "plugin.py").read_text()
text = text.replace('VERSION = "0.0.0"', f'VERSION = "{args.version}"')
if os.environ.get("GREETER_BROKEN"):
    text = text.replace("HEALTHY = True", "HEALTHY = False")
(out / "plugin.py").write_text(text)
shutil.copy(src / "greetings.txt", out / "greetings.txt")
