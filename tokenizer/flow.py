"""What a B-Flow flow token covers: single patches ranked most-changed first (``flow_mode: patch``) or changed
regions (``flow_mode: region``), found on the grid of ``flow_region`` cells.

Region mode, per frame (the decisions stay in :meth:`mmduplex.tokenizer.bflow.BFlowTokenizer._advance`; this
module only finds and describes candidate regions):

* **Changed regions**: cells whose flow score exceeds ``flow_threshold`` are seeds; a region is a connected set
  (8-neighbourhood) of cells scoring above ``region_grow * flow_threshold`` that holds a seed (hysteresis: the
  fringe a moving object leaves in a real encoder's receptive field joins its region instead of trickling out later).
  A region holding several blobs of cells new since the keyframe (beyond ``region_split * flow_threshold``) is split
  into one region per blob, its other cells joining the nearest blob, so two objects whose changes touch get a token
  each. A region wider or taller than ``region_max`` cells is cut into tiles of at most that side, so one token
  never stands for half the frame. Regions are ranked by their summed flow score (the largest change first).
* **Still regions** (the periodic refresh): cells whose current features differ from the last keyframe's by more
  than ``flow_threshold`` (beyond the frame's median difference) and that do not change now: what appeared since the
  keyframe and stayed (a shape that stopped, a shape that entered and stands still; also the place a shape shown
  by the keyframe has left). Found the same way (seeds = members), ranked after every changed region.
* **What a token carries**: its value is the region's features pooled with weights ``1 - cos(x, keyframe)``
  (floor :data:`POOL_FLOOR`): the part of the region that is new since the last full description (where an object
  now is) outweighs the part that went back to it (the background an object vacated). Its position embedding is
  the same weighted mean of its patches' position embeddings (a larger region has a blurrier, lower-amplitude
  embedding: position and extent in one vector); its reported position is the patch nearest that weighted centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLOW_MODES = ("patch", "region")
POOL_FLOOR = 0.05
"""Smallest pooling weight of a region's patch (a region identical to the keyframe is pooled uniformly)."""


