"""`shira-export model`: export a base once (ONNX Runtime, ExecuTorch) with the manifest of its patchable weights."""
from .model import (
                    ExportError,
                    base_fingerprint,
                    check_targets,
                    export_model,
                    patchable_weights,
                    tensor_sha256,
                    tool_versions,
)

__all__ = ["ExportError", "base_fingerprint", "check_targets", "export_model", "patchable_weights", "tensor_sha256",
           "tool_versions"]
