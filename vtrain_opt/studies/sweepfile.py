"""Read a sweep file: the cross product of scenarios, each one search, with stable ids.

A sweep file (YAML)::

    name: gpu-comparison              # optional (default: the file's stem)
    description: ...                  # optional
    product:                          # every key lists values; scenarios = cross product
      model: [llama3-70b, llama3-405b]
      gpu: [a100-80gb, h100-sxm, h200, b200]
      tokens: [2T, 15T]
      objective: [time, cost]
    search:                           # the same keys, one value each, for every scenario
      max_gpus: 8192
      max_days: 120

Keys (in ``product`` or ``search``, not both): ``model`` (catalog name or a model file,
relative to the sweep file), ``gpu`` (a name; a list of names searches them together),
``num_gpus`` (exactly that many GPUs) or ``min_gpus`` / ``max_gpus`` / ``gpu_step``,
``budget`` ($5M or 1e6gpu-h), ``max_days``, ``tokens`` (required), ``objective``
(time, cost or pareto; default time), the plan dimensions ``global_batch``, ``tp``,
``cp``, ``ep``, ``etp`` (a MoE model's), ``pp``, ``micro_batch``, ``recompute``,
``sequence_parallel``, ``vpp``, ``zero``, ``dp_overlap`` (one value or a list of candidates; in ``product`` a list of such), and
``seq_length``, ``price_per_gpu_hour``, ``gpus_per_node``, ``nvlink_domain``,
``inter_node_gbps``, ``profile``, ``dtype`` (one, or a list compared per plan: [bf16, fp8]),
``fp8_recipe``, ``stage_layers`` (even, auto or [first, last]), ``attention``,
``strategy``, ``trials``, ``sampler``, ``seed``.

Every mistake names the file, the line and the key. A scenario's id is a hash of its
normalized inputs (the model as its shape), so it does not depend on the order of keys,
on spelling (``1T`` = ``1e12``) or on where the file lives.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vtrain_opt.search.engine import OBJECTIVES, STRATEGIES
from vtrain_opt.spec.hardware import gpu_names
from vtrain_opt.spec.model import ModelSpec, load_model
from vtrain_opt.spec.plan import RECOMPUTE_MODES
from vtrain_opt.spec.setup import ATTENTION_KERNELS, DTYPES, FP8_RECIPES
from vtrain_opt.spec.stages import parse_stage_layers
from vtrain_opt.units import parse_budget, parse_count, parse_duration_s, parse_money_usd

FORMAT = "vtrain_opt.sweep/1"
TOP_KEYS = ("name", "description", "product", "search")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
REQUIRED = ("model", "gpu", "tokens")
ID_CHARS = 16


class SweepFileError(ValueError):
    """A mistake in a sweep file: 'FILE:LINE: KEY: what is wrong'."""


@dataclass(frozen=True)
class Scenario:
    """One search of a sweep: normalized inputs and a stable id."""

    id: str
    inputs: dict[str, Any]  # normalized values, the model as its name (for tables)
    model_spec: dict[str, Any]  # the model's shape (travels to Ray workers; no files there)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "inputs": self.inputs, "model_spec": self.model_spec}


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    source: str
    axes: tuple[str, ...]  # the product's keys, in file order
    fixed: dict[str, Any]
    scenarios: tuple[Scenario, ...] = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """Hash of every scenario id: two files with the same scenarios share it."""
        text = "\n".join(sorted(s.id for s in self.scenarios))
        return hashlib.sha256(text.encode()).hexdigest()[:ID_CHARS]

    def __len__(self) -> int:
        return len(self.scenarios)


# ---- value parsers: YAML value -> normalized JSON value; ValueError on a bad value ----------
def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected a whole number, got {v!r}")
    try:
        f = float(str(v).replace("_", "").replace(",", ""))
    except ValueError:
        raise ValueError(f"expected a whole number, got {v!r}") from None
    if not f.is_integer() or f < 1:
        raise ValueError(f"expected a positive whole number, got {v!r}")
    return int(f)


def _ints(v: Any) -> int | list[int]:
    if isinstance(v, list):
        if not v:
            raise ValueError("the candidate list is empty")
        return sorted({_int(x) for x in v})
    return _int(v)


def _zero(v: Any) -> int | list[int]:
    def one(x: Any) -> int:
        if isinstance(x, bool) or x not in (0, 1, 2, 3):
            raise ValueError(f"{x!r} is not a ZeRO stage (0, 1, 2, 3)")
        return int(x)

    if isinstance(v, list):
        if not v:
            raise ValueError("the candidate list is empty")
        return sorted({one(x) for x in v})
    return one(v)


def _bools(v: Any) -> bool | list[bool]:
    def one(x: Any) -> bool:
        if not isinstance(x, bool):
            raise ValueError(f"expected true or false, got {x!r}")
        return x

    if isinstance(v, list):
        if not v:
            raise ValueError("the candidate list is empty")
        return sorted({one(x) for x in v})
    return one(v)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v).strip().lower()
        if isinstance(v, bool) or s not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return s

    return parse


def _recompute(v: Any) -> str | list[str]:
    one = _choice(RECOMPUTE_MODES)
    if isinstance(v, list):
        if not v:
            raise ValueError("the candidate list is empty")
        return sorted({one(x) for x in v}, key=RECOMPUTE_MODES.index)
    return one(v)


def _gpu(v: Any) -> str | list[str]:
    known = gpu_names()

    def one(x: Any) -> str:
        s = str(x).strip().lower()
        if s not in known:
            raise ValueError(f"unknown GPU {x!r}; known: {', '.join(known)}")
        return s

    if isinstance(v, list):
        if not v:
            raise ValueError("the list of GPU types is empty")
        names = [one(x) for x in v]
        if len(set(names)) != len(names):
            raise ValueError("a GPU type is listed twice")
        return sorted(names)
    return one(v)


def _dtypes(v: Any) -> str | list[str]:
    """A dtype, or a list of them (a dimension of the scenario's space, in DTYPES order)."""
    one = _choice(DTYPES)
    if isinstance(v, list):
        if not v:
            raise ValueError("the candidate list is empty")
        values = sorted({one(x) for x in v}, key=DTYPES.index)
        return values if len(values) > 1 else values[0]
    return one(v)


def _stage_layers(v: Any) -> str:
    return parse_stage_layers(v)


def _tokens(v: Any) -> float:
    return float(parse_count(v, "tokens"))


def _budget(v: Any) -> dict[str, float]:
    if isinstance(v, (bool, int, float)):
        raise ValueError(f"{v!r} has no unit; write money as $5M or GPU time as 1e6gpu-h")
    b = parse_budget(str(v))
    return {"usd": b.usd} if b.usd is not None else {"gpu_hours": float(b.gpu_hours)}  # type: ignore[arg-type]


def _days(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"expected a duration, got {v!r}")
    return parse_duration_s(str(v), "max_days") / 86400.0


def _positive(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"expected a positive number, got {v!r}") from None
    if isinstance(v, bool) or not (math.isfinite(f) and f > 0):
        raise ValueError(f"expected a positive number, got {v!r}")
    return f


def _price(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return _positive(v)
    s = str(v).strip()
    return parse_money_usd(s if s.startswith("$") else f"${s}", "price_per_gpu_hour")


def _seed(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a whole number >= 0, got {v!r}")
    return int(v)


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"expected a name or a file, got {v!r}")
    return v.strip()


# key -> parser. ``model`` and ``profile`` are resolved against the sweep file's folder.
PARSERS: dict[str, Callable[[Any], Any]] = {
    "model": _text,
    "gpu": _gpu,
    "num_gpus": _int,
    "min_gpus": _int,
    "max_gpus": _int,
    "gpu_step": _int,
    "budget": _budget,
    "max_days": _days,
    "tokens": _tokens,
    "objective": _choice(OBJECTIVES),
    "global_batch": _ints,
    "tp": _ints,
    "cp": _ints,
    "ep": _ints,  # a MoE model's expert (tensor) parallel sizes
    "etp": _ints,
    "pp": _ints,
    "micro_batch": _ints,
    "recompute": _recompute,
    "sequence_parallel": _bools,
    "vpp": _ints,
    "zero": _zero,
    "dp_overlap": _bools,
    "seq_length": _int,
    "price_per_gpu_hour": _price,
    "gpus_per_node": _int,
    "nvlink_domain": _int,
    "inter_node_gbps": _positive,
    "profile": _text,
    "dtype": _dtypes,
    "stage_layers": _stage_layers,
    "fp8_recipe": _choice(FP8_RECIPES),
    "attention": _choice(ATTENTION_KERNELS),
    "strategy": _choice(STRATEGIES),
    "trials": _int,
    "sampler": _choice(SAMPLERS),
    "seed": _seed,
}
KEYS = tuple(PARSERS)


# ---- reading the file with line numbers ----------------------------------------------------
class _Lines:
    """Line numbers (1-based) of the keys and list items of a YAML document."""

    def __init__(self) -> None:
        self.at: dict[tuple[Any, ...], int] = {}

    def walk(self, node: yaml.Node, path: tuple[Any, ...], where: str) -> None:
        self.at.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise SweepFileError(
                        f"{where}:{line}: {'.'.join(map(str, (*path, key)))}: listed twice "
                        f"(first on line {seen[key]})"
                    )
                seen[key] = line
                self.at[(*path, key)] = line
                self.walk(value_node, (*path, key), where)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.at[(*path, i)] = item.start_mark.line + 1
                self.walk(item, (*path, i), where)

    def line(self, *path: Any) -> int:
        while path and path not in self.at:
            path = path[:-1]
        return self.at.get(path, 1)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file; raise SweepFileError 'FILE:LINE: KEY: ...'."""
    p = Path(path)
    where = str(p)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SweepFileError(f"{where}: no such sweep file") from None
    except OSError as e:
        raise SweepFileError(f"{where}: cannot be read ({e.strerror})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SweepFileError(f"{where}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SweepFileError(f"{where}:1: a sweep file is a mapping with a 'product:' section")
    lines = _Lines()
    lines.walk(node, (), where)
    return _build(data, lines, p, where)


def _build(data: dict[str, Any], lines: _Lines, path: Path, where: str) -> Sweep:
    def fail(msg: str, *keypath: Any) -> SweepFileError:
        key = ".".join(str(k) for k in keypath if not isinstance(k, int))
        return SweepFileError(f"{where}:{lines.line(*keypath)}: {key}: {msg}")

    for key in data:
        if key not in TOP_KEYS:
            raise fail(f"unknown key; allowed at the top: {', '.join(TOP_KEYS)}", key)
    product = data.get("product")
    if not isinstance(product, dict) or not product:
        raise fail("give a mapping of keys to lists of values (the scenarios' product)", "product")
    fixed_raw = data.get("search") or {}
    if not isinstance(fixed_raw, dict):
        raise fail("give a mapping of keys to one value each", "search")
    base = path.parent

    def parse(section: str, key: str, value: Any, *at: Any) -> Any:
        if key not in PARSERS:
            raise fail(f"unknown key; allowed: {', '.join(KEYS)}", section, key)
        try:
            if value is None:
                raise ValueError("no value given")
            out = PARSERS[key](value)
            if key == "model":
                out = _resolve_model(out, base)
            elif key == "profile":
                out = _resolve_file(out, base)
            return out
        except ValueError as e:
            msg = str(e).removeprefix(f"{key}: ")
            raise fail(msg, section, key, *at) from None

    fixed: dict[str, Any] = {}
    for key, value in fixed_raw.items():
        if key in product:
            raise fail(
                f"also in product (line {lines.line('product', key)}); give it in one place",
                "search",
                key,
            )
        if isinstance(value, list) and key in ("model", "budget", "tokens", "objective"):
            raise fail("one value here; list several values under product:", "search", key)
        fixed[key] = parse("search", key, value)

    axes: dict[str, list[Any]] = {}
    for key, values in product.items():
        if key not in PARSERS:
            raise fail(f"unknown key; allowed: {', '.join(KEYS)}", "product", key)
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise fail("the list is empty, so the sweep has no scenario", "product", key)
        parsed = []
        for i, v in enumerate(values):
            item = parse("product", key, v, i)
            norm = _canonical(item)
            for j, prev in enumerate(parsed):
                if _canonical(prev) == norm:
                    raise fail(f"{v!r} is the same value as item {j + 1}", "product", key, i)
            parsed.append(item)
        axes[key] = parsed

    given = set(axes) | set(fixed)
    for key in REQUIRED:
        if key not in given:
            raise fail(f"missing key {key!r} (in product or search)", "product")
    if "num_gpus" in given and given & {"min_gpus", "max_gpus"}:
        raise fail("give num_gpus (exactly) or min_gpus/max_gpus (a range), not both", "product")

    scenarios: dict[str, Scenario] = {}
    names = list(axes)
    for combo in itertools.product(*(axes[k] for k in names)):
        inputs = {**fixed, **dict(zip(names, combo, strict=True))}
        inputs.setdefault("objective", "time")
        sc = _scenario(inputs)
        scenarios.setdefault(sc.id, sc)
    name = str(data.get("name") or path.stem)
    return Sweep(
        name=name,
        description=str(data.get("description") or ""),
        source=str(path),
        axes=tuple(names),
        fixed=fixed,
        scenarios=tuple(scenarios.values()),
    )


def _resolve_model(text: str, base: Path) -> dict[str, Any]:
    """A catalog name or a model file (relative to the sweep file) -> {name, spec}."""
    candidate = base / text
    model: ModelSpec = load_model(str(candidate) if candidate.is_file() else text)
    return {"name": model.name, "spec": model.to_dict()}


def _resolve_file(text: str, base: Path) -> str:
    candidate = base / text
    return str(candidate.resolve()) if candidate.is_file() else text


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _scenario(inputs: dict[str, Any]) -> Scenario:
    model = inputs["model"]
    shown = {k: (model["name"] if k == "model" else v) for k, v in inputs.items()}
    keyed = {k: (model["spec"] if k == "model" else v) for k, v in inputs.items()}
    digest = hashlib.sha256(_canonical(keyed).encode()).hexdigest()[:ID_CHARS]
    return Scenario(id=digest, inputs=shown, model_spec=model["spec"])
