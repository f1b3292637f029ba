"""The memory a unit may plan against: the device's and the host's budgets.

Why its own module: the budgets read the machine (free device memory, available RAM, this
process's RSS) or the recipe's ``max_memory`` / ``max_host_memory``; the plan itself
(:mod:`sae_bilingual.study.memplan`) is pure arithmetic on shapes.
"""

from __future__ import annotations

import psutil
import torch

from sae_bilingual.config import Recipe
from sae_bilingual.config_checks import parse_bytes


def process_rss() -> int:
    """Resident bytes of this process now (Python, torch, libraries, the tokenised corpus)."""
    return int(psutil.Process().memory_info().rss)


def available_memory(device: str) -> tuple[int | None, str]:
    """Free memory of ``device`` now: (bytes or None when unknown, where the number came from)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None, "no CUDA device on this machine"
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)  # ours to reuse
        return int(free + cached), "torch.cuda.mem_get_info"
    if dev.type == "cpu":
        return int(psutil.virtual_memory().available), "available RAM (psutil)"
    return None, f"free memory of a {dev.type} device is not known"


def memory_budget(recipe: Recipe) -> tuple[int | None, str]:
    """The device budget a unit plans against: ``max_memory`` when set, else the device's free
    memory (on the CPU: the RAM available now plus what this process already holds)."""
    if recipe.max_memory is not None:
        return parse_bytes(recipe.max_memory), "max_memory"
    got, source = available_memory(recipe.device)
    if got is not None and torch.device(recipe.device).type == "cpu":
        return got + process_rss(), source + " + this process"
    return got, source


def host_memory_budget(recipe: Recipe) -> tuple[int | None, str]:
    """The host-RAM budget: ``max_host_memory`` when set, else the RAM available now plus what
    this process already holds (the plan counts the process itself)."""
    if recipe.max_host_memory is not None:
        return parse_bytes(recipe.max_host_memory, "max_host_memory"), "max_host_memory"
    got, source = available_memory("cpu")
    return (got + process_rss() if got is not None else None), source + " + this process"
