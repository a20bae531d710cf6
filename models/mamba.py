"""Mamba (Gu & Dao 2023): the selective-SSM mixer, the residual pre-norm block and a stack of blocks.

One set of parameters, three ways to compute the same function:

(a) `mamba_ssm`'s fused CUDA kernels (`selective_scan_fn`, and `causal_conv1d_fn` when `causal-conv1d` is
    installed) for CUDA inputs. `mamba_ssm` is the optional extra `pip install .[cuda]`; it is imported
    lazily, only when a CUDA input arrives, and a failed import is never an error for `backend="auto"`.
(b) pure PyTorch, with a selective scan chosen by the input's device (`selective_scan`, method="auto"): on
    CPU compiled loops (numba, `models.cpu_kernels.SelectiveScanNumba`, forward and analytic backward; without
    numba a torch time loop with a hand-written reverse-time backward, `SelectiveScanLoop`); on other devices
    without `mamba_ssm` the *parallel* scan (`models.scan.associative_scan`, O(log T) depth). On a 2-core CPU
    both loops are faster than the parallel scan, which does several times their element-wise work and builds
    an autograd graph over every level (benchmarks/selective_scan.py; numbers in the README).
(c) a step mode that carries the convolution window and the SSM state, for acting one observation at a time.

Notation (Gu & Dao 2023, Alg. 2). `B` batch, `T` time, `E = d_inner = expand * d_model`, `N = d_state`,
`R = dt_rank`, `K = d_conv`. For every channel e and time t, with u the (convolved) input:

    Δ_t = softplus(W_Δ s_Δ(u_t) + b_Δ)                     (B, T, E)   s_Δ: the first R outputs of x_proj
    B_t, C_t = the next N and the last N outputs of x_proj  (B, T, N)
    Ā_t = exp(Δ_t A),  B̄_t u_t = Δ_t B_t u_t               (B, T, E, N)  A = -exp(A_log) < 0
    h_t = Ā_t ⊙ h_{t-1} + B̄_t u_t,  h_0 = 0                 (B, T, E, N)
    y_t = C_t · h_t + D ⊙ u_t                               (B, T, E)

The mixer: in_proj -> (u, z); u <- SiLU(causal depthwise conv1d(u)); y = SSM(u) ⊙ SiLU(z); out_proj(y).
Parameters carry `mamba_ssm.modules.mamba_simple.Mamba`'s names, shapes and initialisation (in_proj, conv1d,
x_proj, dt_proj, A_log, D, out_proj; inside a block `mixer` and `norm`, inside a stack `layers` and `norm_f`),
so a checkpoint trained on the CPU path loads unchanged for the CUDA path and vice versa.

Memory of the PyTorch path: the scan works on (B, T, E, N) tensors (Ā, B̄u, the states h and the scan's
intermediates, kept for the backward pass; the CPU loop keeps only Ā and h): 4·B·T·E·N bytes each in
float32, e.g. 134 MB for B=32, T=256, E=256, N=16. Fine for our sizes; the CUDA kernels keep the state in
SRAM instead.

Monte-Carlo dropout: each block applies `nn.Dropout(dropout)` to the mixer's output, before the residual
add: x + Dropout(Mamba(LayerNorm(x))). It follows the standard torch switch: active in `train()` mode (a
fresh mask per call), the identity in `eval()` mode. So MC dropout = train mode, and acting/evaluation =
eval mode. `step()` obeys the same switch: in train mode every step draws a fresh mask for its (B, d_model)
output, which has the same distribution as the (B, T, d_model) mask of the sequence mode; in eval mode
`step()` reproduces `forward()` exactly.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from models import cpu_kernels
from models.scan import associative_scan

BACKENDS = ("auto", "torch", "cuda")
SCAN_METHODS = ("auto", "loop", "numba", "parallel")  # selective_scan: "auto" = "numba" on CPU (else "loop"),
                                                     # "parallel" elsewhere
DT_INIT_FLOOR = 1e-4   # mamba_ssm's dt_init_floor: the smallest initial Δ
SCAN_CHUNK = None      # time steps per chunk of the PyTorch scan; None = one scan over the whole sequence
                       # (chunks were not faster on CPU: README, "Benchmarks (measured)"; see `linear_recurrence`)


# ----------------------------------------------------------------------------------------------------------
# Optional mamba_ssm kernels
# ----------------------------------------------------------------------------------------------------------

class MambaSSMKernels(NamedTuple):
    selective_scan_fn: Callable            # mamba_ssm.ops.selective_scan_interface.selective_scan_fn
    causal_conv1d_fn: Optional[Callable]   # causal_conv1d.causal_conv1d_fn, None when not installed


@functools.lru_cache(maxsize=1)
def load_mamba_ssm() -> tuple[Optional[MambaSSMKernels], str]:
    """Import the official kernels once. Returns (kernels, "") or (None, why not).

    `mamba_ssm` imports its compiled extension at module top, so on a machine without a CUDA build the
    import itself fails (ImportError, or OSError for a missing libcudart): every failure means "absent".
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # noqa: BLE001 -- any import failure means the extra is unusable here
        return None, f"mamba_ssm is not importable ({type(err).__name__}: {err}); install it with `pip install .[cuda]`"
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # noqa: BLE001 -- optional: the conv falls back to torch
        causal_conv1d_fn = None
    return MambaSSMKernels(selective_scan_fn, causal_conv1d_fn), ""


