"""POSTER V1: pyramid cross-fusion transformer (docs/faithfulness.md#poster-v1).

Image tokens come from the IR-50 trunk, landmark tokens from the frozen
MobileFaceNet; a pyramid of cross-attention blocks at widths 512/256/128 fuses
them, and the read-out is token 0 (the image mean-token) of the large stream.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .layers import ClassifierHead, DropPath, Mlp, SEBlock, check_rate, freeze_landmark_net, init_weights, \
    resize_to_112
from .irse import IR50Trunk
from .mobilefacenet import MobileFaceNet
from .registry import ModelFamily, register_family, register_model

NUM_TOKENS = 100  # 50 image tokens (mean + 49) followed by 50 landmark tokens
HALF = NUM_TOKENS // 2
DEPTHS = {"small": 4, "base": 6, "large": 8}


class CrossAttention(nn.Module):
    """Attention whose queries are given tokens used as they are (no query projection).

    Keys and values come from ``kv`` (Linear D->2D, K first); output is ``proj``-ected.
    """

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        b, nq, d = queries.shape
        ns = source.shape[1]
        k, v = self.kv(source).reshape(b, ns, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = queries.reshape(b, nq, self.num_heads, self.head_dim).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, nq, d)
        return self.proj(out)


class CrossBlock(nn.Module):
    """One cross-fusion block over 100 tokens (docs/faithfulness.md#poster-v1).

    Image tokens attend with the landmark tokens as queries and vice versa; both
    branches read the block input.  ``token_mixing`` adds the RAF-DB release's
    Conv1d(100, 100, 1) across tokens at the end.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 2.0, drop_path: float = 0.0,
                 token_mixing: bool = True):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn_img = CrossAttention(dim, num_heads)
        self.attn_lm = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp1 = Mlp(dim, hidden)
        self.mlp2 = Mlp(dim, hidden)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.norm4 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path)
        self.conv = nn.Conv1d(NUM_TOKENS, NUM_TOKENS, 1) if token_mixing else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img, lm = x[:, :HALF], x[:, HALF:]
        a = self.norm1(x)
        img = img + self.drop_path(self.attn_img(a[:, HALF:], a[:, :HALF]))
        img = img + self.drop_path(self.mlp1(self.norm2(img)))
        c = self.norm3(x)
        lm = lm + self.drop_path(self.attn_lm(c[:, :HALF], c[:, HALF:]))
        lm = lm + self.drop_path(self.mlp2(self.norm4(lm)))
        out = torch.cat([img, lm], dim=1)
        return self.conv(out) if self.conv is not None else out


class PyramidBlock(nn.Module):
    """Large/medium/small cross blocks, then small->medium and medium->large fusion (docs/faithfulness.md#poster-v1)."""

    def __init__(self, drop_path: float, token_mixing: bool):
        super().__init__()
        self.block_l = CrossBlock(512, drop_path=drop_path, token_mixing=token_mixing)
        self.block_m = CrossBlock(256, drop_path=drop_path, token_mixing=token_mixing)
        self.block_s = CrossBlock(128, drop_path=drop_path, token_mixing=token_mixing)
        # Tokens are the channels and the embedding is the length (docs/faithfulness.md#poster-v1).
        self.upsample_m = nn.ConvTranspose1d(NUM_TOKENS, NUM_TOKENS, 2, 2)  # medium -> large
        self.upsample_s = nn.ConvTranspose1d(NUM_TOKENS, NUM_TOKENS, 2, 2)  # small -> medium

    def forward(self, large, medium, small):
        large, medium, small = self.block_l(large), self.block_m(medium), self.block_s(small)
        medium = self.upsample_s(small) + medium
        large = large + self.upsample_m(medium)
        return large, medium, small


