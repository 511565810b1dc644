import pytest
import torch

from patchshift.core.engine.coreset import (
    coreset_size,
    greedy_kcenter,
    kcenter_coreset,
    random_projection,
)


def covering_radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    return torch.cdist(points, centres).min(dim=1).values.max().item()


def test_greedy_kcenter_by_hand():
    # 1-D points 0, 1, 2, 10, 11 starting at 0: farthest is 11, then 2 is farthest from {0, 11}...
    # (dist 2)
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]]).unsqueeze(0)
    chosen = greedy_kcenter(points, 3, start=torch.tensor([0]))
    assert chosen.tolist() == [[0, 4, 2]]


def test_greedy_is_batched_over_groups():
    a = torch.tensor([[0.0], [5.0], [1.0]])
    b = torch.tensor([[3.0], [2.0], [9.0]])
    chosen = greedy_kcenter(torch.stack([a, b]), 2, start=torch.tensor([0, 0]))
    assert chosen.tolist() == [[0, 1], [0, 2]]


@pytest.mark.parametrize("max_iterations", [10_000, 50])  # exact greedy, then the partitioned path
def test_coreset_honours_size_and_covers_better_than_random(max_iterations):
    generator = torch.Generator().manual_seed(0)
    # clustered data: a few dense blobs plus scattered points, where random picks miss outliers
    centres = torch.randn(20, 16, generator=generator) * 5
    points = (
        centres[torch.randint(0, 20, (3000,), generator=generator)]
        + torch.randn(3000, 16, generator=generator) * 0.3
    )
    points = torch.cat([points, torch.randn(60, 16, generator=generator) * 12])
    size = 300
    picked = kcenter_coreset(points, size, projection_dim=8, seed=0, max_iterations=max_iterations)
    assert picked.numel() == size
    assert picked.unique().numel() == size
    radius = covering_radius(points, points[picked])
    random_radii = [
        covering_radius(points, points[torch.randperm(len(points), generator=generator)[:size]])
        for _ in range(5)
    ]
    assert radius <= min(random_radii)


def test_coreset_size_rules():
    assert coreset_size(1000, 0.1, None) == 100
    assert coreset_size(1000, 0.1, 40) == 40
    assert coreset_size(3, 0.1, None) == 1
    points = torch.randn(10, 4)
    assert kcenter_coreset(points, 50).tolist() == list(range(10))


def test_random_projection_keeps_small_inputs():
    x = torch.randn(5, 8)
    assert random_projection(x, 16, 0) is x
    assert random_projection(x, 4, 0).shape == (5, 4)
