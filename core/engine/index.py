"""Nearest-neighbour search of patch features against the memory bank (FAISS, GPU when present).

On a CUDA device without faiss-gpu (the PyPI faiss-gpu wheels trail CUDA releases) the search runs
in torch on the GPU: exact ("flat") as one fused matrix product and a row minimum per query chunk,
the same neighbours as FAISS's flat index up to float rounding; approximate ("ivf", and "auto" for
large banks) as a half-precision screen of every row, whose few best candidates per query are
measured again exactly. An inverted-file search in torch would gather each query's probed lists,
bytes that cost more on a GPU than the half-precision product of the whole bank; the screen keeps
to matrix products.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from patchshift.core.common.errors import ConfigError

# Bytes of one query-chunk x bank distance matrix on the GPU.
TORCH_CHUNK_BYTES = 512 * 1024 * 1024

# "auto": exact search costs patches x rows x D multiply-adds per image, the backbone a fixed amount
# per patch, so their ratio depends on the bank alone. On two CPU cores exact search stays within a
# quarter of the backbone's time up to about 3,000 rows of 128 dimensions (docs/design-history.md,
# "Index and search"); larger banks get an IVF index, whose AUROC equals exact search's to the third
# decimal.
AUTO_FLAT_MAX_CELLS = 3_000 * 128
KINDS = ("auto", "flat", "ivf")
# With IVF, each image's highest patches are searched again exactly (search_images).
RERANK_PER_IMAGE = 16
# The half-precision screen's candidates per query, measured again exactly.
SCREEN_CANDIDATES = 8


def resolve_kind(kind: str, rows: int, dim: int) -> str:
    """The index an "auto" bank gets: flat for small banks, approximate ("ivf") above
    AUTO_FLAT_MAX_CELLS."""
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if rows * dim <= AUTO_FLAT_MAX_CELLS else "ivf"


def faiss_gpu_available() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return (
        hasattr(faiss, "StandardGpuResources")
        and torch.cuda.is_available()
        and faiss.get_num_gpus() > 0
    )


class TorchFlatIndex:
    """Exact L2 search in torch on the bank's device (the GPU path when faiss-gpu is missing).

    Per query chunk one fused product ||b||^2 - 2 q.b (torch.addmm, the row norms as its bias) and
    a row minimum: the (queries x rows) matrix is written once and read once. Bank and queries are
    centred on the bank's mean first: patch features are averages of non-negative activations, far
    from the origin, where the expansion would lose the small distances to float32 cancellation."""

    def __init__(self, data: np.ndarray, device: torch.device) -> None:
        self.bank = torch.from_numpy(data).to(device)
        self.centre = self.bank.mean(0)
        self.centred = self.bank - self.centre
        self.norms = self.centred.square().sum(1)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (N, D) -> squared distances and indices (N, k)."""
        queries = queries.to(self.bank.device, torch.float32)
        k = min(k, len(self.bank))
        out_d, out_i = [], []
        step = max(1, TORCH_CHUNK_BYTES // (4 * len(self.bank)))
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step] - self.centre
            partial = torch.addmm(self.norms, chunk, self.centred.T, alpha=-2)  # ||b||^2 - 2 q.b
            if k == 1:
                values, indices = partial.min(dim=1, keepdim=True)
            else:
                values, indices = partial.topk(k, dim=1, largest=False)
            out_d.append(values.add_(chunk.square().sum(1, keepdim=True)))
            out_i.append(indices)
        return torch.cat(out_d), torch.cat(out_i)