class PyramidFusion(nn.Module):
    """Builds the 100-token sequence and runs the pyramid (``pyramid_fuse``)."""

    def __init__(self, depth: int, token_mixing: bool, drop_path_rate: float = 0.1, keep_dead_layers: bool = True):
        super().__init__()
        if keep_dead_layers:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 512))  # unused by the reference, kept for loading
        self.pos_embed = nn.Parameter(torch.zeros(1, HALF, 512))
        self.downsample_m = nn.Conv1d(NUM_TOKENS, NUM_TOKENS, 2, 2)
        self.downsample_s = nn.Conv1d(NUM_TOKENS, NUM_TOKENS, 4, 4)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(PyramidBlock(r, token_mixing) for r in rates)
        self.norm = nn.LayerNorm(512, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if keep_dead_layers:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def tokens(self, image_tokens: torch.Tensor, landmark_tokens: torch.Tensor) -> torch.Tensor:
        """[mean, 49 image tokens] + pos_embed, then [mean, 49 landmark tokens] (no pos_embed)."""
        img = torch.cat([image_tokens.mean(dim=1, keepdim=True), image_tokens], dim=1) + self.pos_embed
        lm = torch.cat([landmark_tokens.mean(dim=1, keepdim=True), landmark_tokens], dim=1)
        return torch.cat([img, lm], dim=1)

    def forward(self, image_tokens: torch.Tensor, landmark_tokens: torch.Tensor) -> torch.Tensor:
        x = self.tokens(image_tokens, landmark_tokens)
        large, medium, small = x, self.downsample_m(x), self.downsample_s(x)
        for block in self.blocks:
            large, medium, small = block(large, medium, small)
        return self.norm(large)[:, 0]


class PosterV1(nn.Module):
    """POSTER (``pyramid_trans_expr``): ``forward(x)`` -> logits [B, num_classes].

    Args:
        num_classes: size of the classifier.
        depth: number of PyramidBlocks (small 4, base 6, large 8).
        token_mixing: the per-block Conv1d(100,100,1) of the RAF-DB release (True) or
            the AffectNet release without it (False).
        drop_path_rate: stochastic depth of the last PyramidBlock (training only).
        ir_units, ir_widths: units and channels of the three IR stages (official: (3,4,14), (64,128,256));
            smaller values give compact models of the same design.
        keep_dead_layers: keep the never-run parameters of the official files (needed to load them).
    """

    def __init__(self, num_classes: int = 7, depth: int = 8, token_mixing: bool = True,
                 drop_path_rate: float = 0.1, ir_units: tuple[int, int, int] = (3, 4, 14),
                 ir_widths: tuple[int, int, int] = (64, 128, 256), keep_dead_layers: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.face_landback = MobileFaceNet(136)
        self.ir_back = IR50Trunk(False, tuple(ir_units), tuple(ir_widths), keep_dead_layers)
        # The [C,14,14] map is re-read as 49 rows of 4*C values (1024 for the official trunk).
        self.ir_token_dim = 4 * self.ir_back.out_channels
        self.ir_layer = nn.Linear(self.ir_token_dim, 512)
        self.pyramid_fuse = PyramidFusion(depth, token_mixing, drop_path_rate, keep_dead_layers)
        self.se_block = SEBlock(512)
        self.head = ClassifierHead(512, num_classes)
        self.pyramid_fuse.apply(init_weights)
        for m in (self.ir_layer, self.se_block, self.head):
            m.apply(init_weights)
        freeze_landmark_net(self.face_landback)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d SE-block output fed to the classifier."""
        x112 = resize_to_112(x)
        landmark_map = self.face_landback(x112)[2]  # [B,512,7,7]
        landmark_tokens = landmark_map.flatten(2).transpose(1, 2)  # spatial tokens [B,49,512]
        ir_map = self.ir_back(x112)  # [B,256,14,14]
        # The reference re-reads the NCHW map as 49 rows of 1024 values: not spatial tokens.
        image_tokens = self.ir_layer(ir_map.reshape(ir_map.shape[0], 49, self.ir_token_dim))
        return self.se_block(self.pyramid_fuse(image_tokens, landmark_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def train(self, mode: bool = True):
        super().train(mode)
        self.face_landback.eval()  # frozen landmark net: BN always uses its running statistics
        return self


def _match_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """(arch, options) of official-size V1 weights: the size from the number of pyramid blocks, token
    mixing from the presence of its convolution (docs/faithfulness.md#poster-v1)."""
    if "head.linear.weight" not in state_dict or "pyramid_fuse.pos_embed" not in state_dict:
        return None
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"pyramid_fuse\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    size = next((s for s, d in DEPTHS.items() if d == depth), None)
    if size is None:
        raise ConfigError(f"POSTER V1 weights with {depth} pyramid blocks; known sizes are {dict(DEPTHS)}")
    return f"poster_v1_{size}", {"num_classes": int(state_dict["head.linear.weight"].shape[0]),
                                 "token_mixing": "pyramid_fuse.blocks.0.block_l.conv.weight" in state_dict}


FAMILY = register_family(ModelFamily(
    "POSTER V1", PosterV1, "head.linear.weight", _match_state_dict,
    backbones={"ir50": "ir_back", "landmark": "face_landback"}, reads_even_pixels_only=True))


def _pyramid_v1(depth: int, num_classes: int, token_mixing: bool, drop_path_rate: float) -> PosterV1:
    check_rate("drop_path_rate", drop_path_rate)
    return PosterV1(num_classes=num_classes, depth=depth, token_mixing=token_mixing, drop_path_rate=drop_path_rate)


@register_model
def poster_v1_small(num_classes: int = 7, token_mixing: bool = True, drop_path_rate: float = 0.1) -> PosterV1:
    """POSTER V1 small (4 pyramid blocks); token_mixing=True is the RAF-DB release, False the AffectNet release

    Args:
        num_classes: size of the classifier (the releases have 7 or 8).
        token_mixing: the per-block token-mixing convolution of the RAF-DB release.
        drop_path_rate: stochastic depth of the last pyramid block (training only).
    """
    return _pyramid_v1(DEPTHS["small"], num_classes, token_mixing, drop_path_rate)


@register_model
def poster_v1_base(num_classes: int = 7, token_mixing: bool = True, drop_path_rate: float = 0.1) -> PosterV1:
    """POSTER V1 base (6 pyramid blocks); token_mixing=True is the RAF-DB release, False the AffectNet release

    Args: as ``poster_v1_small``.
    """
    return _pyramid_v1(DEPTHS["base"], num_classes, token_mixing, drop_path_rate)


@register_model
def poster_v1_large(num_classes: int = 7, token_mixing: bool = True, drop_path_rate: float = 0.1) -> PosterV1:
    """POSTER V1 large (8 pyramid blocks); token_mixing=True is the RAF-DB release, False the AffectNet release

    Args: as ``poster_v1_small``.
    """
    return _pyramid_v1(DEPTHS["large"], num_classes, token_mixing, drop_path_rate)


@register_model
def poster_v1_tiny(num_classes: int = 7, token_mixing: bool = False, drop_path_rate: float = 0.0) -> PosterV1:
    """compact POSTER V1 (1 pyramid block, IR trunk units (1,2,2) widths (32,64,128), no dead
    layers; ~7M parameters) for CPU training and the bundled default model

    Not an official architecture: the same design, scaled down so that it trains on a CPU.
    Args: as ``poster_v1_small``.
    """
    return PosterV1(num_classes=num_classes, depth=1, token_mixing=token_mixing,
                    drop_path_rate=check_rate("drop_path_rate", drop_path_rate),
                    ir_units=(1, 2, 2), ir_widths=(32, 64, 128), keep_dead_layers=False)
