"""Read a search space from YAML, reporting mistakes with file, line and key.

A space file has one top-level ``space:`` mapping::

    space:
      name: mt-nlg-530b
      model: mt-nlg-530b            # a catalog name, a model file, or an inline shape
      tokens: 270B
      gpus:                         # names, or mappings with overrides
        - a100-80gb
        - {name: h100-sxm, price_per_gpu_hour: 3.5, gpus_per_node: 8, profile: h100-sxm}
        - {name: gb200-nvl72, nvlink_domain: 72}  # GPUs per NVLink domain (whole nodes)
      num_gpus: {min: 8, max: 4096, step: node}   # step: node (whole nodes) or a number
      global_batch: 1920            # one value pins a dimension, a list leaves it free
      tp: [1, 2, 4, 8]
      pp: divisors                  # every divisor of the layers
      micro_batch: pow2             # powers of two up to the global batch
      recompute: all
      sequence_parallel: [false, true]
      vpp: [1, 3, 5, 7]
      zero: [0, 1]
      dp_overlap: true
      dtype: [bf16, fp8]            # several: compared per plan (a GPU without fp8 skips it)
      stage_layers: auto            # even | auto | [first, last]

Any dimension left out takes the default of ``SearchSpace.create``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vtrain_opt.resources import data_dir
from vtrain_opt.search.space import DIMENSIONS, SearchSpace, gpu_choice
from vtrain_opt.spec.model import ModelSpec, get_model
from vtrain_opt.spec.moe import MOE_SETUP_KEYS
from vtrain_opt.spec.plan import RECOMPUTE_MODES
from vtrain_opt.spec.setup import Setup
from vtrain_opt.spec.stages import parse_stage_layers
from vtrain_opt.units import parse_count, parse_money_usd

_KEYS = (
    "name",
    "description",
    "model",
    "seq_length",
    "tokens",
    "gpus",
    "num_gpus",
    "global_batch",
    *DIMENSIONS,
    "dtype",
    "attention",
    "framework",
    "dropout",
    "master_weights",
    "fp8_recipe",
    "stage_layers",
    "ep",
    "etp",
    *MOE_SETUP_KEYS,
)
_GPU_KEYS = (
    "name",
    "price_per_gpu_hour",
    "gpus_per_node",
    "nvlink_domain",
    "inter_node_gbps",
    "profile",
)
_NUM_GPUS_KEYS = ("min", "max", "step")
_KEYWORDS = {
    "tp": ("pow2",),
    "pp": ("divisors",),
    "micro_batch": ("pow2",),
    "recompute": ("all",),
    "sequence_parallel": ("both",),
    "vpp": ("auto",),
    "zero": ("all",),
}


class SpaceFileError(ValueError):
    """A mistake in a space file: 'FILE:LINE: KEY: what is wrong'."""


def space_names() -> list[str]:
    """Shipped spaces: the YAML files of ``search_spaces/`` with a top-level ``space:``."""
    out = []
    for p in sorted(data_dir("search_spaces").glob("*.yaml")):
        if p.stem not in ("models", "gpus") and "space:" in p.read_text():
            out.append(p.stem)
    return out


def resolve_space_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix.lower() in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(2, "no such space file", str(p))
        return p
    candidate = data_dir("search_spaces") / f"{name_or_path}.yaml"
    if name_or_path in space_names():
        return candidate
    raise ValueError(
        f"unknown space {name_or_path!r}; shipped spaces: {', '.join(space_names())} "
        "(or give a YAML file)"
    )


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped space by name, or a space YAML file."""
    path = resolve_space_path(name_or_path)
    return parse_space(path.read_text(), str(path), base_dir=path.parent)


