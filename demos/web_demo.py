"""`shira demo --serve`: the style-swapping demo as a local web page, on the real runtime.

The style net is exported once (cached), each runtime loads it ONCE, and every button press is an in-place
switch or fusion of the committed style adapters (models/styles/*.shira) followed by one inference. The page
shows the styled image, the switch time and the inference time measured here, around the runtime calls.
Loopback only: the server binds 127.0.0.1 and serves nothing but this page and its JSON API.
"""
from __future__ import annotations

import base64
import io
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

BACKENDS = ("onnxruntime", "executorch")
SIZE = 256  # the demo's image size (both runtimes take it: the style net's .pte keeps dynamic H/W)
MAX_UPLOAD = 20 << 20


def styles_dir() -> Path:
    import shira_models

    return Path(shira_models.__file__).parent / "styles"


def prepare_base(cache: Path, log=print) -> Path:
    """Export the built-in style net once into `cache`; reuse it while the weights are the same."""
    from shira_format import manifest as manifest_format
    from shira_format.errors import ManifestError
    from shira_toolchain.export import base_fingerprint, export_model
    from shira_toolchain.model_source import resolve

    subject = resolve("style-net")
    base = cache / "style-net"
    try:  # reuse only an export this runtime reads, of these weights
        if manifest_format.load(base).base_fingerprint == base_fingerprint(subject.model):
            return base
    except ManifestError:
        pass
    log(f"exporting the style net once into {base} (ONNX + ExecuTorch)...")
    export_model(subject, base, log=log)
    return base


