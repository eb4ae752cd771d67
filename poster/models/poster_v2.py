"""POSTER V2 / POSTER++ (docs/faithfulness.md#poster-v2): window cross-attention at three scales plus a 2-block ViT."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .irse import IR50Trunk
from .layers import ClassifierHead, DropPath, Mlp, SEBlock, check_rate, freeze_landmark_net, init_weights, \
    resize_to_112
from .mobilefacenet import MobileFaceNet
from ..errors import ConfigError
from .registry import ModelFamily, register_family, register_model

SCALES = ((64, 28, 2), (128, 14, 4), (256, 7, 8))  # (channels, window size, heads), head dim 32


def relative_position_index(window: int) -> torch.Tensor:
    """The standard Swin index: (r-r'+w-1)(2w-1) + (c-c'+w-1) over row-major positions."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


class WindowCrossAttention(nn.Module):
    """Landmark queries (scaled, no projection) attend to IR keys/values over one whole-map window.

    ``qkv`` is Linear(C -> 2C) producing K then V (the name is historical).
    """

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.qkv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """tokens [B,N,C] (normalised IR map), queries [B,heads,N,head_dim] -> [B,N,C]."""
        b, n, c = tokens.shape
        k, v = self.qkv(tokens).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = (queries * self.scale) @ k.transpose(-2, -1) + self.position_bias().unsqueeze(0)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class WindowNorm(nn.Module):
    """Channels-last LayerNorm (eps 1e-5) of a conv map (``window_i.norm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1))


class LayerScaleFFN(nn.Module):
    """``y = n + g1*attn; y = y + g2*MLP(LN(y))`` on channels-last maps (``ffn_i``)."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.gamma1 = nn.Parameter(torch.full((dim,), 1e-5))
        self.gamma2 = nn.Parameter(torch.full((dim,), 1e-5))
        self.mlp = Mlp(dim, dim * 4)
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.drop_path = DropPath(drop_path)

    def forward(self, attn: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        y = shortcut + self.drop_path(self.gamma1 * attn)
        return y + self.drop_path(self.gamma2 * self.mlp(self.norm(y)))


class SelfAttention(nn.Module):
    """Standard multi-head self-attention (``qkv`` Linear D->3D, Q/K/V order)."""

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    """Pre-norm transformer block.  ``conv`` exists in the official files but is never used."""

    def __init__(self, dim: int = 768, num_tokens: int = 148):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.conv = nn.Conv1d(num_tokens, num_tokens, 1)  # dead
        self.attn = SelfAttention(dim, 8)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbedStub(nn.Module):
    """Holds the dead ``VIT.patch_embed.proj`` weights."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(256, 768, 1)


class ECAStub(nn.Module):
    """Holds the dead ``VIT.eca_block.conv`` weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 5, padding=2, bias=False)


