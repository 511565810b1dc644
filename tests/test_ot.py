import pytest
import torch

from patchshift.core.adapt.ot import chosen_by_bank, discretise, sinkhorn, sinkhorn_log


@pytest.mark.parametrize("solver", [sinkhorn, sinkhorn_log])
def test_sinkhorn_marginals_and_pot_agreement(solver):
    import ot

    generator = torch.Generator().manual_seed(0)
    cost = torch.rand(7, 5, generator=generator, dtype=torch.float64) * 3
    eps = 0.1
    plan = solver(cost, eps, max_iter=2000, tol=1e-10)
    assert torch.allclose(plan.sum(1), torch.full((7,), 1 / 7, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(plan.sum(0), torch.full((5,), 1 / 5, dtype=torch.float64), atol=1e-8)
    reference = ot.sinkhorn(
        torch.full((7,), 1 / 7, dtype=torch.float64).numpy(),
        torch.full((5,), 1 / 5, dtype=torch.float64).numpy(),
        cost.numpy(),
        reg=eps * cost.mean().item(),
        method="sinkhorn_log",
        numItermax=5000,
        stopThr=1e-12,
    )
    assert torch.allclose(plan, torch.from_numpy(reference), atol=1e-7)


@pytest.mark.parametrize("solver", [sinkhorn, sinkhorn_log])
def test_sinkhorn_is_stable_for_tiny_eps(solver):
    cost = torch.tensor([[0.0, 100.0], [100.0, 0.0]])
    plan = solver(cost, 1e-4)
    assert torch.isfinite(plan).all()
    assert torch.allclose(plan, torch.tensor([[0.5, 0.0], [0.0, 0.5]]), atol=1e-6)


def test_discretisation_by_hand():
    plan = torch.tensor(
        [
            [0.30, 0.05, 0.00],  # row argmax: col 0
            [0.25, 0.10, 0.02],  # row argmax: col 0 (column 0 prefers row 0)
            [0.01, 0.02, 0.20],  # row argmax: col 2
            [0.00, 0.09, 0.01],  # row argmax: col 1; column 1 prefers row 1
        ]
    )
    union = discretise(plan, "union")
    expected_union = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    assert torch.equal(union, expected_union)
    mutual = discretise(plan, "mutual")
    assert torch.equal(
        mutual, torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    )
    assert chosen_by_bank(plan).tolist() == [True, True, True, False]
    with pytest.raises(ValueError):
        discretise(plan, "other")


def test_fast_sinkhorn_matches_log_domain_on_realistic_costs():
    generator = torch.Generator().manual_seed(1)
    cost = torch.cdist(
        torch.randn(300, 16, generator=generator), torch.randn(500, 16, generator=generator) + 0.3
    )
    assert torch.allclose(sinkhorn(cost, 0.05), sinkhorn_log(cost, 0.05), atol=1e-7, rtol=1e-3)


def test_trimmed_loss_drops_the_costliest_discretised_pairs() -> None:
    import torch

    from patchshift.core.adapt.adapt_config import AdaptConfig
    from patchshift.core.adapt.ot import discretise, sinkhorn
    from patchshift.core.adapt.roda import ot_loss

    class Bankish:
        bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    patches = torch.tensor(
        [[0.1, 0.0], [0.9, 0.1], [0.0, 0.8], [5.0, 5.0]]
    )  # the last one is a "defect"
    cfg = AdaptConfig(target_patches=4, bank_rows=4, trim=0.25)
    cost = torch.cdist(patches, Bankish.bank)
    pairs = cost[discretise(sinkhorn(cost, cfg.eps, cfg.sinkhorn_iters))]
    expected = torch.sort(pairs).values[: round(len(pairs) * 0.75)].mean()
    got = ot_loss(Bankish(), cfg, continuous=False)(patches, torch.Generator().manual_seed(0), {})
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    untrimmed = ot_loss(Bankish(), AdaptConfig(target_patches=4, bank_rows=4), continuous=False)(
        patches, torch.Generator().manual_seed(0), {}
    )
    assert float(untrimmed) == pytest.approx(float(pairs.mean()), rel=1e-6) and float(
        untrimmed
    ) > float(got)