def to_png(img: np.ndarray) -> str:
    """[1, 3, H, W] floats in [0, 1] -> a PNG data URL."""
    from PIL import Image

    arr = (np.clip(img[0].transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load_image(data: bytes, source: str = "upload") -> np.ndarray:
    """Any image PIL reads -> centre crop, resize to SIZE x SIZE, [1, 3, SIZE, SIZE] in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError(f"{source}: the file is empty")
    if len(data) > MAX_UPLOAD:
        raise ValueError(f"{source}: {len(data):,} bytes is over the {MAX_UPLOAD >> 20} MB limit")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{source}: not an image this demo can read (PNG, JPEG, GIF, BMP, WebP): "
                         f"{type(e).__name__}") from None
    return _square_input(im.convert("RGB"))


def _square_input(im) -> np.ndarray:
    """A PIL RGB image -> centre square crop, resized to SIZE x SIZE, [1, 3, SIZE, SIZE] floats in [0, 1]."""
    from PIL import Image

    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((SIZE, SIZE), Image.BICUBIC)
    return (np.asarray(im, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def default_image() -> np.ndarray:
    """The held-out photo (scikit-learn's flower.jpg), which no adapter was trained on."""
    from PIL import Image
    from shira_toolchain.train.photos import HELD_OUT, photo

    return _square_input(Image.fromarray((photo(HELD_OUT).numpy().transpose(1, 2, 0) * 255).astype(np.uint8)))


class Demo:
    """The two runtimes, each with the base loaded once and every style loaded, plus the current photo."""

    def __init__(self, base_dir: Path, threads: int | None = None):
        from shira_runtime import ShiraSession

        self.styles = sorted(p.stem for p in styles_dir().glob("*.shira"))
        self.sessions = {}
        for b in BACKENDS:
            s = ShiraSession(base_dir, backend=b, threads=threads)
            for name in self.styles:
                s.load(styles_dir() / f"{name}.shira", name=name)
            self.sessions[b] = s
        self.image = default_image()
        self.lock = threading.Lock()

    def apply(self, backend: str, action: dict) -> dict:
        if backend not in self.sessions:
            raise ValueError(f"unknown runtime {backend!r}; choose one of {', '.join(BACKENDS)}")
        s = self.sessions[backend]
        kind = action.get("kind")
        if kind == "base":
            scales = {}
        elif kind == "style":
            if action.get("style") not in self.styles:
                raise ValueError(f"unknown style {action.get('style')!r}")
            scales = {action["style"]: 1.0}
        elif kind == "mix":
            a, b, t = action.get("a"), action.get("b"), float(action.get("t", 0.5))
            if a not in self.styles or b not in self.styles or a == b or not 0 <= t <= 1:
                raise ValueError("a mix needs two different styles and a weight between 0 and 1")
            scales = {a: 1.0 - t, b: t}
        else:
            raise ValueError(f"unknown action {kind!r}")
        with self.lock:
            t0 = time.perf_counter()
            s.fuse(scales)
            t1 = time.perf_counter()
            # two-phase sessions: run once the prepacked engine holds these weights (ms later), so the page
            # shows steady-state inference and the same state always gives the same pixels
            s.wait_full_speed(5.0)
            t2 = time.perf_counter()
            out = next(iter(s.run({"image": self.image}).values()))
            t3 = time.perf_counter()
        return {"image": to_png(out), "switch_ms": (t1 - t0) * 1e3, "full_speed_ms": (t2 - t0) * 1e3,
                "inference_ms": (t3 - t2) * 1e3, "runtime": backend, "engine": s.mode, "scales": scales}


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>SHiRA style swap</title>
<style>
 body{font-family:system-ui,sans-serif;margin:24px;max-width:900px} img{width:256px;height:256px;image-rendering:auto;border:1px solid #ccc}
 button{margin:3px;padding:6px 12px} #status{margin-top:8px;font-family:monospace} .err{color:#b00}
 .row{display:flex;gap:24px;align-items:flex-start} fieldset{margin:8px 0}
</style></head><body>
<h1>SHiRA: swap image styles in place</h1>
<p>The style net is loaded once per runtime; each button writes a sparse adapter (about 2% of the weights)
into the loaded weights and runs the model once. Times are measured by the runtime on this machine.</p>
<div class="row">
 <div><div>photo</div><img id="photo" alt="input photo"></div>
 <div><div>output</div><img id="output" alt="styled output"></div>
</div>
<fieldset><legend>runtime</legend>
 <label><input type="radio" name="rt" value="onnxruntime" checked> ONNX Runtime</label>
 <label><input type="radio" name="rt" value="executorch"> ExecuTorch (XNNPACK)</label>
</fieldset>
<fieldset><legend>styles</legend><div id="styles"><button id="btn-base" data-kind="base">base (no adapter)</button></div></fieldset>
<fieldset><legend>fuse two styles</legend>
 <select id="mix-a"></select> <input id="mix-t" type="range" min="0" max="1" step="0.05" value="0.5"> <select id="mix-b"></select>
 <button id="btn-mix">mix</button> <span id="mix-label">50%</span>
</fieldset>
<fieldset><legend>your own photo</legend><input id="upload" type="file" accept="image/*"></fieldset>
<div id="status">loading...</div>
<script>
const $ = (id) => document.getElementById(id);
const rt = () => document.querySelector('input[name=rt]:checked').value;
function show(r) {
  if (r.error) { $('status').textContent = r.error; $('status').className = 'err'; return; }
  $('output').src = r.image;
  $('status').className = '';
  const full = r.engine === 'two-phase' ? ` (prepacked engine ready after ${r.full_speed_ms.toFixed(1)} ms)` : '';
  $('status').textContent = `${r.runtime} (${r.engine}): switch ${r.switch_ms.toFixed(2)} ms${full}, inference ${r.inference_ms.toFixed(1)} ms`;
  document.body.dataset.state = JSON.stringify(r.scales);
  document.body.dataset.results = (+document.body.dataset.results || 0) + 1;  // tests wait on this
}
async function post(url, body, type) {
  const res = await fetch(url, {method: 'POST', body, headers: {'Content-Type': type}});
  return res.json();
}
let latest = 0;  // only the newest request may update the page: a slow, older answer must not overwrite it
async function act(action) {
  const mine = ++latest;
  const r = await post('/api/apply', JSON.stringify({backend: rt(), action}), 'application/json');
  if (mine === latest) show(r);
}
async function init() {
  const info = await (await fetch('/api/info')).json();
  $('photo').src = info.photo;
  for (const s of info.styles) {
    const b = document.createElement('button'); b.textContent = s; b.id = 'btn-' + s;
    b.onclick = () => act({kind: 'style', style: s}); $('styles').appendChild(b);
    for (const sel of [$('mix-a'), $('mix-b')]) { const o = document.createElement('option'); o.value = o.textContent = s; sel.appendChild(o); }
  }
  $('mix-b').selectedIndex = Math.min(1, info.styles.length - 1);
  $('btn-base').onclick = () => act({kind: 'base'});
  $('btn-mix').onclick = () => act({kind: 'mix', a: $('mix-a').value, b: $('mix-b').value, t: parseFloat($('mix-t').value)});
  $('mix-t').oninput = () => { $('mix-label').textContent = Math.round($('mix-t').value * 100) + '%'; };
  $('upload').onchange = async () => {
    const f = $('upload').files[0]; if (!f) return;
    const mine = ++latest;
    const r = await post('/api/upload', await f.arrayBuffer(), 'application/octet-stream');
    if (mine !== latest) return;
    if (r.error) { show(r); return; }
    $('photo').src = r.photo; await act({kind: 'base'});
  };
  await act({kind: 'base'});
}
init();
</script></body></html>
"""


def make_handler(demo: Demo):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the page shows what matters
            pass

        def _send(self, code: int, body: bytes, ctype: str):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: dict):
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path == "/api/info":
                self._json(200, {"styles": demo.styles, "backends": list(BACKENDS), "photo": to_png(demo.image)})
            else:
                self._json(404, {"error": f"no such page {self.path}"})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_UPLOAD:
                self._json(413, {"error": f"upload: over the {MAX_UPLOAD >> 20} MB limit"})
                return
            body = self.rfile.read(n)
            try:
                if self.path == "/api/apply":
                    req = json.loads(body or b"{}")
                    self._json(200, demo.apply(req.get("backend", "onnxruntime"), req.get("action") or {}))
                elif self.path == "/api/upload":
                    img = load_image(body)
                    with demo.lock:
                        demo.image = img
                    self._json(200, {"photo": to_png(img)})
                else:
                    self._json(404, {"error": f"no such endpoint {self.path}"})
            except (ValueError, KeyError) as e:
                self._json(400, {"error": str(e)})

    return Handler


class DemoServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A browser that closes its connection mid-response (a reload, a screenshot taken while loading) is not
        an error: no traceback for it. Anything else is printed as before."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def serve(cache: Path, port: int = 8765, threads: int | None = None, log=print, ready=None) -> None:
    """Serve until interrupted. `ready(server)` is called once listening (tests use it to learn the port)."""
    base = prepare_base(Path(cache), log)
    demo = Demo(base, threads)
    server = DemoServer(("127.0.0.1", port), make_handler(demo))
    log(f"SHiRA style demo on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)")
    if ready:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