class TokenTransformer(nn.Module):
    """The ``VIT`` module: cls token + 147 tokens, 2 blocks, LN, token 0 -> SE -> head."""

    def __init__(self, num_classes: int = 7, dim: int = 768, num_tokens: int = 147, depth: int = 2):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.se_block = SEBlock(dim)
        self.patch_embed = PatchEmbedStub()  # dead
        self.head = ClassifierHead(dim, num_classes)
        self.eca_block = ECAStub()  # dead
        self.CON1 = nn.Conv2d(256, 768, 1, bias=False)  # dead
        self.IRLinear1 = nn.Linear(1024, 768)  # dead
        self.IRLinear2 = nn.Linear(768, 512)  # dead
        self.blocks = nn.Sequential(*(ViTBlock(dim, num_tokens + 1) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.se_block(x[:, 0])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(tokens))


class ValueEmbed(nn.Module):
    """``embed_v.proj``: 1x1 conv 256 -> 768."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(256, 768, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PosterV2(nn.Module):
    """POSTER V2 (``pyramid_trans_expr2``): ``forward(x)`` -> logits [B, num_classes]."""

    def __init__(self, num_classes: int = 7, drop_path_rates: tuple[float, float, float] = (0.0, 0.125, 0.25)):
        super().__init__()
        self.num_classes = num_classes
        self.face_landback = MobileFaceNet(136)
        self.VIT = TokenTransformer(num_classes)
        self.ir_back = IR50Trunk(split_stages=True)
        for i, (dim, window, heads) in enumerate(SCALES, start=1):
            setattr(self, f"attn{i}", WindowCrossAttention(dim, window, heads))
        for i, (dim, _, _) in enumerate(SCALES, start=1):
            setattr(self, f"window{i}", WindowNorm(dim))
        for i, (dim, _, _) in enumerate(SCALES, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(dim, dim, 3, 2, 1))
        for i, ((dim, _, _), rate) in enumerate(zip(SCALES, drop_path_rates), start=1):
            setattr(self, f"ffn{i}", LayerScaleFFN(dim, rate))
        self.last_face_conv = nn.Conv2d(512, 256, 3, padding=1)
        self.embed_q = nn.Sequential(nn.Conv2d(64, 768, 3, 2, 1), nn.Conv2d(768, 768, 3, 2, 1))
        self.embed_k = nn.Sequential(nn.Conv2d(128, 768, 3, 2, 1))
        self.embed_v = ValueEmbed()
        for m in (self.VIT, self.attn1, self.attn2, self.attn3, self.ffn1, self.ffn2, self.ffn3):
            m.apply(init_weights)
        freeze_landmark_net(self.face_landback)

    @staticmethod
    def _queries(feature_map: torch.Tensor, num_heads: int) -> torch.Tensor:
        """[B,C,H,W] -> [B,heads,H*W,C/heads]: row-major positions, channels split into heads."""
        b, c, h, w = feature_map.shape
        return feature_map.permute(0, 2, 3, 1).reshape(b, h * w, num_heads, c // num_heads).transpose(1, 2)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The 147 ViT input tokens [B,147,768]."""
        x112 = resize_to_112(x)
        lm3, lm4, lm_last = self.face_landback(x112)
        landmark_maps = (lm3, lm4, self.last_face_conv(lm_last))
        ir_maps = self.ir_back(x112)
        fused = []
        for i, (lm_map, ir_map, (_, _, heads)) in enumerate(zip(landmark_maps, ir_maps, SCALES), start=1):
            conv_map = getattr(self, f"conv{i}")(ir_map)
            normed = getattr(self, f"window{i}")(conv_map)  # [B,H,W,C]; also the residual base
            b, h, w, c = normed.shape
            attn = getattr(self, f"attn{i}")(normed.reshape(b, h * w, c), self._queries(lm_map, heads))
            y = getattr(self, f"ffn{i}")(attn.reshape(b, h, w, c), normed)
            fused.append(y.permute(0, 3, 1, 2))
        embeds = (self.embed_q(fused[0]), self.embed_k(fused[1]), self.embed_v(fused[2]))
        return torch.cat([e.flatten(2).transpose(1, 2) for e in embeds], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 768-d SE-block output fed to the classifier."""
        return self.VIT.forward_features(self.forward_tokens(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.VIT.head(self.forward_features(x))

    def train(self, mode: bool = True):
        super().train(mode)
        self.face_landback.eval()
        return self


def _match_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """(arch, options) of V2 weights: one architecture, the class count from the head."""
    if "VIT.head.linear.weight" not in state_dict:
        return None
    return "poster_v2", {"num_classes": int(state_dict["VIT.head.linear.weight"].shape[0])}


FAMILY = register_family(ModelFamily(
    "POSTER V2", PosterV2, "VIT.head.linear.weight", _match_state_dict,
    backbones={"ir50": "ir_back", "landmark": "face_landback"}, reads_even_pixels_only=True))


@register_model
def poster_v2(num_classes: int = 7, drop_path_rates: tuple[float, float, float] = (0.0, 0.125, 0.25)) -> PosterV2:
    """POSTER V2 / POSTER++ (7 or 8 classes)

    Args:
        num_classes: size of the classifier (the releases have 7 or 8).
        drop_path_rates: stochastic depth of the three window cross-attention FFNs, small to large
            window (training only); a list is accepted, as options read back from JSON are lists.
    """
    rates = tuple(check_rate("drop_path_rates", float(r)) for r in drop_path_rates)
    if len(rates) != len(SCALES):
        raise ConfigError(f"drop_path_rates must have {len(SCALES)} values, got {len(rates)}")
    return PosterV2(num_classes=num_classes, drop_path_rates=rates)
