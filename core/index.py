"""Nearest-neighbour search of patch features against the memory bank (FAISS, GPU when present)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ConfigError


def faiss_gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available() and faiss.get_num_gpus() > 0


class BankIndex:
    """Exact (flat L2) or IVF index over the bank rows; searches whole batches at once.

    Distances returned are Euclidean (not squared), as in PatchCore's scores.
    """

    def __init__(
        self, bank: torch.Tensor, kind: str = "flat", nprobe: int = 16, device: torch.device | str = "cpu"
    ) -> None:
        import faiss

        if bank.ndim != 2 or bank.shape[0] < 1:
            raise ConfigError(f"memory bank must be a non-empty (M, D) matrix, got shape {tuple(bank.shape)}")
        data = np.ascontiguousarray(bank.detach().to("cpu", torch.float32).numpy())
        dim = data.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatL2(dim)
        elif kind == "ivf":
            # ~4 sqrt(M) lists, at least 39 training points per list (FAISS's own minimum).
            nlist = max(1, min(int(4 * math.sqrt(len(data))), len(data) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            index.train(data)
            index.nprobe = min(nprobe, nlist)
        else:
            raise ConfigError(f"unknown index kind {kind!r}; use 'flat' or 'ivf'")
        index.add(data)
        # Search where the features live: on the GPU only for a CUDA model with faiss-gpu installed.
        self.use_gpu = torch.device(device).type == "cuda" and faiss_gpu_available()
        if self.use_gpu:
            import faiss.contrib.torch_utils  # noqa: F401  (lets FAISS take torch tensors)

            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, torch.cuda.current_device(), index)
        self.index = index
        self.kind = kind
        self.size, self.dim = data.shape

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (N, D) -> (distances (N, k), indices (N, k)) on the queries' device."""
        device = queries.device
        queries = queries.detach().to(torch.float32)
        if self.use_gpu:
            squared, indices = self.index.search(queries.to("cuda").contiguous(), k)
            return squared.clamp_min_(0).sqrt_().to(device), indices.to(device)
        squared, indices = self.index.search(np.ascontiguousarray(queries.cpu().numpy()), k)
        distances = torch.from_numpy(squared).clamp_min_(0).sqrt_()
        return distances.to(device), torch.from_numpy(indices).to(device)
