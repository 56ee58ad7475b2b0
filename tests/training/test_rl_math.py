"""The pieces of PPO (training/runners/rl.py) against hand computations and exact expectations."""

import math

import pytest
import torch

from training.runners import rl


def test_gae_matches_a_hand_computed_example():
    # Row 0: three real tokens, γ = 0.9, λ = 0.8, the score 1 on the last token.
    #   t=2: δ = 1 + 0 − 0.2 = 0.8                  A = 0.8
    #   t=1: δ = 0 + 0.9·0.2 − 0.4 = −0.22          A = −0.22 + 0.72·0.8 = 0.356
    #   t=0: δ = 0 + 0.9·0.4 − 0.5 = −0.14          A = −0.14 + 0.72·0.356 = 0.11632
    # Row 1: two real tokens, then padding whose (nonsense) reward and value must not leak in.
    #   t=1: δ = 2 + 0 − 0.5 = 1.5                  A = 1.5
    #   t=0: δ = 0.5 + 0.9·0.5 − 1 = −0.05          A = −0.05 + 0.72·1.5 = 1.03
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.2], [1.0, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = rl.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(advantages, torch.tensor([[0.11632, 0.356, 0.8], [1.03, 1.5, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[0.61632, 0.756, 1.0], [2.03, 2.0, 0.0]]), atol=1e-6)


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    advantages, returns = rl.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1]) * mask
    assert torch.allclose(returns, to_go, atol=1e-6)
    assert torch.allclose(advantages, (to_go - values) * mask, atol=1e-6)


def test_whitening_uses_only_real_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    whitened = rl.whiten(values, mask)
    # mean 2.5, unbiased variance 5/3: (x − 2.5)/√(5/3)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(5 / 3)
    assert torch.allclose(whitened[0, :4], expected, atol=1e-5) and whitened[0, 4] == 0
    kept = rl.whiten(values, mask, shift_mean=False)
    assert torch.allclose(kept[0, :4], expected + 2.5, atol=1e-5)
    assert rl.masked_mean(kept, mask).item() == pytest.approx(2.5)


def _surrogate_gradient(ratio: float, advantage: float, cliprange: float = 0.2):
    log_ratio = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, clip_fraction = rl.clipped_policy_loss(
        log_ratio, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), cliprange
    )
    loss.backward()
    return log_ratio.grad.item(), clip_fraction.item(), loss.item()


@pytest.mark.parametrize(
    "ratio, advantage, clipped",
    [
        (1.19, 1.0, False),
        (1.21, 1.0, True),  # a good token: pushed up until the ratio leaves 1 + ε ...
        (0.70, 1.0, False),  # ... and always when below 1 − ε (the step undoes a mistake)
        (0.81, -1.0, False),
        (0.79, -1.0, True),  # a bad token: pushed down until the ratio leaves 1 − ε ...
        (1.30, -1.0, False),  # ... and always when above 1 + ε
    ],
)
def test_clipped_surrogate_has_no_gradient_past_the_clip_in_the_advantages_direction(ratio, advantage, clipped):
    gradient, clip_fraction, loss = _surrogate_gradient(ratio, advantage)
    if clipped:
        assert gradient == 0.0 and clip_fraction == 1.0
        assert loss == pytest.approx(-advantage * (1.2 if advantage > 0 else 0.8))
    else:
        # d/dlogρ of −A·ρ is −A·ρ
        assert gradient == pytest.approx(-advantage * ratio) and clip_fraction == 0.0


def test_clipped_value_loss_stops_the_value_at_the_clip():
    returns, old = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    for value, expected_loss, expected_gradient, clipped in [
        (0.1, 0.5 * 0.81, -0.9, 0.0),  # inside the range: plain ½(V − R)²
        (0.5, 0.5 * 0.64, 0.0, 1.0),  # moved 0.5 > 0.2 toward R: the clipped error 0.8² counts, no gradient
        (-0.5, 0.5 * 2.25, -1.5, 0.0),  # moved away from R: the larger, unclipped error counts
    ]:
        v = torch.tensor([[value]], requires_grad=True)
        loss, fraction = rl.clipped_value_loss(v, old, returns, torch.ones(1, 1), 0.2)
        loss.backward()
        assert loss.item() == pytest.approx(expected_loss)
        assert v.grad.item() == pytest.approx(expected_gradient) and fraction.item() == clipped


def _tiny_distributions(scale: float = 1.0):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, generator=generator)
    ref_logits = logits + scale * torch.randn(6, generator=generator)
    return logits, ref_logits


