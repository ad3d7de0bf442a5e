"""Training photos that ship inside scikit-image and scikit-learn (nothing is downloaded).

Eight photos train; scikit-learn's `flower.jpg` is held out for evaluation. Crops are random, with flips and a
small brightness/contrast jitter, drawn from a seeded generator so every run sees the same batches.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

TRAIN = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "china")
HELD_OUT = "flower"


@lru_cache(maxsize=None)
def photo(name: str) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1]."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        imgs = load_sample_images()
        arr = imgs.images[[n.split("/")[-1].split(".")[0] for n in imgs.filenames].index(name)]
    else:
        import skimage.data

        arr = getattr(skimage.data, name)()
    return torch.from_numpy(np.array(arr[..., :3])).permute(2, 0, 1).float() / 255.0


def random_crops(g: torch.Generator, n: int, size: int = 64, names=TRAIN, augment: bool = True) -> torch.Tensor:
    """[n, 3, size, size] crops of the named photos."""
    out = []
    for _ in range(n):
        img = photo(names[int(torch.randint(len(names), (1,), generator=g))])
        y = int(torch.randint(img.shape[1] - size + 1, (1,), generator=g))
        x = int(torch.randint(img.shape[2] - size + 1, (1,), generator=g))
        c = img[:, y : y + size, x : x + size]
        if augment:
            if torch.rand(1, generator=g) < 0.5:
                c = c.flip(2)
            if torch.rand(1, generator=g) < 0.2:
                c = c.flip(1)
            gain, bias = 0.85 + 0.3 * torch.rand(1, generator=g), 0.1 * (torch.rand(1, generator=g) - 0.5)
            c = ((c - 0.5) * gain + 0.5 + bias).clamp(0, 1)
        out.append(c)
    return torch.stack(out)


def eval_crops(n: int = 8, size: int = 96) -> torch.Tensor:
    """Fixed crops of the held-out photo."""
    return random_crops(torch.Generator().manual_seed(1234), n, size, names=(HELD_OUT,), augment=False)
