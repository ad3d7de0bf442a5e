"""The SHiRA file formats, numpy only (specs: docs/FORMAT.md, docs/MANIFEST.md).

  adapter.py          the adapter blob: SparseTensor, read_adapter, encode_adapter / write_adapter
  codings.py          its index and value codings, both ways
  manifest.py         manifest.json of an exported base: typed, strictly read, checked when written
  layouts.py          how engines store a torch weight, both ways
  weights.py          the patchable weights as an exported base stores them
  safetensors_file.py the container reader; atomic.py the writers' temp-file-and-rename; errors.py
Used by the runtime, the toolchain and the test-vector generator alike.
"""
from .adapter import Adapter, SparseTensor, encode_adapter, read_adapter, write_adapter
from .errors import AdapterError, ManifestError, ShiraError
from .manifest import Manifest
from .manifest import load as load_manifest

__all__ = ["Adapter", "AdapterError", "Manifest", "ManifestError", "ShiraError", "SparseTensor", "encode_adapter",
           "load_manifest", "read_adapter", "write_adapter"]
