"""In place without a bake: ONNX Runtime's packed weights found in the live session's own memory.

Why: the bake (inplace/bake.py) makes ORT *save* its packed copies to a file so that they can be found and
mapped; at 1.1B parameters writing that file alone takes five times a plain session's creation, and the
cache holds the weights twice on disk. But the packed copies already exist in the memory of any ORT session,
as soon as it is created: MLAS packs each constant MatMul weight into a buffer of its own (64-byte aligned) and
computes on it at every run. This engine creates a plain session of `model_prepacked.onnx`, as an app would,
and finds those buffers by their values: packers place values by shape and kernel, never by value, so a weight
whose packed copy reads back bit for bit under one known packing (layout.panel_forms), and that appeared in the
process's anonymous memory while the session was created (ORT sessions are created one at a time in a process),
is that copy: another session's copy, or a freed one, was there before. A switch then writes into it: ORT's own buffer, the base's
speed at once, the base's memory, nothing on disk.

What is refused (BakeError: the session bakes instead, which also learns layouts no form describes):
  - quantized weights: their integer entries repeat, so a copy cannot be told by its values;
  - a weight not found, or where not exactly one of its copies is new with the session, or found only as a plain
    (unpacked) copy: that may be a freed buffer, and a write there would corrupt memory the allocator has handed
    to someone else;
  - a base whose patch does not reach ORT's output (the proof below).

The proof, on the first open for this base, CPU and ORT version: a random patch on a few pages of every weight
is computed once by a reference session (prepacking off, weights as given: MLAS packs them per call); shira-export
ships that reference in sample.npz (a phone runs no reference session), else it runs here before the live session
exists, so the two never hold memory at once; the same patch is then written into the found
copies, and the live session's output on the export's sample must match within 1e-4 of its scale; the base
values are written back. What was proven (the packing of each weight, its largest magnitude) is kept in the
bake cache's directory as a small `<base>-<key>.live.json`; later opens find the copies again (addresses change
with every process) and check a sample of each, but run no reference.

While searching, memory is read by copy (process_vm_readv on this process, else pread on /proc/self/mem): a read
of memory another thread frees meanwhile comes back short instead of crashing. The copy taken for a weight is
memory this session's creation allocated (the only new one), so it is compared and written where it lies. When
the engine closes it clears the first bytes of each copy, so that a freed copy is not found again.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from shira_format.atomic import write_text
from shira_format.errors import ManifestError
from shira_format.manifest import Manifest

from ..backends.onnxruntime import CREATING, NAME, create_session, session_options
from .cache import bake_key, cache_root
from .engine import InPlaceOrtEngine, _Copy, _view
from .layout import BakeError, form_positions, panel_forms, release_pages

_LIBC = ctypes.CDLL(None, use_errno=True)
PAGE = os.sysconf("SC_PAGE_SIZE")
RECORD_FORMAT = 1
ALIGN = 64  # MLAS's packed buffers come from ORT's CPU allocator, aligned to 64 bytes: the search's stride
CHUNK = 8 << 20  # bytes read at a time while searching
MIN_ENTRIES = 64  # a smaller weight is not told by value (nor baked: ORT keeps it inside the model)
PROOF_VERSION = 1  # proof_patch's algorithm: a reference exported for another one is not used
SAME_ANSWER = 1e-4  # the proof's tolerance, of the output's scale (float32 kernels differ by ~1e-6)


def anonymous_regions() -> list[tuple[int, int]]:
    """[start, end) of every readable, writable mapping that no file backs: the heap and malloc's own mappings
    (Android names them "[anon:...]"), where ORT's allocator puts packed weights."""
    out = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) > 5 else ""
            if not parts[1].startswith("rw") or not (path in ("", "[heap]") or path.startswith("[anon:")):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