# ----------------------------------------------------------------------------------------------------------
# The selective scan in PyTorch
# ----------------------------------------------------------------------------------------------------------

def _combine(earlier: tuple[Tensor, Tensor], later: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Compose two affine maps h -> a h + b (first `earlier`, then `later`): (a₁, b₁) ∘ (a₂, b₂) =
    (a₂ a₁, a₂ b₁ + b₂). Associative, so h_t = (a_1, b_1) ∘ ... ∘ (a_t, b_t) applied to h_0 = 0 is a
    prefix scan."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def linear_recurrence(a: Tensor, b: Tensor, chunk_size: Optional[int] = SCAN_CHUNK) -> Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t with h_0 = 0, along dim 1, by a parallel scan.

    a, b: (B, T, *S). Returns h: (B, T, *S).

    `chunk_size=None` scans the whole sequence at once. Otherwise the time axis is cut into chunks of
    `chunk_size` steps: every chunk is scanned on its own (all chunks in parallel), giving the local states
    h^loc and the cumulative products P_t = a_{c0} ⋯ a_t from the chunk start c0; the states entering the
    chunks are a second, short scan over the chunk ends, and h_t = h^loc_t + P_t ⊙ h_{c0 - 1}. Same result with
    a shallower recursion; on CPU it was not faster than the single scan (SCAN_CHUNK), so it is opt-in.
    """
    T = a.shape[1]
    if chunk_size is None or T <= chunk_size:
        return associative_scan(_combine, (a, b), dim=1)[1]
    n_chunks = -(-T // chunk_size)
    pad = n_chunks * chunk_size - T
    if pad:  # identity maps (a = 1, b = 0) after the end change nothing before it
        a = torch.cat([a, a.new_ones((a.shape[0], pad, *a.shape[2:]))], dim=1)
        b = torch.cat([b, b.new_zeros((b.shape[0], pad, *b.shape[2:]))], dim=1)
    shape = (a.shape[0], n_chunks, chunk_size, *a.shape[2:])
    P, h_loc = associative_scan(_combine, (a.reshape(shape), b.reshape(shape)), dim=2)  # (B, C, L, *S)
    h_end = associative_scan(_combine, (P[:, :, -1], h_loc[:, :, -1]), dim=1)[1]       # (B, C, *S)
    h_in = torch.cat([torch.zeros_like(h_end[:, :1]), h_end[:, :-1]], dim=1)           # state before chunk
    h = h_loc + P * h_in.unsqueeze(2)
    return h.reshape(a.shape)[:, :T]


class SelectiveScanLoop(torch.autograd.Function):
    """The selective scan as a time loop with an analytic reverse-time backward (the CPU path).

    Forward (same symbols as the module docstring; every product element-wise over (E, N)):
        Ā_t = exp(Δ_t A),  h_0 = Δ_0 u_0 B_0,  h_t = Ā_t ⊙ h_{t-1} + Δ_t u_t B_t,  y_t = h_t C_t + D ⊙ u_t.
    Backward, given ∂L/∂y (B, T, E): the adjoint g_t = ∂L/∂h_t runs the same recurrence backwards in time,
        g_{T-1} = ∂L/∂y_{T-1} ⊗ C_{T-1},   g_t = Ā_{t+1} ⊙ g_{t+1} + ∂L/∂y_t ⊗ C_t,
    and with S_t = g_t ⊙ Ā_t ⊙ h_{t-1} (= ∂L/∂(Δ_t A), zero at t = 0):
        ∂L/∂C_t = Σ_e ∂L/∂y_t,e h_t,e          ∂L/∂B_t = Σ_e Δ_t,e u_t,e g_t,e        ∂L/∂A = Σ_{b,t} Δ_t ⊙ S_t
        ∂L/∂Δ_t = Σ_n A ⊙ S_t + u_t Σ_n g_t B_t    ∂L/∂u_t = D ∂L/∂y_t + Δ_t Σ_n g_t B_t    ∂L/∂D = Σ_{b,t} u ⊙ ∂L/∂y.
    The only sequential work is one in-place multiply-add on a (B, E, N) slice per step and direction; all
    other terms are a handful of whole-tensor element-wise ops and batched matrix products, so no autograd
    graph is built over the T steps. It computes the recurrence in the same order as a plain loop.
    Shapes as in `selective_scan`. Saves Ā and h, (B, T, E, N) each. Once differentiable.
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
        u, delta = u.contiguous(), delta.contiguous()                   # so that h[:, t] are plain slices
        T = u.shape[1]
        dA = torch.exp_(delta.unsqueeze(-1) * A)                        # Ā_t        (B, T, E, N)
        h = (delta * u).unsqueeze(-1) * B.unsqueeze(2)                 # Δ_t u_t B_t, becomes h_t in place
        for t in range(1, T):
            h[:, t].addcmul_(dA[:, t], h[:, t - 1])                   # h_t = Ā_t h_{t-1} + Δ_t u_t B_t
        y = torch.matmul(h, C.unsqueeze(-1)).squeeze(-1).addcmul_(D, u)   # (B, T, E)
        ctx.save_for_backward(u, delta, A, B, C, D, dA, h)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        u, delta, A, B, C, D, dA, h = ctx.saved_tensors
        grad_y, T = grad_y.contiguous(), u.shape[1]
        g = grad_y.unsqueeze(-1) * C.unsqueeze(2)                     # ∂L/∂y_t ⊗ C_t, becomes g_t in place
        for t in range(T - 2, -1, -1):
            g[:, t].addcmul_(dA[:, t + 1], g[:, t + 1])               # g_t += Ā_{t+1} g_{t+1}
        grad_C = torch.matmul(grad_y.unsqueeze(-2), h).squeeze(-2)    # (B, T, N)
        grad_B = torch.matmul((delta * u).unsqueeze(-2), g).squeeze(-2)
        grad_du = torch.matmul(g, B.unsqueeze(-1)).squeeze(-1)        # ∂L/∂(Δ_t u_t)  (B, T, E)
        S = torch.mul(g[:, 1:], h[:, :-1]).mul_(dA[:, 1:])            # S_t for t >= 1 (B, T-1, E, N)
        grad_A = torch.einsum("bten,bte->en", S, delta[:, 1:])
        grad_delta = grad_du * u
        grad_delta[:, 1:] += S.mul_(A).sum(-1)
        grad_u = torch.addcmul(grad_du * delta, grad_y, D)
        grad_D = (grad_y * u).sum((0, 1))
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                   chunk_size: Optional[int] = SCAN_CHUNK, method: str = "auto") -> Tensor:
    """The selective SSM y_t = C_t · h_t + D ⊙ u_t, h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t, h_0 = 0.

    u, delta: (B, T, E) (delta already positive); A: (E, N); B, C: (B, T, N); D: (E,). Returns y: (B, T, E).
    method: "numba" (`models.cpu_kernels.SelectiveScanNumba`: compiled loops, forward and analytic backward, CPU
    only; keeps only (E, N) states, no (B, T, E, N) tensor), "loop" (`SelectiveScanLoop`, a torch time loop),
    "parallel" (`linear_recurrence`, O(log T) depth, for GPUs; `chunk_size` applies to it only), "auto" (the
    default: for CPU tensors "numba" when numba is importable, else "loop"; "parallel" on other devices).
    All give the same values and gradients up to rounding. "loop" and "parallel" materialise (B, T, E, N) tensors
    (module docstring). Raises ValueError for an unknown method, or "numba" on a non-CPU tensor or without numba.
    """
    if method not in SCAN_METHODS:
        raise ValueError(f"method must be one of {SCAN_METHODS}, got {method!r}")
    on_cpu = u.device.type == "cpu"
    if method == "numba" and not (on_cpu and cpu_kernels.available()):
        raise ValueError(f"method 'numba' needs CPU tensors and numba installed, got a tensor on {u.device}")
    if method == "numba" or (method == "auto" and on_cpu and cpu_kernels.available()):
        return cpu_kernels.SelectiveScanNumba.apply(u, delta, A, B, C, D)
    if method == "loop" or (method == "auto" and on_cpu):
        return SelectiveScanLoop.apply(u, delta, A, B, C, D)
    dA = torch.exp(delta.unsqueeze(-1) * A)                    # Ā_t      (B, T, E, N)
    dBu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)           # B̄_t u_t  (B, T, E, N)
    h = linear_recurrence(dA, dBu, chunk_size)                 # h_t      (B, T, E, N)
    return torch.einsum("bten,btn->bte", h, C) + D * u