def parse_space(text: str, source: str = "<space>", base_dir: Path | None = None) -> SearchSpace:
    """Build a space from YAML text; every error names ``source``, the line and the key."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise SpaceFileError(f"{source}:{line}: not valid YAML: {e.problem or e.context}") from None
    lines: dict[str, int] = {}
    if node is not None:
        _record_lines(node, "", lines)
    return _Builder(source, lines, base_dir or Path(".")).build(data)


def _record_lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{path}.{k.value}" if path else str(k.value)
            out[key] = k.start_mark.line + 1
            _record_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{path}[{i}]"
            out[key] = item.start_mark.line + 1
            _record_lines(item, key, out)


class _Builder:
    def __init__(self, source: str, lines: dict[str, int], base_dir: Path) -> None:
        self.source, self.lines, self.base_dir = source, lines, base_dir

    def fail(self, key: str, message: str) -> SpaceFileError:
        line = self.lines.get(key)
        while line is None and key:
            key_up = key.rsplit(".", 1)[0] if "." in key else ""
            line, key = self.lines.get(key_up), key_up
        return SpaceFileError(f"{self.source}:{line or 1}: {key or 'space'}: {message}")

    def build(self, data: Any) -> SearchSpace:
        if not isinstance(data, dict) or not isinstance(data.get("space"), dict):
            raise self.fail("", "expected a top-level 'space:' mapping")
        if set(data) - {"space"}:
            extra = sorted(set(data) - {"space"})[0]
            raise self.fail(extra, "unknown top-level key; a space file holds 'space:' only")
        s = data["space"]
        for key in s:
            if key not in _KEYS:
                raise self.fail(f"space.{key}", f"unknown key; allowed: {', '.join(_KEYS)}")
        model = self.model(s.get("model"))
        kwargs: dict[str, Any] = {}
        if "seq_length" in s:
            model = model.with_seq_length(self.integer("space.seq_length", s["seq_length"]))
        if "tokens" in s:
            try:
                kwargs["tokens"] = parse_count(s["tokens"], "tokens")
            except ValueError as e:
                raise self.fail("space.tokens", str(e).removeprefix("tokens: ")) from None
        gpus = self.gpus(s.get("gpus", ["a100-80gb"]))
        if "num_gpus" in s:
            kwargs.update(self.num_gpus(s["num_gpus"]))
        if "global_batch" in s:
            kwargs["global_batch"] = self.int_list("space.global_batch", s["global_batch"])
        for dim in ("tp", "cp", "pp", "micro_batch", "vpp", "zero", "ep", "etp"):
            if dim in s and s[dim] not in _KEYWORDS.get(dim, ()):
                kwargs[dim] = self.int_list(f"space.{dim}", s[dim], keywords=_KEYWORDS.get(dim, ()))
        if "recompute" in s and s["recompute"] != "all":
            values = s["recompute"] if isinstance(s["recompute"], list) else [s["recompute"]]
            for i, v in enumerate(values):
                if v not in RECOMPUTE_MODES:
                    key = (
                        f"space.recompute[{i}]"
                        if isinstance(s["recompute"], list)
                        else "space.recompute"
                    )
                    raise self.fail(
                        key, f"{v!r} is not one of {', '.join(RECOMPUTE_MODES)} (or all)"
                    )
            kwargs["recompute"] = values
        for dim in ("sequence_parallel", "dp_overlap"):
            if dim in s and s[dim] != "both":
                kwargs[dim] = self.bool_list(f"space.{dim}", s[dim])
        if "stage_layers" in s:
            try:
                kwargs["stage_layers"] = parse_stage_layers(s["stage_layers"])
            except ValueError as e:
                raise self.fail(
                    "space.stage_layers", str(e).removeprefix("stage_layers: ")
                ) from None
        setup_keys = ("dtype", "attention", "framework", "dropout", "master_weights", "fp8_recipe")
        setup_keys += MOE_SETUP_KEYS
        if any(k in s for k in setup_keys):
            dropout = s.get("dropout")
            if dropout is not None and (
                isinstance(dropout, bool) or not isinstance(dropout, (int, float))
            ):
                raise self.fail("space.dropout", f"{dropout!r} must be a probability in [0, 1)")
            dtype = s.get("dtype", "bf16")
            if isinstance(dtype, list):  # several: a dimension compared per plan
                if not dtype or not all(isinstance(d, str) for d in dtype):
                    raise self.fail("space.dtype", f"expected a dtype or a list of them: {dtype}")
                kwargs["dtypes"], dtype = dtype, dtype[0]
            try:
                kwargs["setup"] = Setup(
                    dtype=str(dtype),
                    attention=str(s.get("attention", "flash")),
                    framework=str(s.get("framework", "megatron")),
                    dropout=None if dropout is None else float(dropout),
                    master_weights=str(s.get("master_weights", "fp32")),
                    fp8_recipe=str(s.get("fp8_recipe", "delayed")),
                    **{k: s[k] for k in MOE_SETUP_KEYS if k in s},
                )
            except ValueError as e:
                key = next((k for k in setup_keys if k in s and k in str(e)), "dtype")
                raise self.fail(f"space.{key}", str(e)) from None
        try:
            return SearchSpace.create(
                model,
                gpus,
                name=str(s.get("name", model.name)),
                description=str(s.get("description", "")),
                **kwargs,
            )
        except ValueError as e:
            head, _, rest = str(e).partition(": ")
            if head.startswith("space.") and rest:
                key = head if head in self.lines else ".".join(head.split(".")[:2])
                raise self.fail(key, rest) from None
            raise self.fail("space", str(e)) from None

    # ---- pieces -------------------------------------------------------------------------
    def model(self, value: Any) -> ModelSpec:
        if value is None:
            raise self.fail("space", "missing key 'model' (a catalog name, a file or a shape)")
        try:
            if isinstance(value, dict):
                return ModelSpec.from_dict(value, name=value.get("name"))
            text = str(value)
            path = self.base_dir / text
            if text.endswith((".yaml", ".yml", ".json")):
                if not path.is_file():
                    raise ValueError(f"model file {str(path)!r} does not exist")
                return ModelSpec.from_file(path)
            return get_model(text)
        except ValueError as e:
            raise self.fail("space.model", str(e)) from None

    def gpus(self, value: Any) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict):  # {name: {overrides}} form
            items = [{"name": k, **(v or {})} for k, v in value.items()]
        if not items:
            raise self.fail("space.gpus", "give at least one GPU type")
        out = []
        for i, item in enumerate(items):
            key = f"space.gpus[{i}]" if isinstance(value, list) else "space.gpus"
            if isinstance(value, dict):
                key = f"space.gpus.{item['name']}"
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, dict) or "name" not in item:
                raise self.fail(key, "a GPU is a name or a mapping with 'name'")
            for k in item:
                if k not in _GPU_KEYS:
                    raise self.fail(f"{key}.{k}", f"unknown key; allowed: {', '.join(_GPU_KEYS)}")
            try:
                price = item.get("price_per_gpu_hour")
                if price is not None:
                    t = str(price).strip()
                    price = parse_money_usd(
                        t if t.startswith("$") or t.endswith("usd") else f"${t}", "price"
                    )
                out.append(
                    gpu_choice(
                        str(item["name"]),
                        price_per_gpu_hour_usd=price,
                        gpus_per_node=None
                        if item.get("gpus_per_node") is None
                        else self.integer(f"{key}.gpus_per_node", item["gpus_per_node"]),
                        inter_node_gbps=item.get("inter_node_gbps"),
                        profile=None if item.get("profile") is None else str(item["profile"]),
                        nvlink_domain=None
                        if item.get("nvlink_domain") is None
                        else self.integer(f"{key}.nvlink_domain", item["nvlink_domain"]),
                    )
                )
            except SpaceFileError:
                raise  # already names its file, line and key (a bad gpus_per_node, ...)
            except ValueError as e:
                sub = "price_per_gpu_hour" if "price" in str(e) else "name"
                sub = "nvlink_domain" if "nvlink_domain" in str(e) else sub
                raise self.fail(f"{key}.{sub}" if sub in item else key, str(e)) from None
        return out

    def num_gpus(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail("space.num_gpus", "expected a mapping {min: N, max: N, step: node|N}")
        for k in value:
            if k not in _NUM_GPUS_KEYS:
                raise self.fail(f"space.num_gpus.{k}", "unknown key; allowed: min, max, step")
        out: dict[str, Any] = {}
        if "min" in value:
            out["min_gpus"] = self.integer("space.num_gpus.min", value["min"])
        if "max" in value:
            out["max_gpus"] = self.integer("space.num_gpus.max", value["max"])
        step = value.get("step", "node")
        if step != "node":
            out["gpu_step"] = self.integer("space.num_gpus.step", step)
        return out

    def integer(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(key, f"expected a positive whole number, got {value!r}")
        try:
            n = float(str(value).replace("_", "").replace(",", ""))
        except ValueError:
            raise self.fail(key, f"expected a positive whole number, got {value!r}") from None
        if not n.is_integer() or n < 1:
            raise self.fail(key, f"expected a positive whole number, got {value!r}")
        return int(n)

    def int_list(self, key: str, value: Any, keywords: tuple[str, ...] = ()) -> list[int]:
        if isinstance(value, str) and value not in keywords:
            hint = f" or {' / '.join(keywords)}" if keywords else ""
            raise self.fail(key, f"expected a whole number or a list of them{hint}, got {value!r}")
        if key == "space.zero":
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                if isinstance(v, bool) or v not in (0, 1, 2, 3):
                    raise self.fail(
                        f"{key}[{i}]" if isinstance(value, list) else key,
                        f"{v!r} is not a ZeRO stage (0, 1, 2 or 3)",
                    )
            return [int(v) for v in values]
        if isinstance(value, list):
            if not value:
                raise self.fail(key, "the list is empty")
            return [self.integer(f"{key}[{i}]", v) for i, v in enumerate(value)]
        return [self.integer(key, value)]

    def bool_list(self, key: str, value: Any) -> list[bool]:
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if not isinstance(v, bool):
                raise self.fail(
                    f"{key}[{i}]" if isinstance(value, list) else key,
                    f"expected true or false, got {v!r}",
                )
        return list(values)
