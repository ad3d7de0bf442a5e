"""Baking: ONNX Runtime's own prepacked weights saved once to a file, with a map of where every weight lies in it.

Why: ORT packs constant weights into private layouts at load (MLAS panels for MatMul/Gemm, NCHWc blocks for
Conv), so patching the original buffer is invisible and keeping weights unpacked costs speed. ORT can instead
*save* an optimized model whose initializers and packed copies live in one external data file
(`session.save_external_prepacked_constant_initializers`); loading that model memory-maps the file and
computes on the packed bytes where they lie. A weight written into ORT's (private, copy-on-write) mapping of
that file is seen by the very next run: one engine, full speed, no second copy (docs/INPLACE.md).

What the runtime must learn is where each weight entry went. The packers only copy values, placed by shape and
kernel, so a float weight whose values are nearly all distinct is found in the real bake by its own bytes under
a known form (`_find_by_value`): one ORT pass. Where that cannot be told for sure (a sparse or constant weight,
a packing no form describes, integers), the model is baked twice more with every patchable entry replaced by an
exact float32 code of its position (pass "row": flat // 4096, pass "col": flat % 4096, each offset per tensor so
that no two tensors are equal, or ORT would merge them and change the layout). Decoding the two coded files
gives, for every region of the real file, which entry of which weight sits where. Either map is then proven on
the real file (every mapped entry must equal the stored weight bit for bit) and through the engine (a random
patch must reach its output), or the placement is not baked.

The bake is CPU- and ORT-specific (MLAS picks its kernels, hence its packing, at run time), so it is cached
per CPU and ORT version (inplace/cache.py) and made on the device at first load, in a child process so that its
memory peak is not kept by the app (`python -m shira_runtime.inplace.bake BASE_DIR OUT_DIR`). Every weight file it
reads or writes goes through a memory map, so that peak is ORT's own (one optimizing session at a time), not
copies of the weights: the coded weights are written to a file next to a copy of the model.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from shira_format import manifest as manifest_mod
from shira_format.errors import ManifestError, first_line
from shira_format.quant import entries
from shira_format.safetensors_file import SafetensorsError, parse
from shira_format.weights import quant_scales, safetensors_views

from .layout import (BAKED_DATA, BAKED_MODEL, EXIT_CANNOT, EXIT_DAMAGED, EXIT_NO_ROOM, FORMAT, MAP_FILE, BakeError,
                     describe, form_positions, panel_forms, read_form, release_pages)
from .regions import read_regions
from ..backends.onnxruntime import CREATING

CODE_BASE = 1 << 23  # codes live in [2^23, 2^24): exact integers in float32, far from any real weight
ROW_WIDTH = 4096  # flat index = row * ROW_WIDTH + col
MIN_EXTERNAL_BYTES = 64  # smaller initializers stay inside baked.onnx (0 breaks: ORT cannot read an external
# ReduceMean axes); a patchable weight smaller than this (16 floats) is not baked, and the session says so. 1024
# kept the small convs of tiny conv nets (and a 2x64 classifier) inline; the baked model is load-tested below


# ONNX Runtime session config entries of every session of this bake (and of the sessions that later open it:
# bake.json's "session_config"). Set by main() for one attempt: the bake runs in its own process.
SESSION_CONFIG: dict[str, str] = {}
# On ARM cores with SME, KleidiAI's convolution packs its weight at the first run into memory of its own, out of
# reach of a patch; without KleidiAI, MLAS's kernels read the baked file. Tried when the default bake fails.
WITHOUT_KLEIDIAI = {"mlas.disable_kleidiai": "1"}


def _options(threads: int | None):
    from ..backends.onnxruntime import session_options

    return session_options(threads, config=SESSION_CONFIG)


def _bake_once(source: Path, out_dir: Path, threads) -> None:
    """One ORT load of `source` that writes the optimized model and its data file (packed copies included)."""
    import onnxruntime as ort

    opts = _options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out_dir / BAKED_MODEL)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", BAKED_DATA)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                  str(MIN_EXTERNAL_BYTES))
    opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    try:
        with CREATING:
            ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own types
        raise BakeError(f"{source}: ONNX Runtime cannot bake it: {first_line(e)}") from None


def _source_copy(source: Path, weights_name: str, into: Path, edit) -> Path:
    """A copy of the model in `into` whose weights file went through `edit(placement views)`; the model's other
    files are linked, not copied. Written through a memory map: no copy of the weights in memory."""
    for f in source.parent.iterdir():
        if f.is_file() and f.name != weights_name:
            if f.name == source.name or f.stat().st_size < 1 << 20:
                shutil.copyfile(f, into / f.name)
            else:
                os.symlink(f.resolve(), into / f.name)
    path = into / weights_name
    shutil.copyfile(source.parent / weights_name, path)
    mm = np.memmap(path, dtype=np.uint8, mode="r+")
    st = parse(mm, str(path))
    edit(st)
    mm.flush()
    del st, mm
    return into / source.name


def _coded_source(source: Path, weights_name: str, placements: list, starts: dict[str, int], which: str,
                  into: Path) -> Path:
    """The model with every patchable entry replaced by its position code for pass `which`."""
    def code(st):
        for i, p in enumerate(placements):
            arr = st.array(p.name).reshape(-1)
            flat = np.arange(arr.size, dtype=np.int64)
            c = flat // ROW_WIDTH + starts[p.name] if which == "row" else flat % ROW_WIDTH + i * ROW_WIDTH
            arr[:] = (c + CODE_BASE).astype(np.float32)

    return _source_copy(source, weights_name, into, code)


def _prove_patches_reach_the_engine(manifest, out_dir: Path, source: Path, weights_name: str, stored: dict,
                                    threads) -> None:
    """The map says where the bytes are; this shows ORT computes with them. A random patch (1% of every
    patchable weight) is written the way the runtime writes it, into the mappings of a baked session that has
    already run once, and its output on the export's sample must match a plain session of the same model built
    from the patched weights. Found here, a region ORT copied instead of mapping is a cached "cannot"."""
    import onnxruntime as ort

    from .engine import InPlaceOrtEngine

    x = manifest.sample_inputs()
    rng = np.random.default_rng(0)
    quant = {p.name: p.quant for _, p in manifest.placements("onnxruntime")
             if p.quant is not None}
    mapped = {}
    for name, w in stored.items():
        if name in quant:  # new integers at 1% of the entries, written as they are
            n = int(w.size * 8 // quant[name].bits)
            idx = np.sort(rng.choice(n, max(1, n // 100), replace=False)).astype(np.int64)
            mapped[name] = (idx, rng.integers(0, 1 << quant[name].bits, idx.size).astype(np.uint8))
            continue
        k = max(1, w.size // 100)
        idx = np.sort(rng.choice(w.size, k, replace=False)).astype(np.int64)
        scale = float(np.max(np.abs(w))) or 1.0
        release_pages(w)
        mapped[name] = (idx, (rng.standard_normal(k) * 0.5 * scale).astype(np.float32))
    engine = InPlaceOrtEngine(manifest, threads, verify="off", bake_dir=out_dir)
    try:
        # run once first, as a session does before its first switch: a kernel that packs its weight at the first
        # run (KleidiAI's convolutions on ARM cores with SME) would otherwise pack the patched bytes and pass
        engine.run(x)
        for key, (pos, value) in engine.to_buffers(mapped).items():
            q = engine.buffer_quant.get(key)
            if q is not None:
                entries(engine.buffers[key], q)[pos] = value
            else:
                buf = engine.buffers[key]
                buf[pos] = buf[pos] + value
        engine.weights_changed(set(engine.buffers), {n: idx for n, (idx, _) in mapped.items() if n in quant})
        got = engine.run(x)
    finally:
        engine.close()

    def patch(st):
        for name, (idx, value) in mapped.items():
            arr = st.array(name).reshape(-1)
            if name in quant:
                entries(arr, quant[name])[idx] = value
            else:
                arr[idx] = arr[idx] + value

    with tempfile.TemporaryDirectory(prefix="shira-proof-", dir=out_dir) as tmp:
        model = _source_copy(source, weights_name, Path(tmp), patch)
        opts = _options(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with CREATING:
            sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, x)))
        del sess
    for name, ref in want.items():
        scale = max(float(np.max(np.abs(ref))), 1e-12) if ref.size else 1.0
        err = float(np.max(np.abs(got[name] - ref))) / scale if ref.size else 0.0
        if not err <= 1e-4:
            raise BakeError(f"{manifest.path}: a patch written into the baked weights does not reach ONNX "
                            f"Runtime's output {name!r} ({err:.2g} of its scale off); this base cannot be patched "
                            "in place")


def _load_check(out_dir: Path, threads) -> None:
    """The baked model must load as the runtime will load it (some small constants cannot be read back from
    external data): found here, it is a cached "cannot", not a failure at every open."""
    import onnxruntime as ort

    opts = _options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        with CREATING:
            ort.InferenceSession(str(out_dir / BAKED_MODEL), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own types
        raise BakeError(f"{out_dir / BAKED_MODEL}: ONNX Runtime cannot load its own baked model: "
                        f"{first_line(e)}") from None


def _mapped_weights(path: Path):
    """weights.safetensors through a read-only memory map (page cache, not this process's own memory)."""
    try:
        return parse(np.memmap(path, dtype=np.uint8, mode="r"), str(path))
    except SafetensorsError as e:
        raise ManifestError(str(e)) from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None


def _region_view(data: np.ndarray, region) -> np.ndarray:
    return data[region.offset: region.offset + region.length - region.length % 4].view(np.float32)


def learn_layout(manifest, out_dir: Path, threads=None, log=lambda msg: None, by_value: bool = True) -> dict:
    """Bake `manifest`'s base into `out_dir` and map every patchable placement into the baked data file.
    Returns the map (also written to out_dir/bake.json); raises BakeError when a placement cannot be mapped.

    `by_value`: find float weights in the real bake by their own values first (`_find_by_value`: one ORT pass
    instead of three); where that cannot be told for sure, or its map fails the proof, the coded passes decide."""
    files = manifest.files_of("onnxruntime")
    if not files.prepacked:
        raise BakeError(f"{manifest.path}: no model_prepacked.onnx to bake (exported by an older shira-export)")
    source, weights_path = manifest.file(files.prepacked), manifest.file(files.weights)
    placements = [p for _, p in manifest.placements("onnxruntime")]
    floats = [p for p in placements if p.quant is None]
    quants = [p for p in placements if p.quant is not None]  # integer entries: inplace/quantized.py
    owner = {p.name: info for info, p in manifest.placements("onnxruntime")}
    if sum(-(-int(np.prod(p.shape)) // ROW_WIDTH) for p in floats) >= CODE_BASE or len(floats) * ROW_WIDTH >= CODE_BASE:
        raise BakeError(f"{manifest.path}: too many patchable weights to code positions in float32")

    t0 = time.perf_counter()
    from ..integrity import verify_placements

    weights = _mapped_weights(weights_path)
    stored = safetensors_views(manifest, weights, weights_path)
    verify_placements("fast", manifest, "onnxruntime", stored, weights_path, threads,  # a damaged export is no base
                      scales=quant_scales(manifest, weights, weights_path))
    release_pages(*stored.values())
    real_dir = out_dir
    _bake_once(source, real_dir, threads)
    log(f"baked the base in {time.perf_counter() - t0:.1f}s")
    if not (real_dir / BAKED_DATA).exists():
        raise BakeError(f"{manifest.path}: ONNX Runtime kept every weight inside the optimized model (all below "
                        f"{MIN_EXTERNAL_BYTES} bytes); they cannot be patched in place")
    regions, uses = read_regions((real_dir / BAKED_MODEL).read_bytes())
    real = np.memmap(real_dir / BAKED_DATA, dtype=np.uint8, mode="r")
    found = _find_by_value(regions, floats, stored, real) if by_value and floats else None
    release_pages(real)
    floats_by_value = found is not None  # (quantized placements join `found` later, as formulas too)
    if found is not None:
        log(f"found the {len(floats)} float weights by their values in {time.perf_counter() - t0:.1f}s")
    with tempfile.TemporaryDirectory(prefix="shira-bake-", dir=out_dir) as tmp:
        if found is None:
            found = _coded_passes(source, files.weights, floats, regions, real, Path(tmp), threads, log) if floats else {}
        if quants:
            from .quantized import learn_quantized

            from shira_format.quant import matrix_shape

            found.update(learn_quantized(source, files.weights, quants, stored,
                                         quant_scales(manifest, weights, weights_path),
                                         {p.name: matrix_shape(owner[p.name].shape) for p in quants}, regions, real,
                                         Path(tmp), _bake_once, _source_copy, threads, log))

    out = _write_map(manifest, out_dir, placements, owner, found, regions, uses, real, stored)
    _load_check(out_dir, threads)
    (out_dir / MAP_FILE).write_text(json.dumps(out, indent=1))
    try:
        _prove_patches_reach_the_engine(manifest, out_dir, source, files.weights, stored, threads)
    except BakeError as e:
        if not floats_by_value:  # the coded passes decided already: baking again would end the same way
            raise
        log(f"{e}; mapping the weights again with coded passes")
        del real
        for f in out_dir.iterdir():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
        return learn_layout(manifest, out_dir, threads, log, by_value=False)
    log(f"mapped {len(placements)} weights in {time.perf_counter() - t0:.1f}s")
    return out


def _coded_passes(source: Path, weights_name: str, floats: list, regions, real, tmp: Path, threads, log) -> dict:
    """Float placements found by coding each entry's row and column into its value, one ORT pass each."""
    starts, row = {}, 0
    for p in floats:
        starts[p.name] = row
        row += -(-int(np.prod(p.shape)) // ROW_WIDTH)
    coded = {}
    for which in ("row", "col"):
        t1 = time.perf_counter()
        src_dir, d = tmp / f"{which}-source", tmp / which
        src_dir.mkdir()
        d.mkdir()
        _bake_once(_coded_source(source, weights_name, floats, starts, which, src_dir), d, threads)
        shutil.rmtree(src_dir)
        if read_regions((d / BAKED_MODEL).read_bytes())[0] != regions:
            raise BakeError(f"{source}: ONNX Runtime lays the weights out differently when their values "
                            "change; this base cannot be patched in place")
        coded[which] = np.memmap(d / BAKED_DATA, dtype=np.uint8, mode="r")
        log(f"baked the {which} positions in {time.perf_counter() - t1:.1f}s")
    return _decode(regions, coded, floats, starts, real)


def _write_map(manifest, out_dir: Path, placements: list, owner: dict, found: dict, regions, uses, real,
               stored) -> dict:
    """bake.json's content (and maps/ for positions no formula gives): every live copy of every placement,
    read back against the export's values where the finding did not already."""
    import onnxruntime as ort

    by_region = {}
    for r in regions:
        by_region.setdefault(r.initializer, []).append(r)
    out = {"format": FORMAT, "onnxruntime": ort.__version__, "session_config": dict(SESSION_CONFIG), "placements": {}}
    maps_dir = out_dir / "maps"
    maps_dir.mkdir(exist_ok=True)
    for p in placements:
        copies = []
        for region, positions, *quantized in found.get(p.name, []):  # quantized: [how]
            packed_elsewhere = any(r.kind == "prepacked" for r in by_region.get(region.initializer, []))
            if region.kind == "data" and packed_elsewhere and uses.get(region.initializer, 0) <= 1:
                continue  # the only consumer reads the packed copy: the plain one is never read again
            # found by value or quantized: read back already
            same = p.quant is not None or not isinstance(positions, np.ndarray) or np.array_equal(
                _region_view(real, region).view(np.uint32)[positions], stored[p.name].view(np.uint32))
            if not same:
                raise BakeError(f"{manifest.path}: weight {owner[p.name].name} ({p.name}): ONNX Runtime transforms "
                                f"its values when it optimizes ({region.initializer}); it cannot be patched in place")
            copy = {"region": region.initializer, "kind": region.kind, "offset": region.offset,
                    "length": region.length,
                    "positions": positions if not isinstance(positions, np.ndarray)
                    else describe(positions, p.shape) if p.quant is None else None}  # quantized: described already
            if p.quant is not None:
                how = quantized[0]
                copy["unit"] = "byte" if p.quant.bits == 8 else "nibble"
                if how["signed"]:
                    copy["signed"] = True
                if how["sums"] is not None:  # floats the packer derives from the integers (inplace/derived_sums.py)
                    formula, words = how["sums"]
                    fname = f"{len(os.listdir(maps_dir))}.npy"
                    np.save(maps_dir / fname, words.astype(np.uint32 if region.length < 1 << 34 else np.int64))
                    copy["sums"] = {"formula": formula, "words": f"maps/{fname}"}
            if copy["positions"] is None:  # no known form: the whole map, on disk, read through a mapping
                fname = f"{len(os.listdir(maps_dir))}.npy"
                np.save(maps_dir / fname, positions.astype(np.uint32 if region.length < (1 << 31 if p.quant else 1 << 34) else np.int64))
                copy["positions"] = f"maps/{fname}"
            copies.append(copy)
        if not copies:
            raise BakeError(f"{manifest.path}: weight {owner[p.name].name} ({p.name}) is not in the baked data file "
                            f"(below {MIN_EXTERNAL_BYTES} bytes, or folded into another constant); it cannot be "
                            "patched in place")
        absmax = float(np.max(np.abs(stored[p.name]))) if stored[p.name].size and p.quant is None else 0.0
        release_pages(real, stored[p.name])
        out["placements"][p.name] = {"copies": copies, "absmax": absmax}
    return out


def _find_by_value(regions, placements, stored: dict, real: np.ndarray) -> dict[str, list] | None:
    """placement name -> [(region, form)]: every float placement found in the real bake alone, as the weight's own
    bytes under one of the packings `describe` knows, bit for bit; None where that cannot be told for sure.

    Packers place values by shape and kernel, never by value, so a weight whose values are nearly all distinct
    and that reads back exactly under one form (and under no other that places the sampled entries
    differently) lies there. Refused here, and left to the coded passes: weights with many equal values (a
    constant or sparse weight fits several forms), a weight found nowhere, a region that two weights fit (ORT
    shares one copy of equal weights). Copies this misses that the engine reads are caught by the proof."""
    by_start: dict[bytes, list] = {}
    for r in regions:
        if r.length >= 8:
            by_start.setdefault(bytes(real[r.offset:r.offset + 8]), []).append(r)
    rng = np.random.default_rng(0)
    found: dict[str, list] = {}
    claimed: set = set()
    for p in placements:
        w = np.ascontiguousarray(stored[p.name]).reshape(-1).view(np.uint32)
        n = w.size
        if n < 16:
            return None
        probe = np.unique(np.concatenate([np.arange(64), np.arange(n - 64, n), rng.integers(0, n, 4096)]))
        want = w[probe]
        if np.unique(want).size < 0.9 * want.size:
            return None
        for r in by_start.get(w[:2].tobytes(), []):
            view = _region_view(real, r).view(np.uint32)
            fits = []
            for form in ("contiguous", *panel_forms(p.shape)):
                need = n if form == "contiguous" else form["rows"] * form["aligned_n"]
                if view.size < need:
                    continue
                pos = form_positions(probe, form)
                if pos.max() < view.size and np.array_equal(view[pos], want):
                    if not any(np.array_equal(pos, q) for _, q in fits):
                        fits.append((form, pos))
            if not fits:
                continue
            if len(fits) > 1 or r in claimed:
                return None
            form = fits[0][0]
            try:
                if not np.array_equal(read_form(view, form, n), w):
                    return None
            except (IndexError, ValueError):  # the packing would run past the region's end: not this one
                return None
            claimed.add(r)
            found.setdefault(p.name, []).append((r, form))
        if p.name not in found:
            return None
        release_pages(real, stored[p.name])
    for r in regions:  # a weight found in one copy must be found in all: a packing no form describes is coded
        if r not in claimed and any(c.initializer == r.initializer for c in claimed):
            return None
    return found


def _decode(regions, coded: dict[str, np.ndarray], placements, starts, real: np.ndarray) -> dict[str, list]:
    """placement name -> [(region, positions)]: positions[flat] = the float32 index of that entry in the region.

    The column pass codes the tensor (i * 4096 + flat % 4096), the row pass its rows (starts[i] + flat // 4096):
    an entry is decoded from the two, and both must agree on the tensor. A slot holds a code only where both
    passes read as one and the real bake differs: other bytes (integers of a quantized weight, any constant)
    are the same in every bake and may read as a code by chance (about 1 in 500 random 4-byte groups)."""
    sizes = np.array([int(np.prod(p.shape)) for p in placements], dtype=np.int64)
    row_starts = np.array([starts[p.name] for p in placements], dtype=np.int64)
    row_ends = row_starts + -(-sizes // ROW_WIDTH)
    found: dict[str, list] = {}
    for region in regions:
        rows, cols = _region_view(coded["row"], region), _region_view(coded["col"], region)
        hit = np.flatnonzero((rows >= CODE_BASE) & (rows < 2 * CODE_BASE) & (cols >= CODE_BASE)
                             & (cols < 2 * CODE_BASE))
        if hit.size:
            hit = hit[_region_view(real, region)[hit] != rows[hit]]
        if not hit.size:
            continue
        r = rows[hit].astype(np.int64) - CODE_BASE
        c = cols[hit].astype(np.int64) - CODE_BASE
        t = c // ROW_WIDTH
        if t[0] == t[-1] and (t == t[0]).all():  # the usual case: the region holds one weight
            groups = [(int(t[0]), slice(None))]
        else:
            groups = [(int(ti), t == ti) for ti in np.unique(t)]
        for ti, sel in groups:
            rr, cc, e = r[sel], c[sel], hit[sel]
            if not (0 <= ti < len(placements) and cc.min() >= 0 and rr.min() >= row_starts[ti]
                    and rr.max() < row_ends[ti]):
                raise BakeError(f"region {region.initializer}: the row and column passes disagree (ONNX Runtime "
                                "mixes values when it optimizes); this base cannot be patched in place")
            f = (rr - row_starts[ti]) * ROW_WIDTH + cc % ROW_WIDTH
            del rr, cc
            n = int(sizes[ti])
            seen = np.zeros(n, dtype=bool)
            if f.size == n and f.max() < n:
                seen[f] = True
            if not seen.all():  # n entries, all below n, each seen: every entry exactly once
                raise BakeError(f"region {region.initializer}: holds part of weight {placements[ti].name} "
                                f"({f.size} of {n} entries); it cannot be patched in place")
            positions = np.empty(n, dtype=np.int64 if region.length >= 1 << 33 else np.int32)  # half the peak
            positions[f] = e
            found.setdefault(placements[ti].name, []).append((region, positions))
        release_pages(coded["row"], coded["col"], real)
    return found


def main(argv=None) -> int:
    """`python -m shira_runtime.inplace.bake BASE_DIR OUT_DIR [THREADS]`: what the runtime runs in a child process."""
    argv = sys.argv[1:] if argv is None else argv
    base, out = Path(argv[0]), Path(argv[1])
    threads = int(argv[2]) if len(argv) > 2 and argv[2] != "0" else None
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        manifest = manifest_mod.load(base)
        try:
            learn_layout(manifest, out, threads, log=log)
        except BakeError as e:
            if platform.machine().lower() not in ("aarch64", "arm64"):
                raise
            log(f"{e}; baking again without KleidiAI's kernels")
            for f in out.iterdir():
                shutil.rmtree(f) if f.is_dir() else f.unlink()
            SESSION_CONFIG.update(WITHOUT_KLEIDIAI)
            try:
                learn_layout(manifest, out, threads, log=log)
            except BakeError as e2:
                raise BakeError(f"{e} (and without KleidiAI: {e2})") from None
    except BakeError as e:
        print(f"bake: {e}", file=sys.stderr)
        return EXIT_CANNOT
    except ManifestError as e:
        print(f"bake: {e}", file=sys.stderr)
        return EXIT_DAMAGED
    except OSError as e:  # ENOSPC, EROFS, EACCES while writing the bake
        print(f"bake: {e.filename or out}: cannot write the bake: {e.strerror}", file=sys.stderr)
        return EXIT_NO_ROOM
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