@dataclass
class Regions:
    """Candidate regions of ``B`` videos, ``m`` in all, grouped by video and ranked within each (best first)."""

    batch: torch.Tensor  # [m] long: video of each region
    rank: torch.Tensor  # [m] long: rank within its video (0 = best)
    cells: torch.Tensor  # [m, R] bool: the region's cells
    score: torch.Tensor  # [m] float: summed flow score (ranking key)
    still: torch.Tensor  # [m] bool: a still region (a refresh), not a changed one

    @staticmethod
    def empty(num_cells: int, device: torch.device) -> Regions:
        long = torch.zeros(0, dtype=torch.long, device=device)
        cells = torch.zeros(0, num_cells, dtype=torch.bool, device=device)
        return Regions(long, long.clone(), cells, long.float(), long.bool())

    def count(self, batch_size: int) -> torch.Tensor:
        """``[B]`` regions per video."""
        return torch.bincount(self.batch, minlength=batch_size)

    def then(self, other: Regions, batch_size: int) -> Regions:
        """These regions, then ``other``'s ranked after them in each video."""
        offset = self.count(batch_size)[other.batch]
        return Regions(
            torch.cat([self.batch, other.batch]),
            torch.cat([self.rank, other.rank + offset]),
            torch.cat([self.cells, other.cells]),
            torch.cat([self.score, other.score]),
            torch.cat([self.still, other.still]),
        )

    def take(self, n: torch.Tensor) -> Regions:
        """The best ``n[b]`` regions of each video ``b``, ordered by video then rank."""
        keep = self.rank < n[self.batch]
        order = torch.argsort(self.batch[keep] * (self.cells.shape[1] + 1) * 2 + self.rank[keep])
        idx = keep.nonzero(as_tuple=True)[0][order]
        return Regions(self.batch[idx], self.rank[idx], self.cells[idx], self.score[idx], self.still[idx])

    def keep(self, mask: torch.Tensor) -> Regions:
        """The regions where ``mask`` ``[m]`` holds, ordered by video then rank; ranks renumbered within each video."""
        idx = mask.nonzero(as_tuple=True)[0]
        span = int(self.rank.max()) + 1 if self.rank.numel() else 1
        idx = idx[torch.argsort(self.batch[idx] * span + self.rank[idx])]
        batch = self.batch[idx]
        rank = torch.arange(batch.shape[0], device=batch.device) - torch.searchsorted(batch, batch, right=False)
        return Regions(batch, rank, self.cells[idx], self.score[idx], self.still[idx])

    def by_position(self, grid: tuple[int, int]) -> Regions:
        """The same regions, ordered by video then by the raster position of each region's centre (row, then
        column, of its cells' mean); ranks renumbered in that order."""
        h, w = grid
        cells = self.cells.float()  # [m, R]
        count = cells.sum(dim=1).clamp(min=1.0)
        index = torch.arange(h * w, device=cells.device, dtype=cells.dtype)
        row = (cells @ (index // w)) / count  # [m]
        col = (cells @ (index % w)) / count
        key = row * (w + 1) + col  # raster order of the centre, < (h + 1) * (w + 1)
        order = torch.argsort(self.batch.to(key.dtype) * (h + 1) * (w + 1) + key, stable=True)
        batch = self.batch[order]
        starts = torch.searchsorted(batch, batch, right=False)
        rank = torch.arange(batch.shape[0], device=batch.device) - starts
        return Regions(batch, rank, self.cells[order], self.score[order], self.still[order])

    def labels(self, batch_size: int) -> torch.Tensor:
        """``[B, R]`` long: 1 + the rank (within its video, so ``<= R``) of the region holding each cell, 0 where none
        does (the regions of a video do not overlap)."""
        out = torch.zeros(batch_size, self.cells.shape[1], dtype=torch.long, device=self.cells.device)
        region, cell = self.cells.nonzero(as_tuple=True)
        out[self.batch[region], cell] = self.rank[region] + 1
        return out

    def cover(self, batch_size: int) -> torch.Tensor:
        """``[B, R]`` bool: the cells of any region of each video."""
        hits = torch.zeros(batch_size, self.cells.shape[1], device=self.cells.device)
        return hits.index_add_(0, self.batch, self.cells.float()) > 0


def connected_labels(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Connected components (8-neighbourhood) of ``mask`` ``[B, R]`` on the ``grid`` -> labels ``[B, R]`` long: 0
    off the mask, else 1 + the largest cell index of the cell's component (deterministic, batch-independent)."""
    batch = mask.shape[0]
    index = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.float32)  # [R]
    labels = torch.where(mask, index, torch.zeros_like(index)).reshape(batch, 1, *grid)  # [B, 1, h, w]
    inside = mask.reshape(batch, 1, *grid).float()
    for _ in range(mask.shape[1]):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * inside
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.reshape(batch, -1).long()  # [B, R]


def find_regions(
    score: torch.Tensor,
    seeds: torch.Tensor,
    grow: torch.Tensor,
    grid: tuple[int, int],
    max_side: int | None,
    cores: torch.Tensor | None = None,
    still: bool = False,
) -> Regions:
    """Regions of ``grow`` ``[B, R]`` cells that hold a ``seeds`` cell, ranked by summed ``score`` ``[B, R]`` (ties:
    the region's first cell); ``still`` marks them as still regions.

    With ``cores`` ``[B, R]``, a region holding several connected blobs of core cells is split into one region per
    blob, each of its other cells joining the nearest blob (within the region; ties: the blob of the larger label);
    a region without a core cell stays whole. Then regions are tiled to ``max_side`` cells a side.
    """
    batch, num_cells = grow.shape
    h, w = grid
    labels = connected_labels(grow, grid)  # [B, R]
    seeded = torch.zeros(batch, num_cells + 1, dtype=torch.bool, device=grow.device)
    seeded = seeded.scatter_reduce(1, labels, seeds & grow, "amax")  # [B, R + 1]: the component holds a seed
    member = grow & seeded.gather(1, labels)  # [B, R]
    if not bool(member.any()):
        return Regions.empty(num_cells, grow.device)
    if cores is not None:
        labels = _split_at_cores(labels, member, member & cores, grid)  # [B, R] in [0, 2R]
    rows = torch.arange(num_cells, device=grow.device) // w  # [R]
    cols = torch.arange(num_cells, device=grow.device) % w
    if max_side is not None:  # tile a large region on a grid anchored at its top-left cell
        big = torch.full((batch, 2 * num_cells + 1), num_cells, dtype=torch.long, device=grow.device)
        top = big.scatter_reduce(1, labels, rows.expand(batch, -1), "amin").gather(1, labels)  # [B, R]
        left = big.scatter_reduce(1, labels, cols.expand(batch, -1), "amin").gather(1, labels)
        tile = ((rows - top) // max_side) * w + (cols - left) // max_side  # [B, R], < R
        labels = labels * num_cells + tile
    span = (2 * num_cells + 1) * num_cells  # labels < span
    key = torch.arange(batch, device=grow.device)[:, None] * span + labels  # [B, R] globally unique
    keys, region = torch.unique(key[member], return_inverse=True)  # sorted: by video, then label
    m = keys.shape[0]
    b_idx, c_idx = member.nonzero(as_tuple=True)  # row-major, matches key[member]
    cells = torch.zeros(m, num_cells, dtype=torch.bool, device=grow.device)
    cells[region, c_idx] = True
    total = torch.zeros(m, device=grow.device).index_add_(0, region, score[b_idx, c_idx].float())  # [m]
    region_batch = keys // span  # [m]
    first = cells.float().argmax(dim=1)  # [m]: the region's first cell (tie-break)
    order = torch.argsort(region_batch * (num_cells + 1) + first)
    order = order[torch.argsort(-total[order], stable=True)]
    order = order[torch.argsort(region_batch[order], stable=True)]  # by video, then score desc, then first cell
    rank = torch.empty_like(order)
    starts = torch.searchsorted(region_batch[order], region_batch[order], right=False)
    rank[order] = torch.arange(m, device=grow.device) - starts
    return Regions(region_batch, rank, cells, total, torch.full((m,), still, device=grow.device))


def _split_at_cores(labels: torch.Tensor, member: torch.Tensor, core: torch.Tensor, grid: tuple[int, int]):
    """Relabel ``member`` cells by their nearest ``core`` blob (labels 1..R); cells of a region without a core keep
    their region's label, moved to R+1..2R."""
    batch, num_cells = member.shape
    blob = connected_labels(core, grid).float().reshape(batch, 1, *grid)  # [B, 1, h, w]
    inside = member.reshape(batch, 1, *grid).float()
    for _ in range(num_cells):  # grow every blob one ring per pass, through the region's own cells only
        grown = torch.where(blob > 0, blob, F.max_pool2d(blob, 3, stride=1, padding=1) * inside)
        if torch.equal(grown, blob):
            break
        blob = grown
    blob = blob.reshape(batch, -1).long()  # [B, R]
    return torch.where(blob > 0, blob, torch.where(member, labels + num_cells, labels))


def pool_regions(
    x: torch.Tensor,
    batch: torch.Tensor,
    patches: torch.Tensor,
    weight: torch.Tensor,
    embedding: torch.Tensor,
    centres: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted pooling of ``n`` regions.

    Args:
        x: ``[B, P, D]`` features to pool.
        batch: ``[n]`` video of each region.
        patches: ``[n, P]`` bool, each region's patches.
        weight: ``[B, P]`` pooling weight of every patch (> 0).
        embedding: ``[P, D]`` position embeddings of the patches.
        centres: ``[P, 2]`` (row, col) of the patches.

    Returns:
        Values ``[n, D]``, pooled position embeddings ``[n, D]`` and the index ``[n]`` of the region's patch nearest
        its weighted centre (ties: the first such patch).
    """
    w = weight[batch] * patches  # [n, P]
    w = w / w.sum(dim=1, keepdim=True)
    values = torch.einsum("np,npd->nd", w, x[batch])  # [n, D]
    pos = _rows_by_video(w, embedding.to(w.dtype), batch)  # [n, D]
    centre = _rows_by_video(w, centres.to(w.dtype), batch)  # [n, 2]
    dist = ((centres[None].to(w.dtype) - centre[:, None]) ** 2).sum(-1)  # [n, P]
    nearest = torch.where(patches, dist, torch.full_like(dist, torch.inf)).argmin(dim=1)  # [n]
    return values, pos, nearest


def _rows_by_video(w: torch.Tensor, table: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``w @ table`` (``[n, P] @ [P, E]``) with each video's rows multiplied on their own: a matrix product's rounding
    can depend on how many rows it has, so a step over several videos gives each video's regions exactly what a
    step over that video alone gives (:meth:`~mmduplex.tokenizer.base.VideoTokenizer.tokenize_many`)."""
    if batch.numel() == 0 or bool((batch == batch[0]).all()):
        return w @ table
    out = w.new_empty(w.shape[0], table.shape[1])
    for b in torch.unique(batch).tolist():
        rows = (batch == b).nonzero(as_tuple=True)[0]
        out[rows] = w[rows] @ table
    return out