class TorchScreenedIndex:
    """Approximate L2 search in torch: every row screened in half precision, each query's
    SCREEN_CANDIDATES best measured again exactly. The bank is centred and scaled to unit largest
    norm first (distances keep their order), so half precision neither overflows nor loses the
    small differences between near rows to large norms. A returned distance is an exact distance
    to a bank row, so never below the exact nearest one (search_images relies on that)."""

    def __init__(
        self,
        exact: TorchFlatIndex,
        dtype: torch.dtype = torch.float16,
        candidates: int = SCREEN_CANDIDATES,
    ) -> None:
        """`exact`: the exact index beside it, whose bank, centre and centred rows it shares."""
        self.bank, self.centre = exact.bank, exact.centre
        self.scale = float(exact.norms.max().clamp_min(1e-24).rsqrt())  # largest norm -> 1
        self.low = (exact.centred * self.scale).to(dtype)
        self.low_norms = (exact.norms * self.scale**2).to(dtype)
        self.dtype = dtype
        self.candidates = min(candidates, len(self.bank))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (N, D) -> squared distances and indices (N, k). For k above the candidates
        (the re-weighting's neighbours) the screen's k best are measured, in their exact order."""
        queries = queries.to(self.bank.device, torch.float32)
        r = max(min(k, len(self.bank)), self.candidates)
        out_d, out_i = [], []
        # per query: a row of the half-precision screen, and its r candidates' float32 differences
        step = max(1, TORCH_CHUNK_BYTES // (2 * len(self.bank) + 12 * r * self.bank.shape[1]))
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            low = ((chunk - self.centre) * self.scale).to(self.dtype)
            screen = torch.addmm(self.low_norms, low, self.low.T, alpha=-2)
            candidates = screen.topk(r, dim=1, largest=False).indices  # (n, r)
            exact = (self.bank[candidates] - chunk.unsqueeze(1)).square().sum(-1)  # (n, r)
            values, picked = exact.topk(min(k, r), dim=1, largest=False)
            out_d.append(values)
            out_i.append(candidates.gather(1, picked))
        return torch.cat(out_d), torch.cat(out_i)


class BankIndex:
    """Exact (flat L2) or IVF index over the bank rows, or "auto" (by bank size, resolve_kind);
    searches whole batches at once. Distances returned are Euclidean (not squared), as in
    PatchCore's scores.
    """

    def __init__(
        self,
        bank: torch.Tensor,
        kind: str = "flat",
        nprobe: int = 16,
        device: torch.device | str = "cpu",
    ) -> None:
        if bank.ndim != 2 or bank.shape[0] < 1:
            raise ConfigError(
                f"memory bank must be a non-empty (M, D) matrix, got shape {tuple(bank.shape)}"
            )
        data = np.ascontiguousarray(bank.detach().to("cpu", torch.float32).numpy())
        self.size, self.dim = data.shape
        on_cuda = torch.device(device).type == "cuda"
        self.use_gpu = on_cuda and faiss_gpu_available()
        self.kind = kind = resolve_kind(kind, self.size, self.dim)
        # exact search beside an approximate index: each image's farthest patches (search_images)
        self.exact = TorchFlatIndex(data, torch.device(device)) if kind == "ivf" else None
        self.torch_index: TorchFlatIndex | TorchScreenedIndex | None = None
        if on_cuda and not self.use_gpu:
            self.torch_index = (
                TorchScreenedIndex(self.exact)
                if self.exact is not None
                else TorchFlatIndex(data, torch.device(device))
            )
            self.index = None
            return
        import faiss

        dim = self.dim
        if kind == "flat":
            index = faiss.IndexFlatL2(dim)
        else:
            # ~4 sqrt(M) lists, at least 39 training points per list (FAISS's own minimum).
            nlist = max(1, min(int(4 * math.sqrt(len(data))), len(data) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            index.train(data)
            index.nprobe = min(nprobe, nlist)
        index.add(data)
        # Search where the features live: on the GPU only for a CUDA model with faiss-gpu installed.
        if self.use_gpu:
            import faiss.contrib.torch_utils  # noqa: F401  (lets FAISS take torch tensors)

            self._resources = faiss.StandardGpuResources()
            self._gpu_lock = (
                threading.Lock()
            )  # FAISS GPU indexes are not safe for concurrent searches
            index = faiss.index_cpu_to_gpu(self._resources, torch.cuda.current_device(), index)
        self.index = index

    @property
    def backend(self) -> str:
        if isinstance(self.torch_index, TorchScreenedIndex):
            return "torch, half-precision screen"
        return (
            "torch" if self.torch_index is not None else ("faiss-gpu" if self.use_gpu else "faiss")
        )

    def search_images(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, P, D), the patches of B images -> distance to and index of each patch's nearest
        bank row, (B, P) each.

        With IVF the image score (its farthest patch) stays exact: an approximate distance is never
        below the exact one, so once the patches searched exactly include every patch whose
        approximate distance exceeds the largest exact one, that largest exact one is the image's
        farthest patch. Each image's RERANK_PER_IMAGE farthest patches are searched exactly first,
        then any patch still above them, until none is (usually none after the first round)."""
        b, p, d = feats.shape
        distances, nearest = self.search(feats.reshape(-1, d), k=1)
        distances, nearest = distances.view(b, p), nearest.view(b, p)
        if self.exact is None:
            return distances, nearest
        refined = torch.zeros_like(distances, dtype=torch.bool)
        pick = torch.zeros_like(refined).scatter_(
            1, distances.topk(min(RERANK_PER_IMAGE, p), dim=1).indices, True
        )
        while pick.any():
            image, patch = pick.nonzero(as_tuple=True)
            squared, index = self.exact.search(feats[image, patch].detach().to(torch.float32), 1)
            distances[image, patch] = squared[:, 0].clamp_min(0).sqrt().to(distances.device)
            nearest[image, patch] = index[:, 0].to(nearest.device)
            refined |= pick
            farthest_exact = distances.masked_fill(~refined, -math.inf).amax(1, keepdim=True)
            pick = ~refined & (distances > farthest_exact)
        return distances, nearest

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (N, D) -> (distances (N, k), indices (N, k)) on the queries' device."""
        device = queries.device
        queries = queries.detach().to(torch.float32)
        if self.torch_index is not None:
            squared, indices = self.torch_index.search(queries, k)
            return squared.clamp_min_(0).sqrt_().to(device), indices.to(device)
        if self.use_gpu:
            with self._gpu_lock:  # the batcher and the worker may search one shared index at once
                squared, indices = self.index.search(queries.to("cuda").contiguous(), k)
            return squared.clamp_min_(0).sqrt_().to(device), indices.to(device)
        squared, indices = self.index.search(np.ascontiguousarray(queries.cpu().numpy()), k)
        distances = torch.from_numpy(squared).clamp_min_(0).sqrt_()
        return distances.to(device), torch.from_numpy(indices).to(device)
