"""The parametric loss law L(N, D) = E + A / N^alpha + B / D^beta and its compute optimum.

N is the number of parameters, D the number of training tokens. The named fits:

* ``epoch`` (the default): Besiroglu et al. 2024, "Chinchilla Scaling: A replication
  attempt" (arXiv:2404.10102, Epoch AI), their refit of Approach 3 on the data read off
  Hoffmann's Figure 4 (Eq. 2 / Table 1): E=1.8172 (1.82 rounded), A=482.01, B=2085.43,
  alpha=0.3478, beta=0.3658; it implies about 20 tokens per parameter at the optimum, as
  Chinchilla's Approaches 1 and 2 did.
* ``hoffmann``: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"
  (arXiv:2203.15556), Approach 3 (Sec. 3.3, Eq. 10): E=1.69, A=406.4, B=410.7,
  alpha=0.34, beta=0.28. The paper's Table 2 reports a=0.46, b=0.54 for this approach;
  the rounded constants give a = beta/(alpha+beta) = 0.452. This published fit disagrees
  with the paper's own Approaches 1 and 2 (it favours ~100 tokens per parameter at large
  budgets, so that the optimum at 100% utilization can come out smaller than what real
  plans at half that utilization choose); Besiroglu et al. show the fit is flawed.

Under the compute constraint C = 6 N D the loss is minimized in closed form:
N_opt = G (C/6)^a and D_opt = (C/6)^b / G, with a = beta/(alpha+beta),
b = alpha/(alpha+beta) and G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Training FLOPs per parameter per token of the C = 6ND approximation (Kaplan et al. 2020).
FLOP_PER_PARAM_TOKEN = 6.0
CONSTANTS = ("E", "A", "B", "alpha", "beta")
# The law a study uses unless told otherwise (see the module's docstring for why not hoffmann)
DEFAULT_FIT = "epoch"


@dataclass(frozen=True)
class LossFit:
    """One parametric fit L(N, D) = E + A/N^alpha + B/D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"
    source: str = ""

    def __post_init__(self) -> None:
        for key in CONSTANTS:
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(
                    f"loss fit {self.name!r}: {key} must be a finite number, got {v!r}"
                )
        if self.E < 0:
            raise ValueError(f"loss fit {self.name!r}: E must be >= 0, got {self.E}")
        for key in ("A", "B", "alpha", "beta"):
            if getattr(self, key) <= 0:
                raise ValueError(
                    f"loss fit {self.name!r}: {key} must be positive, got {getattr(self, key)}"
                )

    # ---- the law --------------------------------------------------------------------------
    def loss(self, params: Any, tokens: Any) -> Any:
        """Predicted loss (nats per token) of N parameters trained on D tokens; broadcasts."""
        n = np.asarray(params, dtype=np.float64)
        d = np.asarray(tokens, dtype=np.float64)
        out = self.E + self.A / n**self.alpha + self.B / d**self.beta
        return float(out) if np.ndim(out) == 0 else out

    @property
    def a(self) -> float:
        """Exponent of N_opt in C."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimum(self, compute_flop: float) -> tuple[float, float]:
        """The (N, D) minimizing the loss at C = 6 N D (closed form)."""
        if not (math.isfinite(compute_flop) and compute_flop > 0):
            raise ValueError(f"compute must be a positive number of FLOPs, got {compute_flop!r}")
        c6 = compute_flop / FLOP_PER_PARAM_TOKEN
        n = self.G * c6**self.a
        return n, c6 / n

    def iso_compute_loss(self, params: Any, compute_flop: float) -> Any:
        """Loss along the iso-FLOP curve: N parameters trained on C / (6 N) tokens."""
        n = np.asarray(params, dtype=np.float64)
        return self.loss(n, compute_flop / (FLOP_PER_PARAM_TOKEN * n))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rule_of_thumb(compute_flop: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """(N, D) of the "~20 tokens per parameter" rule at C = 6 N D: N = sqrt(C / (6 r))."""
    if not (math.isfinite(tokens_per_param) and tokens_per_param > 0):
        raise ValueError(f"tokens per parameter must be positive, got {tokens_per_param!r}")
    n = math.sqrt(compute_flop / (FLOP_PER_PARAM_TOKEN * tokens_per_param))
    return n, tokens_per_param * n


FITS: dict[str, LossFit] = {
    "hoffmann": LossFit(
        E=1.69,
        A=406.4,
        B=410.7,
        alpha=0.34,
        beta=0.28,
        name="hoffmann",
        source="Hoffmann et al. 2022 (arXiv:2203.15556), Approach 3, Sec. 3.3 Eq. 10",
    ),
    "epoch": LossFit(
        E=1.8172,
        A=482.01,
        B=2085.43,
        alpha=0.3478,
        beta=0.3658,
        name="epoch",
        source="Besiroglu et al. 2024 (arXiv:2404.10102), Epoch AI's replication of Approach 3",
    ),
}


def parse_loss_fit(text: str) -> LossFit:
    """``hoffmann``, ``epoch``, ``E=..,A=..,B=..,alpha=..,beta=..`` or a YAML/JSON file."""
    s = str(text).strip()
    if s.lower() in FITS:
        return FITS[s.lower()]
    if "=" in s:
        return _from_mapping(_pairs(s), "custom", f"--loss-fit {s}")
    path = Path(s)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        return _from_file(path)
    raise ValueError(
        f"--loss-fit {s!r}: unknown fit; use one of {', '.join(FITS)}, constants "
        "'E=1.69,A=406.4,B=410.7,alpha=0.34,beta=0.28', or a YAML/JSON file with those keys"
    )


def _pairs(s: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in s.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"--loss-fit: {part.strip()!r} is not KEY=VALUE; write E=..,A=..,B=..,alpha=..,beta=.."
            )
        out[key.strip()] = value.strip()
    return out


def _from_mapping(data: dict[str, Any], name: str, where: str) -> LossFit:
    unknown = sorted(set(data) - set(CONSTANTS) - {"name", "source"})
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CONSTANTS)}"
        )
    missing = [k for k in CONSTANTS if k not in data]
    if missing:
        raise ValueError(
            f"{where}: missing {', '.join(missing)} (give all of {', '.join(CONSTANTS)})"
        )
    values: dict[str, float] = {}
    for key in CONSTANTS:
        try:
            values[key] = float(data[key])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key}={data[key]!r} is not a number") from None
    return LossFit(
        **values, name=str(data.get("name", name)), source=str(data.get("source", where))
    )


def _from_file(path: Path) -> LossFit:
    import yaml

    if not path.is_file():
        raise ValueError(f"--loss-fit {str(path)!r}: no such file")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(
            f"--loss-fit {str(path)!r}: cannot be read: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"--loss-fit {str(path)!r}: expected a mapping of {', '.join(CONSTANTS)}")
    return _from_mapping(data, path.stem, f"loss fit file {str(path)!r}")
