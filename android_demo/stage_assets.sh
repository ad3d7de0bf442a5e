#!/bin/sh
# Stage the exported style net (ONNX Runtime and ExecuTorch files), the committed style adapters and a photo
# into the app's assets (git-ignored: they are build outputs of this script).
# Run from the repository root with the project's venv set up (README.md):  sh android_demo/stage_assets.sh
set -eu
py=${PYTHON:-.venv/bin/python}
assets=${SHIRA_ASSETS:-android_demo/app/src/main/assets}  # override for tests
rm -rf "$assets" && mkdir -p "$assets/base" "$assets/styles"
"$py" - "$assets" <<'PY'
import sys
from pathlib import Path
from shira_demos.web_demo import default_image, prepare_base, styles_dir
from PIL import Image
import numpy as np, shutil

assets = Path(sys.argv[1])
base = prepare_base(Path(".shira-cache"))
for f in ("manifest.json", "model.onnx", "model_prepacked.onnx", "weights.safetensors", "model.pte"):  # both engines; the bake
    shutil.copy(base / f, assets / "base" / f)
for f in styles_dir().glob("*.shira"):
    shutil.copy(f, assets / "styles" / f.name)
img = (default_image()[0].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
Image.fromarray(img).save(assets / "photo.png")
print("staged", sorted(str(p.relative_to(assets)) for p in assets.rglob("*") if p.is_file()))
PY
