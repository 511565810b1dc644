import numpy as np
import pytest
import torch

from patchshift.core.common.errors import ConfigError
from patchshift.core.engine.anomaly_map import anomaly_maps, gaussian_blur, gaussian_kernel1d
from patchshift.core.engine.index import BankIndex


def test_flat_index_is_exact():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(500, 16, generator=generator)
    queries = torch.randn(300, 16, generator=generator)
    distances, indices = BankIndex(bank, "flat").search(queries, k=2)
    brute = torch.cdist(queries, bank)
    expected, expected_idx = brute.topk(2, largest=False)
    assert torch.allclose(distances, expected, atol=1e-4)
    assert torch.equal(indices[:, 0], expected_idx[:, 0])


def test_torch_flat_index_matches_faiss(monkeypatch):
    """The GPU path without faiss-gpu (torch matrix products), run here on the CPU; chunked queries
    too."""
    import patchshift.core.engine.index as index_module
    from patchshift.core.engine.index import TorchFlatIndex

    monkeypatch.setattr(index_module, "TORCH_CHUNK_BYTES", 64 * 700 * 4)  # 64 queries per chunk
    generator = torch.Generator().manual_seed(1)
    # near the origin, and far from it as patch features are (averages of non-negative activations)
    for offset in (0.0, 40.0):
        bank = offset + torch.randn(700, 24, generator=generator)
        queries = bank[:150] + 0.05 * torch.randn(150, 24, generator=generator)
        queries = torch.cat([queries, offset + torch.randn(150, 24, generator=generator)])
        squared, indices = TorchFlatIndex(bank.numpy(), torch.device("cpu")).search(queries, k=3)
        distances, expected = BankIndex(bank, "flat").search(queries, k=3)
        assert torch.equal(indices, expected)
        assert torch.allclose(squared.clamp_min(0).sqrt(), distances, atol=1e-4)


def screened_on_cpu(bank: torch.Tensor, candidates: int = 8):
    """The GPU's approximate search, run here on the CPU (bfloat16: coarser than the GPU's
    float16, so a harder test of the exact second look)."""
    from patchshift.core.engine.index import TorchFlatIndex, TorchScreenedIndex

    exact = TorchFlatIndex(bank.numpy(), torch.device("cpu"))
    return TorchScreenedIndex(exact, dtype=torch.bfloat16, candidates=candidates)


def test_screened_search_finds_the_exact_neighbours_and_never_reports_less():
    generator = torch.Generator().manual_seed(4)
    # rows far from the origin with small differences between them: what breaks a naive half
    # precision product (large norms, small distances)
    bank = 40 + torch.randn(3000, 64, generator=generator)
    queries = bank[:500] + 0.05 * torch.randn(500, 64, generator=generator)
    queries = torch.cat([queries, 40 + torch.randn(500, 64, generator=generator)])
    squared, indices = screened_on_cpu(bank).search(queries, k=1)
    exact, expected = BankIndex(bank, "flat").search(queries, k=1)
    found = torch.linalg.vector_norm(queries - bank[indices[:, 0]], dim=1)
    assert torch.allclose(squared[:, 0].sqrt(), found, atol=1e-3)  # exact distances to its rows
    assert (found >= exact[:, 0] - 1e-4).all()  # never below the nearest row
    assert (indices[:, 0] == expected[:, 0]).float().mean() >= 0.99
    assert (found - exact[:, 0]).abs().max() < 0.05 * exact[:, 0].mean()
    # one candidate per query is the bare half-precision screen: it misses more
    rough, _ = screened_on_cpu(bank, candidates=1).search(queries, k=1)
    assert (rough[:, 0] - exact[:, 0].square()).abs().sum() > (
        squared[:, 0] - exact[:, 0].square()
    ).abs().sum()


def test_screened_image_scores_are_exact_after_re_searching_each_image_s_farthest_patches():
    generator = torch.Generator().manual_seed(5)
    bank = torch.randn(4000, 32, generator=generator)
    feats = torch.randn(5, 200, 32, generator=generator)
    index = BankIndex(bank, "ivf")
    index.torch_index = screened_on_cpu(bank, candidates=1)  # the GPU arrangement
    exact, _ = BankIndex(bank, "flat").search(feats.reshape(-1, 32))
    distances, _ = index.search_images(feats)
    assert torch.allclose(distances.amax(1), exact.view(5, 200).amax(1), atol=1e-4)


