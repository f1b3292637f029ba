"""Helpers shared by the benchmark scripts: synthetic data, the SAELens-trainer step, timing.

The step harness ``trainer_step`` mirrors ``sae_lens.training.sae_trainer.SAETrainer._train_step``
(training_forward_pass under optional autocast, firing statistics, backward, grad-norm clip,
Adam step, zero_grad) so both SAEs are driven exactly as SAELens's trainer drives them.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def sync(device: str | torch.device) -> None:
    """Wait for queued device work so a host clock reads the real time."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class SyntheticData:
    """Structured SAE data: sparse non-negative combinations of random unit directions.

    x = b + sum_{j in S} c_j a_j + noise, |S| = ``active``, then L2-normalised. A TopK SAE with
    K >= active and n >= n_atoms can reconstruct it well, so the MSE after training means
    something (unlike on Gaussian noise).
    """

    d: int
    n_atoms: int
    active: int = 8
    noise: float = 0.02
    offset: float = 0.5
    seed: int = 0
    device: str = "cpu"
    atoms: torch.Tensor = field(init=False)
    bias: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        a = torch.randn(self.n_atoms, self.d, generator=g)
        self.atoms = (a / a.norm(dim=-1, keepdim=True)).to(self.device)
        b = torch.randn(self.d, generator=g)
        self.bias = (self.offset * b / b.norm()).to(self.device)

    @torch.no_grad()
    def batch(self, B: int, seed: int) -> torch.Tensor:
        """(B, d) unit-norm vectors; the same ``seed`` gives the same batch."""
        g = torch.Generator(device=self.device).manual_seed(10_000 + seed)
        idx = torch.randint(self.n_atoms, (B, self.active), generator=g, device=self.device)
        c = torch.rand(B, self.active, generator=g, device=self.device) + 0.1
        x = F.embedding_bag(idx, self.atoms, per_sample_weights=c, mode="sum")
        x += self.bias
        x += self.noise * torch.randn(B, self.d, generator=g, device=self.device)
        return x / x.norm(dim=-1, keepdim=True)


class TrainerState:
    """The per-SAE bookkeeping SAETrainer keeps (dead-latent counters, firing frequencies)."""

    def __init__(self, d_sae: int, device: str, dead_feature_window: int = 1000):
        self.since_fired = torch.zeros(d_sae, device=device)
        self.act_freq = torch.zeros(d_sae, device=device)
        self.window = dead_feature_window
        self.n_steps = 0

    def dead(self) -> torch.Tensor:
        return (self.since_fired > self.window).bool()


def trainer_step(sae, opt: torch.optim.Optimizer, x: torch.Tensor, st: TrainerState,
                 autocast_dtype: torch.dtype | None) -> float | torch.Tensor:
    """One step exactly as SAELens's SAETrainer._train_step does it; returns the mse loss tensor."""
    from sae_lens.saes.sae import TrainStepInput

    sae.train()
    ctx = (torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
           if autocast_dtype is not None else contextlib.nullcontext())
    with ctx:
        out = sae.training_forward_pass(step_input=TrainStepInput(
            sae_in=x, dead_neuron_mask=st.dead(), coefficients=sae.get_coefficients(),
            n_training_steps=st.n_steps, is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            if did_fire.is_sparse:
                did_fire = did_fire.to_dense()
            st.since_fired += 1
            st.since_fired[did_fire] = 0
            fs = firing.sum(0)
            st.act_freq += fs.to_dense() if fs.is_sparse else fs
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    st.n_steps += 1
    return out.losses["mse_loss"].detach()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def timed(fn, device: str) -> tuple[float, object]:
    """(seconds, result) of fn() with device syncs around it."""
    sync(device)
    t0 = time.perf_counter()
    r = fn()
    sync(device)
    return time.perf_counter() - t0, r


def machine_line() -> str:
    """One line naming the machine (CPU model / GPU, torch, threads)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    s = f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu}"
    if torch.cuda.is_available():
        s += f", GPU {torch.cuda.get_device_name(0)}"
    return s
