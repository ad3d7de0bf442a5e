"""In place on ONNX Runtime: one engine patched on its own packed weights (docs/INPLACE.md).

  bake.py          learns, once per base, CPU and ORT version, where ORT's packers put every weight entry
  quantized.py     the same for MatMulNBits' integer entries (digit passes)
  derived_sums.py  the float sums ARM packers derive from integer entries, and their formulas
  layout.py        the layout forms a bake records (contiguous, panels, tiles, row groups) and its file names
  regions.py       where each initializer lies in ORT's saved optimized model
  cache.py         the bake cache: keyed by base, CPU and ORT version; locked, checked, rebuilt when damaged
  engine.py        the in-place engine: the baked file loaded once, its mapped copies patched by the session
"""
