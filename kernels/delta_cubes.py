"""DeltaQuant's activation split — the PyTorch reference.

Video tokens arrive flattened T-major, then H, then W, over a (T, H, W) grid. The grid is cut into
cubes of (ct, ch, cw) tokens; edge cubes are ragged (they hold fewer tokens and their mean is over
the tokens they hold), so any grid works. For a token x in a cube with mean c:

    x = c + d,    x̂ = Q_core(c) + Q_delta(d)

The core token c is one row per cube (FP8, group 64 by default); only the small deltas d go to
4 bits. A linear layer then computes Y = x̂ Wᵀ, which is exactly the paper's
Q8(C)·Wᵀ broadcast to the cube's tokens plus Q4(D)·Wᵀ.
"""

from __future__ import annotations

import torch

__all__ = ["clip_cube", "cube_ids", "cube_means", "cube_sizes", "split_deltas"]


def clip_cube(cube: tuple[int, int, int], grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The cube no larger than the grid (a grid smaller than the cube is one cube along that axis)."""
    return tuple(max(1, min(c, g)) for c, g in zip(cube, grid))


def cube_ids(grid: tuple[int, int, int], cube: tuple[int, int, int], device=None) -> tuple[torch.Tensor, int]:
    """Cube index of every token of a (T, H, W) grid in T-major order, and the number of cubes."""
    t, h, w = grid
    ct, ch, cw = clip_cube(cube, grid)
    nt, nh, nw = -(-t // ct), -(-h // ch), -(-w // cw)
    ti = torch.arange(t, device=device) // ct
    hi = torch.arange(h, device=device) // ch
    wi = torch.arange(w, device=device) // cw
    ids = (ti[:, None, None] * nh + hi[None, :, None]) * nw + wi[None, None, :]
    return ids.reshape(-1), nt * nh * nw


def cube_sizes(grid: tuple[int, int, int], cube: tuple[int, int, int], device=None) -> torch.Tensor:
    """Tokens in each cube, in `cube_ids`' order (edge cubes hold fewer) [n_cubes], fp32. From the
    grid's arithmetic, not by counting ids: `bincount` has a data-dependent output shape (a graph
    break under torch.compile) and counting with a scatter trips inductor's CPU code generation."""
    extents = [(g - torch.arange(-(-g // c), device=device) * c).clamp(max=c)
               for g, c in zip(grid, clip_cube(cube, grid))]
    t, h, w = extents
    return (t[:, None, None] * h[None, :, None] * w[None, None, :]).reshape(-1).to(torch.float32)


def cube_means(x: torch.Tensor, ids: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Mean token of each cube: x [B, N, K], ids [N], sizes [n_cubes] (its tokens) → [B, n_cubes, K] (fp32)."""
    b, _, k = x.shape
    sums = torch.zeros(b, sizes.numel(), k, dtype=torch.float32, device=x.device)
    sums.index_add_(1, ids, x.float())
    return sums / sizes.to(torch.float32)[None, :, None]


def split_deltas(x: torch.Tensor, grid: tuple[int, int, int], cube: tuple[int, int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, T·H·W, K] → (core tokens [B, n_cubes, K], deltas [B, N, K], cube ids [N]); fp32."""
    ids, n = cube_ids(grid, cube, x.device)
    if ids.numel() != x.shape[1]:
        raise ValueError(f"split_deltas: {x.shape[1]} tokens for a {grid} grid ({ids.numel()} tokens)")
    core = cube_means(x, ids, cube_sizes(grid, cube, x.device))
    return core, x.float() - core[:, ids], ids
