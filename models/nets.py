"""Building blocks shared by the world models: MLPs, the Dreamer conv encoder/decoder, image
preprocessing, constrained parameter heads and diagonal-Gaussian helpers.

Conventions: `B` batch, `T` time, `D` feature size; images are (3, 64, 64).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def mlp(in_dim: int, out_dim: int, hidden_dim: int, n_layers: int, act: type[nn.Module] = nn.ELU,
        dropout: float = 0.0) -> nn.Sequential:
    """`n_layers` hidden layers of width `hidden_dim` with activation `act` (and dropout after each),
    then a linear output layer. `n_layers=0` gives a single linear layer."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden_dim), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def over_time(module: nn.Module, x: Tensor, event_dims: int) -> Tensor:
    """Apply `module` to every step of `x` (B, T, *event) by folding time into the batch.
    `event_dims` is the number of trailing dimensions the module consumes (1 for vectors, 3 for images)."""
    lead = x.shape[: x.dim() - event_dims]
    y = module(x.reshape(-1, *x.shape[x.dim() - event_dims:]))
    return y.reshape(*lead, *y.shape[1:])


def preprocess_image(obs: Tensor, bits: int = 5, dequantize: bool = False) -> Tensor:
    """uint8 images -> floats in [-0.5, 0.5) (PlaNet/VRKN): reduce to `bits` bits, scale, and optionally add
    uniform dequantisation noise (training only)."""
    if obs.dtype != torch.uint8:
        raise ValueError(f"obs: expected uint8 images, got {obs.dtype}")
    bins = 2**bits
    x = torch.floor(obs.float() / 2 ** (8 - bits))
    if dequantize:
        x = x + torch.rand_like(x)
    return x / bins - 0.5


