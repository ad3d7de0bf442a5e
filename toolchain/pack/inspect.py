"""`shira-pack inspect`: what a blob holds, in a few lines."""
from __future__ import annotations

import numpy as np
from shira_format.adapter import read_adapter
from shira_format.adapter import VERSION as ADAPTER_VERSION

from .peft_source import PEFT_BYTES_PER_NNZ


def inspect_blob(path) -> str:
    a = read_adapter(path)
    lines = [f"{path}: adapter {a.name!r}, format v{ADAPTER_VERSION}, {a.file_bytes:,} bytes, base {a.base_fingerprint}, "
             f"data crc32 {a.data_crc32:#010x}",
             f"{'tensor':<48}{'shape':>14}{'nnz':>10}{'density':>9}{'indices':>12}{'values':>9}{'B/nnz':>7}  crc32"]
    for t in a.tensors.values():
        numel = int(np.prod(t.shape))
        lines.append(f"{t.target:<48}{'x'.join(map(str, t.shape)):>14}{t.indices.size:>10,}"
                     f"{t.indices.size / numel:>9.2%}{t.index_coding:>12}{t.value_coding:>9}"
                     f"{t.stored_bytes / max(t.indices.size, 1):>7.2f}  {t.crc32:#010x}")
    data = sum(t.stored_bytes for t in a.tensors.values())
    peft = PEFT_BYTES_PER_NNZ * a.nnz
    lines.append(f"total: {len(a.tensors)} tensors, {a.nnz:,} nonzeros, {data:,} data bytes "
                 f"({data / max(a.nnz, 1):.2f} B/nonzero), {a.file_bytes:,} file bytes; the PEFT SHiRA layout "
                 f"holds the same in {peft:,} bytes of tensors ({peft / max(a.file_bytes, 1):.1f}x this file)")
    return "\n".join(lines)