def test_ivf_index_is_close():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(4000, 8, generator=generator)
    queries = bank[:200] + 0.01 * torch.randn(200, 8, generator=generator)
    distances, _ = BankIndex(bank, "ivf", nprobe=8).search(queries)
    exact, _ = BankIndex(bank, "flat").search(queries)
    assert (distances >= exact - 1e-5).all()  # never closer than exact
    assert (distances - exact).abs().mean() < 0.05


def test_ivf_image_scores_are_exact_after_re_ranking_each_image_s_farthest_patches():
    generator = torch.Generator().manual_seed(3)
    bank = torch.randn(5000, 32, generator=generator)
    feats = torch.randn(
        6, 300, 32, generator=generator
    )  # 6 images of 300 patches, far from most rows
    ivf, flat = BankIndex(bank, "ivf", nprobe=1), BankIndex(bank, "flat")
    exact, _ = flat.search(feats.reshape(-1, 32))
    exact_max = exact.view(6, 300).amax(1)
    rough, _ = ivf.search(feats.reshape(-1, 32))
    assert not torch.allclose(
        rough.view(6, 300).amax(1), exact_max, atol=1e-4
    )  # one probe alone misses
    distances, nearest = ivf.search_images(feats)
    assert torch.allclose(
        distances.amax(1), exact_max, atol=1e-4
    )  # the image scores are exact again
    farthest = distances.argmax(1)
    rows = feats[torch.arange(6), farthest]
    assert torch.allclose(
        torch.linalg.vector_norm(rows - bank[nearest[torch.arange(6), farthest]], dim=1),
        exact_max,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    ("rows", "dim", "expected"),
    [
        (3000, 128, "flat"),
        (3001, 128, "ivf"),
        (10_000, 128, "ivf"),
        (10_000, 32, "flat"),
    ],
)
def test_auto_index_is_chosen_by_bank_size(rows, dim, expected):
    from patchshift.core.engine.index import resolve_kind

    assert resolve_kind("auto", rows, dim) == expected
    assert (
        resolve_kind("flat", rows, dim) == "flat" and resolve_kind("ivf", 10, 4) == "ivf"
    )  # a stated kind is kept
    with pytest.raises(ConfigError, match="unknown index kind"):
        resolve_kind("hnsw", rows, dim)


def test_index_rejects_empty_bank():
    with pytest.raises(ConfigError):
        BankIndex(torch.zeros(0, 4))


def test_gaussian_kernel():
    kernel = gaussian_kernel1d(4.0)
    assert kernel.numel() == 33  # truncated at 4 sigma, as scipy does
    assert torch.isclose(kernel.sum(), torch.tensor(1.0))
    assert kernel.argmax().item() == 16


def test_blur_matches_scipy_and_keeps_constants():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    image = rng.random((40, 50)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(image)[None], 2.0)[0].numpy()
    theirs = gaussian_filter(image, 2.0, mode="mirror", truncate=4.0)
    assert np.allclose(ours, theirs, atol=1e-5)
    constant = torch.full((1, 20, 20), 3.0)
    assert torch.allclose(gaussian_blur(constant, 4.0), constant)


def test_anomaly_map_peak_stays_in_place():
    patch = torch.zeros(1, 8, 8)
    patch[0, 2, 5] = 1.0
    heat = anomaly_maps(patch, (64, 64), 4.0)
    assert heat.shape == (1, 64, 64)
    y, x = divmod(heat[0].argmax().item(), 64)
    assert 16 <= y < 24 and 40 <= x < 48


def test_matrix_heatmap_equals_upsample_then_blur():
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    patch = torch.rand(3, 7, 11, generator=generator)
    direct = gaussian_blur(
        F.interpolate(
            patch.unsqueeze(1), size=(56, 88), mode="bilinear", align_corners=False
        ).squeeze(1),
        4.0,
    )
    assert torch.allclose(anomaly_maps(patch, (56, 88), 4.0), direct, atol=1e-5)
