"""The parametric loss law: closed-form optimum vs numerical minimization, named fits, parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from vtrain_opt.cli import main
from vtrain_opt.studies.lossfit import FITS, LossFit, parse_loss_fit, rule_of_thumb

BUDGETS_FLOP = (1e20, 5.76e23, 1e26)


def _numeric_optimum(fit: LossFit, compute: float) -> tuple[float, float]:
    """argmin over N of L(N, C / 6N), found by a bounded scalar search in log N."""
    res = minimize_scalar(
        lambda log_n: fit.iso_compute_loss(math.exp(log_n), compute),
        bounds=(math.log(1e6), math.log(1e15)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    n = math.exp(res.x)
    return n, compute / (6 * n)


@pytest.mark.parametrize("name", sorted(FITS))
@pytest.mark.parametrize("compute", BUDGETS_FLOP)
def test_closed_form_optimum_is_the_numerical_minimum(name: str, compute: float) -> None:
    fit = FITS[name]
    n, d = fit.optimum(compute)
    n_num, d_num = _numeric_optimum(fit, compute)
    assert n == pytest.approx(n_num, rel=1e-4)
    assert d == pytest.approx(d_num, rel=1e-4)
    assert 6 * n * d == pytest.approx(compute, rel=1e-12)
    # and it is a minimum: a step either way along the iso-FLOP curve costs loss
    for factor in (0.8, 1.25):
        assert fit.iso_compute_loss(n * factor, compute) > fit.loss(n, d)


def test_custom_constants_optimum_matches_numerics() -> None:
    fit = parse_loss_fit("E=1.5,A=300,B=900,alpha=0.3,beta=0.4")
    n, _ = fit.optimum(1e23)
    assert n == pytest.approx(_numeric_optimum(fit, 1e23)[0], rel=1e-4)


@pytest.mark.parametrize("name", sorted(FITS))
def test_optimum_scales_with_the_exponents(name: str) -> None:
    fit = FITS[name]
    n1, d1 = fit.optimum(1e22)
    n2, d2 = fit.optimum(1e24)
    assert n2 / n1 == pytest.approx(100**fit.a, rel=1e-9)
    assert d2 / d1 == pytest.approx(100**fit.b, rel=1e-9)
    assert fit.a + fit.b == pytest.approx(1.0)


def test_epoch_fit_gives_about_20_tokens_per_parameter_at_chinchilla_compute() -> None:
    # Besiroglu et al. 2024: their fit is consistent with Chinchilla's ~20 tokens/param;
    # Hoffmann's rounded Approach-3 constants are known to favour far more tokens.
    n, d = FITS["epoch"].optimum(5.76e23)
    assert 15 < d / n < 25
    n_h, d_h = FITS["hoffmann"].optimum(5.76e23)
    assert d_h / n_h > 2 * (d / n)


def test_rule_of_thumb() -> None:
    n, d = rule_of_thumb(1e24, 20)
    assert d / n == pytest.approx(20)
    assert 6 * n * d == pytest.approx(1e24)


def test_loss_broadcasts_and_decreases() -> None:
    fit = FITS["hoffmann"]
    n = np.array([1e9, 1e10, 1e11])
    loss = fit.loss(n, 1e12)
    assert loss.shape == (3,)
    assert np.all(np.diff(loss) < 0)
    assert fit.loss(1e10, 1e12) > fit.loss(1e10, 1e13) > fit.E


def test_parse_named_constants_and_file(tmp_path) -> None:
    assert parse_loss_fit("Epoch") is FITS["epoch"]
    fit = parse_loss_fit("E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28")
    assert (fit.E, fit.A, fit.B, fit.alpha, fit.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    f = tmp_path / "mine.yaml"
    f.write_text("E: 2.0\nA: 100\nB: 200\nalpha: 0.3\nbeta: 0.3\n")
    mine = parse_loss_fit(str(f))
    assert mine.name == "mine" and mine.B == 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chinchilla", "unknown fit"),
        ("E=1,A=2,B=3,alpha=0.3", "missing beta"),
        ("E=1,A=2,B=3,alpha=0.3,beta=x", "beta='x' is not a number"),
        ("E=1,A=2,B=3,alpha=0.3,beta=0.2,gamma=1", "unknown key(s) gamma"),
        ("E=1,A=-2,B=3,alpha=0.3,beta=0.2", "A must be positive"),
    ],
)
def test_bad_fits_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_loss_fit(text)


def test_cli_unknown_loss_fit_is_one_line_exit_2(capsys) -> None:
    code = main(
        ["chinchilla", "--num-gpus", "64", "--days", "7", "--loss-fit", "kaplan", "--workers", "0"]
    )
    err = capsys.readouterr()
    assert code == 2
    assert err.out == ""
    assert "unknown fit" in err.err and "Traceback" not in err.err
    assert len(err.err.strip().splitlines()) == 1