def test_kl_estimators_have_the_exact_kl_as_expectation_on_a_tiny_vocabulary():
    logits, ref_logits = _tiny_distributions()
    exact = rl.exact_kl(logits, ref_logits).item()
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    manual = sum(math.exp(a) * (a - b) for a, b in zip(logp.tolist(), ref_logp.tolist()))
    assert exact == pytest.approx(manual) and exact > 0.1
    # Expectation identities: Σ_x π(x)·k(x) over the whole vocabulary is the KL, for k1 and for k3.
    probs = logp.exp()
    for estimator in rl.KL_ESTIMATORS:
        per_token = rl.kl_estimate(logp, ref_logp, estimator)
        assert (probs * per_token).sum().item() == pytest.approx(exact, rel=1e-5)
    assert (rl.kl_estimate(logp, ref_logp, "k3") >= 0).all()
    assert (rl.kl_estimate(logp, ref_logp, "k1") < 0).any()  # k1 is unbiased but not a per-token bound
    # Monte Carlo: the mean over tokens sampled from π, with the log-probs from token_logprobs.
    generator = torch.Generator().manual_seed(4)
    tokens = torch.multinomial(probs, 200_000, replacement=True, generator=generator)[None, :]
    sampled = rl.token_logprobs(logits.expand(1, tokens.shape[1], 6), tokens)
    ref_sampled = rl.token_logprobs(ref_logits.expand(1, tokens.shape[1], 6), tokens)
    for estimator in rl.KL_ESTIMATORS:
        estimates = rl.kl_estimate(sampled, ref_sampled, estimator)
        error = 4 * estimates.std().item() / math.sqrt(tokens.shape[1])
        assert abs(estimates.mean().item() - exact) < error


def test_k3_has_lower_variance_than_k1_when_the_policies_are_close():
    logits, ref_logits = _tiny_distributions(scale=0.1)
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    probs = logp.exp()

    def variance(estimator):
        values = rl.kl_estimate(logp, ref_logp, estimator)
        mean = (probs * values).sum()
        return (probs * (values - mean) ** 2).sum().item()

    assert variance("k3") < variance("k1") / 10


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 2]])
    expected = [2.0 - math.log(math.exp(2) + 1 + math.exp(-1)), -math.log(3)]
    assert rl.token_logprobs(logits, ids).squeeze(0).tolist() == pytest.approx(expected)
    assert torch.allclose(rl.token_logprobs(logits, ids, temperature=2.0), rl.token_logprobs(logits / 2, ids))
    entropy = rl.entropy_from_logits(logits).squeeze(0)
    probs = torch.softmax(logits[0, 0], -1)
    assert entropy[0].item() == pytest.approx(-(probs * probs.log()).sum().item())
    assert entropy[1].item() == pytest.approx(math.log(3))  # uniform: log |V|


def test_approximate_kl_between_old_and_new_policy():
    new, old, mask = torch.tensor([[0.1, -0.3, 5.0]]), torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0]])
    assert rl.approx_kl(new, old, mask).item() == pytest.approx(0.5 * (0.01 + 0.09) / 2)
    assert rl.approx_kl(old, old, mask).item() == 0.0
    k3 = ((math.exp(-0.1) - 1 + 0.1) + (math.exp(0.3) - 1 - 0.3)) / 2
    assert rl.approx_kl(new, old, mask, "k3").item() == pytest.approx(k3)


def test_response_mask_ends_at_the_first_eos_and_keeps_cut_off_responses_whole():
    eos, pad = 2, 2  # padding with the eos id itself, as tokenizers without a pad token do
    responses = torch.tensor([[5, 6, eos, pad], [7, 8, 9, 10], [eos, pad, pad, pad]])
    mask, has_eos = rl.response_mask(responses, [eos, 99])
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_kl_penalty_rewards_put_the_score_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -1.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = rl.kl_penalty_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.05, -1.0, 0.0]]))


def test_missing_eos_penalty_subtracts_or_replaces():
    scores, has_eos = torch.tensor([1.0, 2.0, -0.5]), torch.tensor([True, False, False])
    assert rl.penalize_missing_eos(scores, has_eos, None).tolist() == [1.0, 2.0, -0.5]
    assert rl.penalize_missing_eos(scores, has_eos, 1.0).tolist() == [1.0, 1.0, -1.5]
    assert rl.penalize_missing_eos(scores, has_eos, -3.0, "replace").tolist() == [1.0, -3.0, -3.0]
    with pytest.raises(ValueError, match="subtract or replace"):
        rl.penalize_missing_eos(scores, has_eos, 1.0, "ignore")


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    control = rl.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert control.update(12.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10_000))  # error 1.0, clipped to 0.2
    control = rl.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert control.update(6.6, 100) == pytest.approx(0.1 * (1 + 0.1 * 100 / 10_000))  # error 0.1: proportional
    control = rl.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert control.update(3.0, 100) == pytest.approx(0.1 * (1 - 0.2 * 100 / 10_000))
    for _ in range(200):  # far below the target for long: β keeps falling
        control.update(0.0, 100)
    assert control.value < 0.07
    assert control.update(float("nan"), 100) == control.value  # a broken batch does not move it
    assert rl.FixedKLController(0.1).update(100.0, 100) == 0.1
