"""What several test modules share (pytest puts tests/ on sys.path, so ``import helpers``)."""

from __future__ import annotations


def search_argv(max_gpus: int = 32, **options: str) -> list[str]:
    """A small `search`: llama2-7b on a100-40gb GPUs, 100B tokens, at most ``max_gpus``;
    then ``--name value`` for each of ``options`` in order (underscores as dashes)."""
    argv = ["search", "--model", "llama2-7b", "--gpu", "a100-40gb"]
    argv += ["--max-gpus", str(max_gpus), "--tokens", "100B"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", value]
    return argv