class ConvEncoder(nn.Module):
    """Dreamer/PlaNet encoder: 4 convs (kernel 4, stride 2, no padding, channels 32/64/128/256 for depth 32),
    ReLU, flatten. (B, 3, 64, 64) -> (B, 32 * depth) = (B, 1024)."""

    def __init__(self, depth: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, depth, 4, 2), nn.ReLU(),
            nn.Conv2d(depth, 2 * depth, 4, 2), nn.ReLU(),
            nn.Conv2d(2 * depth, 4 * depth, 4, 2), nn.ReLU(),
            nn.Conv2d(4 * depth, 8 * depth, 4, 2), nn.ReLU(),
            nn.Flatten(),
        )
        self.out_dim = 32 * depth

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Dreamer/PlaNet decoder: Linear -> (32*depth, 1, 1) -> deconvs (kernel 5, 5, 6, 6; stride 2; channels
    128/64/32/3 for depth 32). (B, in_dim) -> mean image (B, 3, 64, 64)."""

    def __init__(self, in_dim: int, depth: int = 32):
        super().__init__()
        self.fc = nn.Linear(in_dim, 32 * depth)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * depth, 4 * depth, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(4 * depth, 2 * depth, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(2 * depth, depth, 6, 2), nn.ReLU(),
            nn.ConvTranspose2d(depth, 3, 6, 2),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z)[:, :, None, None])


def is_image(obs_shape: tuple[int, ...]) -> bool:
    """Pixel observations are (3, H, W); state observations are (D,)."""
    if len(obs_shape) == 3:
        return True
    if len(obs_shape) == 1:
        return False
    raise ValueError(f"obs_shape: expected (3, 64, 64) or (D,), got {obs_shape}")


def make_encoder(obs_shape: tuple[int, ...], hidden_dim: int, depth: int = 32, n_layers: int = 3) -> tuple[nn.Module, int]:
    """Conv encoder for images, `n_layers`-layer ELU MLP for state vectors. Returns (module, output size)."""
    if is_image(obs_shape):
        enc = ConvEncoder(depth)
        return enc, enc.out_dim
    return nn.Sequential(mlp(obs_shape[0], hidden_dim, hidden_dim, n_layers - 1), nn.ELU()), hidden_dim


def make_decoder(in_dim: int, obs_shape: tuple[int, ...], hidden_dim: int, depth: int = 32, n_layers: int = 3) -> nn.Module:
    """Decoder to the mean of p(o_t | z_t): conv decoder for images, MLP for state vectors."""
    if is_image(obs_shape):
        return ConvDecoder(in_dim, depth)
    return mlp(in_dim, obs_shape[0], hidden_dim, n_layers)


def obs_to_target(obs: Tensor, image: bool, dequantize: bool) -> Tensor:
    """What the encoder sees and the decoder reconstructs: preprocessed images, or the float state vector."""
    return preprocess_image(obs, dequantize=dequantize) if image else obs.float()


def gaussian_log_lik(x: Tensor, mean: Tensor, event_dims: int, std: float = 1.0) -> Tensor:
    """log N(x | mean, std^2 I), summed over the trailing `event_dims` dimensions."""
    ll = -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * LOG_2PI
    return ll.flatten(-event_dims).sum(-1) if event_dims > 0 else ll


def scaled_sigmoid(raw: Tensor, lower: float, upper: float, init: float) -> Tensor:
    """lower + (upper - lower) * sigmoid(raw + shift), with the shift chosen so that raw = 0 gives `init`
    (VRKN's scaled-shifted sigmoid)."""
    if not lower < init < upper:
        raise ValueError(f"init: {init} must lie strictly between lower={lower} and upper={upper}")
    p = (init - lower) / (upper - lower)
    shift = math.log(p / (1 - p))
    return lower + (upper - lower) * torch.sigmoid(raw + shift)


def softplus_positive(raw: Tensor, init: float, floor: float) -> Tensor:
    """softplus(raw + shift) + floor, with raw = 0 giving `init` (VRKN's variance parameterisation)."""
    if init <= floor:
        raise ValueError(f"init: {init} must exceed floor={floor}")
    shift = math.log(math.expm1(init - floor))
    return F.softplus(raw + shift) + floor


def diag_gaussian_kl(mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mu_q, diag var_q) || N(mu_p, diag var_p)), summed over the last dimension."""
    return 0.5 * (torch.log(var_p) - torch.log(var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0).sum(-1)


def reward_scale_for(reward_loss_scale: float | None, image: bool) -> float:
    """The weight of the reward NLL in a world-model loss: `reward_loss_scale`, or if None, by observation type:
    10 for images (VRKN's `decoder_loss_scales`, whose settings all have images, where the reconstruction NLL sums
    12288 pixels) and 1 for state vectors (CoRAL's `reward_scale_factor`; docs/paper-notes.md#reward-weight)."""
    if reward_loss_scale is not None:
        return float(reward_loss_scale)
    return 10.0 if image else 1.0


class LatentObservation(nn.Module):
    """The observation side of the inference model shared by KalMamba and VRKN: the encoder φ, the auxiliary
    (latent) observation w_t with its diagonal variance, and the learned initial belief (docs/paper-notes.md#model).

        e_t = φ(o_t),   w_t = Linear(e_t),   σ²_w,t = softplus(Linear(e_t) + shift) + obs_var_min
        q(w_t | z_t) = N(w_t | z_t, diag σ²_w,t)                      (H = I; σ²_w,t = obs_var_init at Linear = 0)
        z_0 ~ N(μ_0 = 0, diag σ²_0),   σ²_0 = softplus(θ + shift) + init_var_min   (θ learned; σ²_0 = init_var at 0)

    Source: VRKN (Becker & Neumann 2022; its "diagonal Gaussian parameter layer" and learned initial state); KalMamba
    shares φ and w_t between the Kalman filter and the backbone (paper Fig. 2).
    Shapes: obs (B, T, *obs_shape) -> target (B, T, *obs_shape), w and var_w (B, T, D); mu0 and var0 (D,).
    """

    # names of this block's tensors when they sat directly on the world model (checkpoints written before it existed)
    LEGACY_MODULES, LEGACY_TENSORS = ("encoder.", "w_head.", "var_w_head."), ("mu0", "raw_var0")

    @classmethod
    def from_config(cls, obs_shape: tuple[int, ...], cfg) -> "LatentObservation":
        """The block of a model config with KalMamba's and VRKN's field names (latent_dim, mlp_hidden_dim,
        conv_depth, mlp_layers, obs_var_init, obs_var_min, init_var, init_var_min)."""
        return cls(obs_shape, cfg.latent_dim, mlp_hidden_dim=cfg.mlp_hidden_dim, conv_depth=cfg.conv_depth,
                   mlp_layers=cfg.mlp_layers, obs_var_init=cfg.obs_var_init, obs_var_min=cfg.obs_var_min,
                   init_var=cfg.init_var, init_var_min=cfg.init_var_min)

    def __init__(self, obs_shape: tuple[int, ...], latent_dim: int, *, mlp_hidden_dim: int, conv_depth: int,
                 mlp_layers: int, obs_var_init: float, obs_var_min: float, init_var: float, init_var_min: float):
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.image = is_image(self.obs_shape)
        self.obs_event_dims = len(self.obs_shape)
        self.obs_var_init, self.obs_var_min = obs_var_init, obs_var_min
        self.init_var, self.init_var_min = init_var, init_var_min
        self.encoder, embed_dim = make_encoder(self.obs_shape, mlp_hidden_dim, conv_depth, mlp_layers)
        self.w_head = nn.Linear(embed_dim, latent_dim)
        self.var_w_head = nn.Linear(embed_dim, latent_dim)
        self.register_buffer("mu0", torch.zeros(latent_dim))
        self.raw_var0 = nn.Parameter(torch.zeros(latent_dim))

    @property
    def var0(self) -> Tensor:
        """Learned initial-state variance σ²_0 (D,)."""
        return softplus_positive(self.raw_var0, self.init_var, self.init_var_min)

    def forward(self, obs: Tensor, dequantize: bool) -> tuple[Tensor, Tensor, Tensor]:
        """obs (B, T, *obs_shape) -> (decoder target (B, T, *obs_shape), w (B, T, D), σ²_w (B, T, D)).
        The target is the preprocessed observation (images dequantised if `dequantize`), cast to the parameters'
        dtype (uint8 images preprocess to float32)."""
        target = obs_to_target(obs, self.image, dequantize).to(self.w_head.weight.dtype)
        e = over_time(self.encoder, target, self.obs_event_dims)
        var_w = softplus_positive(self.var_w_head(e), self.obs_var_init, self.obs_var_min)
        return target, self.w_head(e), var_w

    @classmethod
    def load_legacy_keys(cls, module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        """A load_state_dict pre-hook for the world model that holds this block as `latent`: moves the keys of a
        checkpoint written before the block existed (`encoder.*`, ..., `raw_var0`) to `latent.*`, in place."""
        for key in list(state_dict):
            name = key[len(prefix):]
            if key.startswith(prefix) and (name.startswith(cls.LEGACY_MODULES) or name in cls.LEGACY_TENSORS):
                state_dict[prefix + "latent." + name] = state_dict.pop(key)