# ----------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------

class MambaState(NamedTuple):
    """The recurrent state of one Mamba layer after step t."""
    conv: Tensor  # (B, E, K-1): the conv inputs u_{t-K+2}, ..., u_t (oldest first; zeros before the start)
    ssm: Tensor   # (B, E, N): h_t


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Mamba(nn.Module):
    """The Mamba mixer (no norm, no residual): (B, T, d_model) -> (B, T, d_model).

    Same constructor defaults, parameter names, shapes and initialisation as `mamba_ssm`'s `Mamba`
    (dt_init="random", dt_scale=1, conv_bias=True, bias=False): Δ's bias is the inverse softplus of
    Δ ~ logUniform[dt_min, dt_max], A = -(1, 2, ..., N) in every channel (S4D-real), D = 1.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 backend: str = "auto"):
        super().__init__()
        _positive_int("d_model", d_model)
        _positive_int("d_state", d_state)
        _positive_int("d_conv", d_conv)
        if isinstance(expand, bool) or not isinstance(expand, (int, float)) or int(expand * d_model) < 1:
            raise ValueError(f"expand must be a number with int(expand * d_model) >= 1, got {expand!r}")
        if dt_rank != "auto":
            _positive_int("dt_rank", dt_rank)
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float)) and 0 < dt_min <= dt_max):
            raise ValueError(f"dt_min, dt_max must satisfy 0 < dt_min <= dt_max, got dt_min={dt_min!r}, "
                             f"dt_max={dt_max!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "cuda":
            missing = []
            if not torch.cuda.is_available():
                missing.append("no CUDA device is available")
            kernels, why = load_mamba_ssm()
            if kernels is None:
                missing.append(why)
            if missing:
                raise RuntimeError("Mamba backend='cuda' cannot run: " + "; ".join(missing)
                                   + ". Use backend='auto' or 'torch' for the pure-PyTorch path.")

        self.d_model, self.d_state, self.d_conv, self.backend = d_model, d_state, d_conv, backend
        self.d_inner = E = int(expand * d_model)
        self.dt_rank = R = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank

        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, bias=True)  # causal padding in forward
        self.x_proj = nn.Linear(E, R + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(E, 1)))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=False)

        # Δ's projection: weights U(±R^-1/2) keep the variance; bias = softplus^{-1}(Δ₀), Δ₀ ~ logU[dt_min, dt_max]
        nn.init.uniform_(self.dt_proj.weight, -R**-0.5, R**-0.5)
        dt0 = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt0 = dt0.clamp(min=DT_INIT_FLOOR)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt0 + torch.log(-torch.expm1(-dt0)))  # softplus^{-1}(x) = x + log(1 - e^-x)

    # -- shared pieces ------------------------------------------------------------------------------------
    def _ssm_params(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (..., E) -> Δ before bias and softplus (..., E), B (..., N), C (..., N)."""
        s_dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(s_dt, self.dt_proj.weight), B, C

    def _causal_conv(self, u: Tensor) -> Tensor:
        """Depthwise causal conv: (B, E, T) -> (B, E, T); output t sees inputs t-K+1..t (zeros before 0)."""
        return F.conv1d(F.pad(u, (self.d_conv - 1, 0)), self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)

    def uses_mamba_ssm(self, x: Tensor) -> bool:
        """Whether `forward(x)` runs the `mamba_ssm` kernels (fp32/fp16/bf16 CUDA inputs only)."""
        if self.backend == "torch":
            return False
        if self.backend == "cuda":
            if not x.is_cuda:
                raise RuntimeError(f"Mamba backend='cuda' needs a CUDA input, got a tensor on {x.device}")
            if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                raise RuntimeError(f"Mamba backend='cuda': mamba_ssm supports float32/float16/bfloat16, got {x.dtype}")
            return True
        return x.is_cuda and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and load_mamba_ssm()[0] is not None

    # -- sequence mode ------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, d_model) -> (B, T, d_model)."""
        u, z = self.in_proj(x).chunk(2, dim=-1)                               # (B, T, E) each
        if self.uses_mamba_ssm(x):
            y = self._mixer_mamba_ssm(load_mamba_ssm()[0], u, z)
        else:
            u = F.silu(self._causal_conv(u.transpose(1, 2))).transpose(1, 2)  # (B, T, E)
            dt, B, C = self._ssm_params(u)
            delta = F.softplus(dt + self.dt_proj.bias)                        # Δ_t (B, T, E)
            A = -torch.exp(self.A_log)                                        # (E, N)
            y = selective_scan(u, delta, A, B, C, self.D) * F.silu(z)
        return self.out_proj(y)

    def _mixer_mamba_ssm(self, kernels: MambaSSMKernels, u: Tensor, z: Tensor) -> Tensor:
        """The official kernels, in their channel-first layout. u, z: (B, T, E) -> y ⊙ SiLU(z): (B, T, E)."""
        u = u.transpose(1, 2).contiguous()                                    # (B, E, T)
        if kernels.causal_conv1d_fn is not None:
            u = kernels.causal_conv1d_fn(u, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        else:
            u = F.silu(self._causal_conv(u))
        dt, B, C = self._ssm_params(u.transpose(1, 2))                        # (B, T, E), (B, T, N) x2
        y = kernels.selective_scan_fn(
            u, dt.transpose(1, 2).contiguous(), -torch.exp(self.A_log.float()),
            B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), self.D.float(),
            z=z.transpose(1, 2).contiguous(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return y.transpose(1, 2)                                              # (B, T, E)

    # -- step mode ----------------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        """Zeros: the state before the first input. Device/dtype default to the parameters'."""
        _positive_int("batch_size", batch_size)
        device = self.A_log.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return MambaState(conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                          ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One time step in PyTorch (every backend). x_t: (B, d_model) -> (y_t (B, d_model), next state)."""
        u, z = self.in_proj(x_t).chunk(2, dim=-1)                              # (B, E)
        window = torch.cat([state.conv, u.unsqueeze(-1)], dim=-1)              # (B, E, K): u_{t-K+1..t}
        u = F.silu((window * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias)
        dt, B, C = self._ssm_params(u)
        delta = F.softplus(dt + self.dt_proj.bias)                             # (B, E)
        A = -torch.exp(self.A_log)                                             # (E, N)
        h = torch.exp(delta.unsqueeze(-1) * A) * state.ssm + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
        y = (h @ C.unsqueeze(-1)).squeeze(-1) + self.D * u                     # (B, E)
        return self.out_proj(y * F.silu(z)), MambaState(conv=window[..., 1:], ssm=h)


class MambaBlock(nn.Module):
    """One residual pre-norm layer: x + Dropout(Mamba(LayerNorm(x))). (B, T, d_model) -> (B, T, d_model).

    backend: "auto" (mamba_ssm kernels for CUDA inputs when importable, else PyTorch), "torch" (always the
    PyTorch path), "cuda" (always the kernels; RuntimeError at construction when no CUDA device or no
    mamba_ssm, and for non-CUDA inputs). Step mode is PyTorch for every backend.
    Dropout (p=`dropout`) acts on the mixer output before the residual add; on in train(), off in eval().
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.mixer = Mamba(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, backend)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _check(self, x: Tensor, name: str, dim: int) -> None:
        if x.dim() != dim or x.shape[-1] != self.mixer.d_model:
            want = "(B, T, d_model)" if dim == 3 else "(B, d_model)"
            raise ValueError(f"{name} must have shape {want} with d_model={self.mixer.d_model}, "
                             f"got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, d_model) -> (B, T, d_model)."""
        self._check(x, "x", 3)
        return x + self.dropout(self.mixer(self.norm(x)))

    def initial_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        return self.mixer.initial_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """x_t: (B, d_model) -> (y_t (B, d_model), next state). Eval mode: equals forward() at step t."""
        self._check(x_t, "x_t", 2)
        m = self.mixer
        want = {"conv": (x_t.shape[0], m.d_inner, m.d_conv - 1), "ssm": (x_t.shape[0], m.d_inner, m.d_state)}
        for name, shape in want.items():
            if tuple(getattr(state, name).shape) != shape:
                raise ValueError(f"state.{name} must have shape {shape}, got {tuple(getattr(state, name).shape)}")
        y, state = m.step(self.norm(x_t), state)
        return x_t + self.dropout(y), state


class MambaStack(nn.Module):
    """`n_layers` MambaBlocks and a final LayerNorm: (B, T, d_model) -> (B, T, d_model)."""

    def __init__(self, d_model: int, n_layers: int = 2, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        _positive_int("n_layers", n_layers)
        self.layers = nn.ModuleList(
            MambaBlock(d_model, d_state, d_conv, expand, dropout=dropout, backend=backend) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, d_model) -> (B, T, d_model)."""
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> list[MambaState]:
        return [layer.initial_state(batch_size, device, dtype) for layer in self.layers]

    def step(self, x_t: Tensor, states: list[MambaState]) -> tuple[Tensor, list[MambaState]]:
        """x_t: (B, d_model), one state per layer -> (y_t (B, d_model), next states)."""
        if len(states) != len(self.layers):
            raise ValueError(f"states must hold one MambaState per layer ({len(self.layers)}), got {len(states)}")
        new_states = []
        for layer, state in zip(self.layers, states):
            x_t, state = layer.step(x_t, state)
            new_states.append(state)
        return self.norm_f(x_t), new_states
