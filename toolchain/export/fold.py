"""Fold BatchNorm into the weight before it, ourselves, before any exporter sees the model.

Exporters fold an eval-mode BatchNorm into the conv (or Linear) before it: W' = W * g per output channel,
g = gamma / sqrt(running_var + eps), and the raw W is never stored. Folding here instead, in torch, gives the
exporters a model with nothing left to fold and tells us g exactly. A SHiRA delta on W stays sparse on W' at
the same indices, scaled by g of its output channel, so the placement records g (`channel_scale`, docs/MANIFEST.md)
and the runtime scales each value when it patches. Names in the manifest stay those of the unfolded model,
which is what PEFT adapts.

Pairs are found on the dataflow graph (torch.export), not by module order: a weight is folded only where its
layer's output goes to one BatchNorm and nowhere else, and that BatchNorm normalises nothing else.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from ..model_source import ExportSubject


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def foldable_pairs(subject: ExportSubject, targets) -> dict[str, str]:
    """{targeted weight name: name of the BatchNorm module that follows it and only it}."""
    if not _has_batchnorm(subject.model):
        return {}
    ep = torch.export.export(subject.export_module(), tuple(subject.example_inputs.values()), strict=False)
    sig = ep.graph_signature
    owner = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}  # placeholder -> "model.<torch name>"
    torch_name = lambda node: owner.get(getattr(node, "name", None), "").removeprefix("model.")  # noqa: E731
    bn_uses: dict[str, int] = {}
    for n in ep.graph.nodes:
        if n.op == "call_function" and "batch_norm" in str(n.target) and len(n.args) > 3:
            bn_uses[torch_name(n.args[3])] = bn_uses.get(torch_name(n.args[3]), 0) + 1
    pairs = {}
    for n in ep.graph.nodes:
        if n.op != "call_function" or len(n.args) < 2 or torch_name(n.args[1]) not in targets:
            continue
        users = list(n.users)
        if len(users) != 1 or "batch_norm" not in str(users[0].target) or users[0].args[0] is not n:
            continue
        mean_name = torch_name(users[0].args[3]) if len(users[0].args) > 3 else ""
        if mean_name.endswith(".running_mean") and bn_uses.get(mean_name) == 1:
            pairs[torch_name(n.args[1])] = mean_name.removesuffix(".running_mean")
    return pairs


def folded(gamma, beta, mean, var, eps: float, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """(g, the folded bias) as float32 numpy arrays, each op rounded once. The one definition: export folds with
    it and `shira-pack` recomputes it from a fine-tune's BatchNorm to tell whether that changed (torch's
    vectorised kernels may round differently, so torch is not used for it)."""
    f32 = np.float32
    gamma, beta, mean, var = (np.asarray(a, f32) for a in (gamma, beta, mean, var))
    g = (gamma / np.sqrt(var + f32(eps))).astype(f32)
    b = np.zeros_like(var) if bias is None else np.asarray(bias, f32)
    return g, ((b - mean) * g + beta).astype(f32)


def fold_batchnorm(subject: ExportSubject, targets) -> tuple[ExportSubject, dict[str, tuple[np.ndarray, dict]]]:
    """-> (a subject whose model is a folded deep copy, {weight name: (g as float32 [out_channels],
    {"module": the BatchNorm's name, "eps": its eps})}). The original model is left as it is: its names and
    fingerprint go into the manifest."""
    pairs = foldable_pairs(subject, targets)
    if not pairs:
        return subject, {}
    model = copy.deepcopy(subject.model)
    scales = {}
    with torch.no_grad():
        for wname, bn_name in pairs.items():
            layer = model.get_submodule(wname.removesuffix(".weight"))
            bn = model.get_submodule(bn_name)
            var, mean = bn.running_var.detach().float().numpy(), bn.running_mean.detach().float().numpy()
            gamma = bn.weight.detach().float().numpy() if bn.affine else np.ones_like(var)
            beta = bn.bias.detach().float().numpy() if bn.affine else np.zeros_like(var)
            g, bias = folded(gamma, beta, mean, var, bn.eps, None if layer.bias is None else layer.bias.detach().numpy())
            w = layer.weight
            layer.weight.copy_(w * torch.from_numpy(g).view(-1, *([1] * (w.ndim - 1))))
            layer.bias = torch.nn.Parameter(torch.from_numpy(bias))
            parent, _, leaf = bn_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, torch.nn.Identity())
            scales[wname] = (g, {"module": bn_name, "eps": float(bn.eps)})
    return dataclasses.replace(subject, model=model.eval()), scales