class _Memory:
    """This process's memory read by copy (process_vm_readv, else pread on /proc/self/mem), never through a
    pointer: a region another thread frees meanwhile reads short instead of crashing the process."""
    IOV_MAX = 1024

    def __init__(self):
        fn = getattr(_LIBC, "process_vm_readv", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
            fn.restype = ctypes.c_ssize_t
        self._readv = fn
        self._pid = os.getpid()
        self._chunks: list[np.ndarray] = []
        try:
            self.fd = os.open("/proc/self/mem", os.O_RDONLY)
        except OSError as e:  # a sandbox that hides it: this route is not for this process
            raise BakeError(f"/proc/self/mem: cannot read this process's memory ({e.strerror})") from None

    def _vm_readv(self, local: np.ndarray, remote: np.ndarray) -> int:
        """local/remote: [k, 2] uint64 (address, length) rows; bytes read, or -1 where the call is refused."""
        if self._readv is None:
            return -1
        n = self._readv(self._pid, local.ctypes.data, len(local), remote.ctypes.data, len(remote), 0)
        if n < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # a kernel or sandbox without it
            self._readv = None
        return n

    def read(self, address: int, nbytes: int, out: np.ndarray | None = None) -> np.ndarray:
        buf = np.empty(nbytes, dtype=np.uint8) if out is None else out[:nbytes]
        if nbytes == 0:
            return buf
        got = self._vm_readv(np.array([[buf.ctypes.data, nbytes]], dtype=np.uint64),
                             np.array([[address, nbytes]], dtype=np.uint64))
        if got >= 0 or self._readv is not None:
            return buf[:max(got, 0)]
        got = 0
        try:
            while got < nbytes:
                n = os.preadv(self.fd, [memoryview(buf[got:])], address + got)
                if n <= 0:
                    break
                got += n
        except OSError:
            pass
        return buf[:got]

    def gather(self, address: int, offsets: np.ndarray) -> np.ndarray | None:
        """The uint32 at each byte offset (sorted) from `address`; None if any cannot be read."""
        out = np.empty(offsets.size, dtype=np.uint32)
        if self._readv is not None:
            local = np.stack([np.uint64(out.ctypes.data) + 4 * np.arange(out.size, dtype=np.uint64),
                              np.full(out.size, 4, dtype=np.uint64)], 1).astype(np.uint64)
            remote = np.stack([np.uint64(address) + offsets.astype(np.uint64), np.full(out.size, 4, dtype=np.uint64)], 1)
            for i in range(0, out.size, self.IOV_MAX):
                part = slice(i, i + self.IOV_MAX)
                want = 4 * len(local[part])
                if self._vm_readv(np.ascontiguousarray(local[part]), np.ascontiguousarray(remote[part])) != want:
                    if self._readv is not None:
                        return None
                    break
            else:
                return out
        span = self.read(address, int(offsets[-1]) + 4)
        return span.view(np.uint8)[offsets[:, None] + np.arange(4)].copy().view(np.uint32).reshape(-1) \
            if span.size == int(offsets[-1]) + 4 else None

    def chunks(self, n: int) -> list[np.ndarray]:
        """n reading buffers of CHUNK bytes, the same ones at every call."""
        while len(self._chunks) < n:
            self._chunks.append(np.empty(CHUNK, dtype=np.uint8))
        return self._chunks[:n]

    def close(self) -> None:
        for b in self._chunks:  # what they copied must not be found once they are freed
            b[:] = 0
        self._chunks.clear()
        os.close(self.fd)


def _key(w: np.ndarray) -> int:
    """A weight's first two entries as one uint64: the first 8 bytes of every packing of it known here."""
    return int(np.ascontiguousarray(w.reshape(-1)[:2]).view(np.uint64)[0])


def _key_hash(v: np.ndarray) -> np.ndarray:
    return ((v * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(48)).astype(np.int64)


def _minus(regions, holes):
    """`regions` with the address ranges `holes` cut out."""
    out = list(regions)
    for h0, h1 in holes:
        out = [piece for lo, hi in out
               for piece in (((lo, min(hi, h0)), (max(lo, h1), hi)) if lo < h1 and h0 < hi else ((lo, hi),))
               if piece[0] < piece[1]]
    return out


def search(mem: _Memory, regions, keys: set[int], threads: int = 1) -> dict[int, list[int]]:
    """Every 64-byte-aligned address in `regions` whose first 8 bytes, as a little-endian uint64, are in `keys`
    (read in chunks on `threads` threads: the copies release the GIL)."""
    table = np.zeros(1 << 16, dtype=bool)
    table[_key_hash(np.array(sorted(keys), dtype=np.uint64))] = True
    buffers = mem.chunks(max(1, threads))
    # the search's own buffers hold copies of what they read: never searched (the same ones every search, so that
    # no freed buffer full of copies is found by a later search)
    regions = _minus(regions, [(b.ctypes.data, b.ctypes.data + CHUNK) for b in buffers])
    chunks = [(a, min(CHUNK, hi - a) // ALIGN * ALIGN) for lo, hi in regions
              for a in range(-(-lo // ALIGN) * ALIGN, hi, CHUNK)]

    def scan(worker: int) -> list[tuple[int, int]]:
        found = []
        for a, nbytes in chunks[worker::len(buffers)]:
            raw = mem.read(a, nbytes, buffers[worker])
            v = raw[:raw.size // ALIGN * ALIGN].view(np.uint64)[::ALIGN // 8]
            found += [(int(v[i]), a + ALIGN * int(i)) for i in np.flatnonzero(table[_key_hash(v)]) if int(v[i]) in keys]
        return found

    hits: dict[int, list[int]] = {}
    with ThreadPoolExecutor(len(buffers), thread_name_prefix="shira-search") as pool:
        for found in pool.map(scan, range(len(buffers))):
            for key, address in found:
                hits.setdefault(key, []).append(address)
    return hits


def _form_nbytes(form) -> int:
    return 4 * form["rows"] * form["aligned_n"]


def _panels_equal(region: np.ndarray, w: np.ndarray, form) -> bool:
    """Whether `region` holds the weight [K, N] under a panels form, compared block by block where it lies (no
    unpacked copy of the weight)."""
    k_total, n_total, kblock, panel, aligned = (form[x] for x in ("rows", "cols", "k_block", "panel", "aligned_n"))
    if aligned % panel:  # a panel straddles the padded width (tiny weights): gather
        return np.array_equal(region[form_positions(np.arange(w.size), form)], w.reshape(-1))
    w = w.reshape(k_total, n_total)
    full = n_total // panel
    for k0 in range(0, k_total, kblock):
        rows = min(k_total - k0, kblock)
        block = region[k0 * aligned:(k0 + rows) * aligned].reshape(aligned // panel, rows, panel)
        if not np.array_equal(block[:full], w[k0:k0 + rows, :full * panel].reshape(rows, full, panel).transpose(1, 0, 2)):
            return False
        if n_total % panel and not np.array_equal(block[full, :, :n_total % panel], w[k0:k0 + rows, full * panel:]):
            return False
    return True


def _sample(mem: _Memory, address: int, probe: np.ndarray, form) -> np.ndarray | None:
    """The entries `probe` of a copy at `address` under `form` (uint32), gathered from memory; None where they
    lie beyond what can be read."""
    pos = form_positions(probe, form)
    order = np.argsort(pos, kind="stable")
    got = mem.gather(address, 4 * pos[order])
    if got is None:
        return None
    out = np.empty_like(got)
    out[order] = got
    return out


def sample_entries(n: int) -> np.ndarray:
    """The entries (sorted) a copy of an n-entry weight is checked on: the first and last 64 and 64 runs of 64 at
    random places (4,224 entries on ~66 pages of the export: a random 4,096 would read 4,096 pages)."""
    starts = np.random.default_rng(n).integers(0, max(1, n - 64), 64)
    runs = (starts[:, None] + np.arange(64)).reshape(-1)
    return np.unique(np.concatenate([np.arange(min(n, 64)), np.arange(max(0, n - 64), n), runs[runs < n]]))


def _locate(mem: _Memory, name: str, shape, w: np.ndarray, candidates: list[int], known, full: bool,
            earlier: set[int] = frozenset()):
    """(address, form) of this session's packed copy of weight `w` among `candidates`; BakeError otherwise.
    `known`: the form proven on an earlier open (only it is tried); `full`: compare every entry, not a sample;
    `earlier`: addresses that held the weight's first bytes before the session was created (another session's
    copy, or a freed one)."""
    u = w.reshape(-1).view(np.uint32)
    n = u.size
    probe = sample_entries(n)
    quick = np.unique(np.concatenate([probe[:64], probe[-64:], probe[::64]]))  # picks the form among many
    if np.unique(u[probe]).size < 0.9 * probe.size:
        raise BakeError(f"weight {name}: too many equal values to tell its packed copy by value")
    # (a form whose last panel straddles the padded width reaches past rows * aligned_n: not one MLAS packs)
    forms = [known] if known is not None else [f for f in panel_forms(shape) if f["aligned_n"] % f["panel"] == 0]

    def fits(address, form, at) -> bool:
        return np.array_equal(_sample(mem, address, at, form), u[at])

    packed, plain = [], 0
    for address in candidates:
        form = next((f for f in forms if fits(address, f, quick) and fits(address, f, probe)), None)
        if form is None or np.array_equal(form_positions(probe, form), probe):
            # no packing, or one that leaves the sample where it was: not told apart from a plain copy (ORT's, or
            # a freed buffer's), which is never written
            plain += form is not None or fits(address, "contiguous", probe)
            continue
        packed.append((address, form))
    if not packed:
        if plain:
            raise BakeError(f"weight {name}: found only as a plain copy (not ORT's packed one) in this process's memory")
        raise _Lasting(f"weight {name}: found in no packing this runtime knows in the session's memory")
    # The session's copy is the one that appeared with it (sessions are created one at a time). One that was there
    # before is another session's or a freed one, even where this session's buffer took a freed copy's place
    # (bytes alike): that cannot be told, so it is refused, as is more than one new copy.
    new = [(a, f) for a, f in packed if a not in earlier]
    if len(new) != 1:
        raise BakeError(f"weight {name}: found {len(packed)} times in this process's memory, {len(new)} of them new "
                        "with this session; which copy is this session's cannot be told")
    address, form = new[0]
    # That copy is memory this session's creation allocated, alive while it is: compared where it lies
    if full and not _panels_equal(_view(address, _form_nbytes(form), np.uint32), u, form):
        raise BakeError(f"weight {name}: its packed copy differs from the export beyond the sampled entries")
    return address, form


def proof_patch(stored: dict[str, np.ndarray], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (flat indices, sorted; deltas): 64 random entries in each of a few random 1024-entry spans of
    every weight (1.6% of its spans, at least one), half the weight's largest magnitude: a change every
    weight's output shows, on few enough pages that the reference session copies little."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in stored.items():
        n = w.size
        spans = -(-n // 1024)
        chosen = rng.choice(spans, max(1, spans // 64), replace=False)
        lengths = np.minimum(1024, n - chosen * 1024)
        idx = np.unique(chosen[:, None] * 1024 + rng.integers(0, lengths[:, None], (chosen.size, 64)))
        scale = float(np.max(np.abs(w.reshape(-1)[idx]))) or 1.0
        out[name] = (idx.astype(np.int64), (rng.standard_normal(idx.size) * 0.5 * scale).astype(np.float32))
    return out


def reference_outputs(manifest: Manifest, patch: dict, threads, x: dict) -> dict[str, np.ndarray]:
    """The export's sample through a plain ORT session of the patched weights, prepacking off (MLAS packs them
    per call, from the weights as given): what the live session must answer once the patch is written."""
    import onnxruntime as ort

    from shira_format.safetensors_file import parse
    from shira_format.weights import safetensors_views

    files = manifest.files_of(NAME)
    path = manifest.file(files.weights)
    st = parse(np.memmap(path, dtype=np.uint8, mode="c"), str(path))  # private: only the patched pages are copied
    weights = safetensors_views(manifest, st, path)
    places = {p.name: p for _, p in manifest.placements(NAME)}
    opts = session_options(threads, config={"session.disable_prepacking": "1"})
    values = []
    for name, (idx, delta) in patch.items():
        flat = weights[name].reshape(-1)
        flat[idx] += delta
        values.append(ort.OrtValue.ortvalue_from_numpy(weights[name].reshape(places[name].shape)))
        opts.add_initializer(name, values[-1])
    sess = create_session(manifest.file(files.prepacked), opts)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))


def refusal(manifest: Manifest) -> str | None:
    """Why this route cannot take the base, told from its manifest alone; None where it may."""
    places = [p for _, p in manifest.placements(NAME)]
    if not places:
        return f"{manifest.root}: no patchable weights"
    quantized = [p.name for p in places if p.quant is not None]
    if quantized:
        return f"weight {quantized[0]} is quantized: integer entries repeat, so ORT's copy cannot be found by its values"
    flat = [p.name for p in places if len(p.shape) != 2]
    if flat:
        return f"weight {flat[0]} is not a matrix: no packing of it is known"
    small = [p.name for p in places if int(np.prod(p.shape)) < MIN_ENTRIES]
    if small:
        return f"weight {small[0]} has fewer than {MIN_ENTRIES} entries: too few to be told by value"
    files = manifest.files_of(NAME)
    if not files.prepacked or not manifest.file(files.prepacked).exists():
        return f"{manifest.root}: no model_prepacked.onnx (exported by an older shira-export?)"
    return None


def exported_reference(manifest: Manifest) -> dict[str, np.ndarray] | None:
    """The proof's reference outputs as shira-export computed them (sample.npz: `proof:version`, then
    `proof:<output>` per model output), or None: absent, for another proof_patch (PROOF_VERSION) or unreadable.
    The same computation as reference_outputs; shipped so that a phone's first open runs no reference session."""
    try:
        entries = manifest.sample_entries("proof:")
    except ManifestError:  # an unreadable sample: computed here, as for an export without it
        return None
    version = entries.pop("version", None)
    outputs = {o["name"] for o in manifest.outputs}
    if version is None or version.shape != () or int(version) != PROOF_VERSION or set(entries) != outputs:
        return None
    return entries


def _stored(manifest: Manifest) -> tuple:
    """(weights.safetensors's path, name -> its stored array, read-only mapped: page cache, not this process's)."""
    from .bake import _mapped_weights

    from shira_format.weights import safetensors_views

    weights_path = manifest.file(manifest.files_of(NAME).weights)
    return weights_path, safetensors_views(manifest, _mapped_weights(weights_path), weights_path)


def proof_entries(manifest: Manifest, threads=None) -> dict[str, np.ndarray]:
    """sample.npz's `proof:` entries for a base (what exported_reference reads back); {} where this route would
    refuse the base anyway (quantized, non-matrix weights...)."""
    if refusal(manifest):
        return {}
    _, stored = _stored(manifest)
    patch = proof_patch(stored)
    release_pages(*stored.values())
    want = reference_outputs(manifest, patch, threads, manifest.sample_inputs())
    return {"proof:version": np.array(PROOF_VERSION, dtype=np.int64), **{f"proof:{k}": v for k, v in want.items()}}


def _read_export(verify: str, manifest: Manifest, stored: dict, weights_path, absmax: dict | None) -> None:
    """`verify`'s checks of the export's weights and, where `absmax` is a dict, each weight's largest magnitude
    into it (one reading of the pages for both), in batches whose pages leave this process after each."""
    from ..integrity import verify_placements

    batch: list[str] = []
    for i, name in enumerate(stored):
        batch.append(name)
        if sum(stored[b].nbytes for b in batch) >= 256 << 20 or i == len(stored) - 1:
            verify_placements(verify, manifest, NAME, {b: stored[b] for b in batch}, weights_path, 1, only=set(batch))
            if absmax is not None:
                absmax.update({b: float(max(np.max(stored[b]), -np.min(stored[b]))) for b in batch})
            release_pages(*(stored[b] for b in batch))
            batch = []


def _release(a: np.ndarray) -> None:
    """MADV_DONTNEED on the whole pages of a read-only file mapping that `a` covers: they stay in the page cache
    but leave this process (layout.release_pages lets go of the whole mapping: too much, once per weight)."""
    start = a.ctypes.data
    lo, hi = -(-start // PAGE) * PAGE, (start + a.nbytes) // PAGE * PAGE
    if hi > lo:
        _LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED


def _workers(threads) -> int:
    return max(1, threads or os.cpu_count() or 1)


def record_path(manifest: Manifest, cache_dir=None):
    return cache_root(cache_dir) / f"{manifest.root.name}-{bake_key(manifest)}.live.json"


class _Lasting(BakeError):
    """A refusal that opening again on this CPU and ORT would repeat (no known packing, a patch that does not
    reach the output): kept in the record, so that later opens go to the bake at once."""


class LiveOrtEngine(InPlaceOrtEngine):
    """In place on a plain ORT session's own packed buffers (engine.py's contract; see the module docstring)."""
    route = "live"

    def __init__(self, manifest: Manifest, threads: int | None = None, verify: str = "fast", cache_dir=None,
                 log=lambda msg: None):
        t0 = time.perf_counter()
        self.manifest = manifest
        self.bake_dir = None
        self._empty()
        try:
            why = refusal(manifest)
            if why:
                raise BakeError(why)
            files = manifest.files_of(NAME)
            weights_path, stored = _stored(manifest)
            self._record_file = record_path(manifest, cache_dir)
            record = self._read_record()
            if record is not None and "refused" in record:
                raise BakeError(f"{record['refused']} (an earlier open found so: {self._record_file})")
            patch = want = x = None
            if record is None:  # first open here: the proof's reference, before the live session holds memory
                x = manifest.sample_inputs()
                patch = proof_patch(stored)
                release_pages(*stored.values())
                want = exported_reference(manifest)
                if want is None:  # an export without it (or of another proof version): computed here
                    want = reference_outputs(manifest, patch, threads, x)
                    log(f"{manifest.root}: reference for the proof in {time.perf_counter() - t0:.1f}s")
            self._mem = _Memory()
            try:
                keys = {_key(w) for w in stored.values()}
                with CREATING:  # no other session is created meanwhile: the copies that appear are this one's
                    before = search(self._mem, anonymous_regions(), keys, _workers(threads))
                    # the export's checksums on a thread of their own while ORT creates the session (mostly on one)
                    with ThreadPoolExecutor(1, thread_name_prefix="shira-verify") as pool:
                        # (and, at the first open, each weight's largest magnitude: kept in the record)
                        absmax = {} if record is None else None
                        checked = pool.submit(_read_export, verify, manifest, stored, weights_path, absmax)
                        self.session = create_session(manifest.file(files.prepacked), session_options(threads))
                        checked.result()  # a damaged export raises ManifestError here
                    hits = search(self._mem, anonymous_regions(), keys, _workers(threads))
                    found = self._find(stored, hits, before, record, absmax, threads,
                                       full=record is None or verify == "full")
                log(f"{manifest.root}: found ORT's packed copies of {len(found)} weights in "
                    f"{time.perf_counter() - t0:.1f}s")
            finally:
                self._mem.close()
                release_pages(*stored.values())
            for name, (address, form, absmax) in found.items():
                copy = _Copy(f"{name}@live", {"offset": address, "length": _form_nbytes(form), "positions": form}, None,
                             int(np.prod(self._places[name].shape)))
                key = f"{name}@live"
                copy.keys.append(key)
                self.copies[name] = [copy]
                self.buffers[key] = _view(address, _form_nbytes(form))
                self._absmax[name] = self.absmax[key] = absmax
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.output_names = [o.name for o in self.session.get_outputs()]
            if record is None:
                self._prove(patch, want, x)
                self._write_record(found, log)
                log(f"{manifest.root}: proven in place in {time.perf_counter() - t0:.1f}s")
        except _Lasting as e:
            self.close()
            self._write_record({"refused": str(e)}, log)
            raise BakeError(str(e)) from None
        except BaseException:
            self.close()
            raise

    def _find(self, stored, hits, before, record, absmax, threads, full: bool) -> dict[str, tuple]:
        """name -> (address, form, absmax) of every weight's packed copy. `hits`/`before`: key -> addresses, after
        and before the session's creation; `absmax`: name -> largest magnitude (None: the record's); `full`: every
        entry compared."""
        known = (record or {}).get("placements", {})

        def one(name):
            w = stored[name]
            first = _key(w)
            entry = known.get(name)
            try:
                address, form = _locate(self._mem, name, self._places[name].shape, w, hits.get(first, []),
                                        entry["form"] if entry else None, full=full, earlier=set(before.get(first, ())))
            finally:
                _release(w)  # the export's pages read for the comparison leave this process
            return name, (address, form, absmax[name] if absmax is not None else float(entry["absmax"]))

        with ThreadPoolExecutor(min(len(stored), _workers(threads)), thread_name_prefix="shira-find") as pool:
            return dict(pool.map(one, list(stored)))

    def _prove(self, patch, want, x) -> None:
        at = {name: self.copies[name][0].positions(idx) for name, (idx, _) in patch.items()}
        bufs = {name: self.buffers[self.copies[name][0].keys[0]] for name in patch}
        base = {name: bufs[name][at[name]] for name in patch}  # the export's values (each copy compared with it)
        for name, (_, delta) in patch.items():
            bufs[name][at[name]] = base[name] + delta
        try:
            got = self.run(x)
        finally:  # the base's bits back, whatever the verdict
            for name in patch:
                bufs[name][at[name]] = base[name]
        for name, ref in want.items():
            scale = max(float(np.max(np.abs(ref))), 1e-12) if ref.size else 1.0
            err = float(np.max(np.abs(got[name] - ref))) / scale if ref.size else 0.0
            if not err <= SAME_ANSWER:
                raise _Lasting(f"a patch written into ORT's packed copies does not reach its output {name!r} "
                                f"({err:.2g} of its scale off)")

    def _read_record(self) -> dict | None:
        """The proof kept by an earlier open ({"placements": ...}) or its lasting refusal ({"refused": why})."""
        try:
            record = json.loads(self._record_file.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(record, dict) and record.get("format") == RECORD_FORMAT and isinstance(record.get("refused"), str):
            return record
        places = record.get("placements") if isinstance(record, dict) else None
        ok = (isinstance(places, dict) and record.get("format") == RECORD_FORMAT and set(places) == set(self._places)
              and all(isinstance(e, dict) and isinstance(e.get("absmax"), (int, float))
                      and e.get("form") in list(panel_forms(self._places[n].shape)) for n, e in places.items()))
        return record if ok else None  # a damaged or foreign record: proven again (and written anew)

    def _write_record(self, found: dict, log) -> None:
        """Keep what this open proved (`found`: name -> (address, form, absmax)), or {"refused": why}."""
        record = {"format": RECORD_FORMAT, **(found if "refused" in found else {"placements": {
            name: {"form": form, "absmax": absmax} for name, (_, form, absmax) in found.items()}})}
        try:
            self._record_file.parent.mkdir(parents=True, exist_ok=True)
            write_text(self._record_file, json.dumps(record, indent=1))
        except OSError as e:  # a read-only cache: the next open proves it again
            log(f"{self._record_file}: cannot keep the proof ({e.strerror}); the next open proves it again")

    def close(self) -> None:
        """Clear the first 8 bytes of every copy (a later session of this base must not find a freed copy beside
        its own), then drop the views and free the session."""
        if self.session is not None:
            for buf in self.buffers.values():
                buf[:2] = np.nan
        super().close()

