"""One transformer for text in every role: the MDLM / uniform-noise denoiser, the Diffusion-LM denoiser on
word embeddings, and the autoregressive baseline (the same network with a causal mask).

Layout (a DiT block stack, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", Sec. 3.2,
on a sequence instead of image patches)::

    x (B, L) tokens -> Embedding  |  x (B, L, D_in) -> Linear      h (B, L, D)
    c = TimestepEmbedding(t * time_scale) + LabelEmbedding(y)     c (B, D)   (either part optional)
    h = h + gate_a * Attn(modulate(LN(h), shift_a, scale_a))      x depth, attention with RoPE
    h = h + gate_m * MLP(modulate(LN(h), shift_m, scale_m))
    out = Linear(modulate(LN(h), shift, scale))                   (B, L, V_out) logits | (B, L, D_out)

* **adaLN-zero** (DiT, Sec. 3.2): shift / scale / gate come from a linear map of SiLU(c), zero-initialised, so
  a fresh block is the identity and a fresh model ignores c. It is on when the model has a condition
  (``time_conditioning`` or ``num_classes > 0``); the LayerNorms then have no affine parameters. Without a
  condition the blocks are plain pre-LN blocks (GPT-2) with affine LayerNorms. Unlike DiT the output head is
  *not* zero-initialised: a zero head would also zero the gradient of every gate, and a text model's first
  logits may as well be small random numbers.
* **Rotary position embeddings** (Su et al. 2021, "RoFormer", Sec. 3.4.2): queries and keys of position m are
  rotated by the angles m * theta_i, theta_i = rope_base^(-2i / (D/H)); there are no learned absolute
  positions, so attention sees only relative offsets and a key cached at position m never changes.
* **Causal** (``causal=True``): position l attends to positions <= l only; the autoregressive baseline
  (:mod:`difflab.discrete.autoregressive`) is this network with the mask on. :meth:`TextTransformer.forward_step`
  then runs it one chunk at a time with a :class:`KVCache`.
* **time_scale**: t is multiplied by it before its sinusoidal features (:func:`~difflab.nn.embeddings.
  timestep_embedding`, wavelengths 2 pi .. 2 pi 10^4). The Gaussian core passes t in [0, T-1] (scale 1, as
  DDPM); the discrete methods pass t in [0, 1], where ``time_scale`` of about T (e.g. 1000) lets the features
  see the same range (with scale 1 every feature but the fastest is nearly constant over [0, 1]).

:class:`EmbeddingDiffusionLM` wraps the network for Diffusion-LM (Li et al. 2022). The networks return the raw
prediction (logits, x0_hat); they never compute a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.errors import UserError
from difflab.models.text_encoders import EMBED_INIT_STD
from difflab.models.unet import count_parameters
from difflab.nn.blocks import zero_init
from difflab.nn.embeddings import TimestepEmbedding
from difflab.nn.transformer import MLP_RATIO

ROPE_BASE = 10_000.0  # Su et al. 2021, Sec. 3.4.2: theta_i = 10000^(-2i/d), the Transformer's sinusoid base
MODULATIONS_PER_BLOCK = 6  # adaLN-zero: (shift, scale, gate) for attention and for the MLP (DiT, Sec. 3.2)
MODULATIONS_FINAL = 2  # (shift, scale) of the final LayerNorm (DiT's final layer)


# -- rotary position embeddings ------------------------------------------------------------------
def rotary_tables(length: int, head_dim: int, base: float = ROPE_BASE) -> tuple[Tensor, Tensor]:
    """cos and sin of the RoPE angles m * theta_i for positions m = 0 .. length-1.

    Args:
        length: number of positions.
        head_dim: D/H, even; pairs (i, i + D/2H) of a head's features rotate together ("rotate half").
        base: theta_i = base^(-2i / head_dim).

    Returns:
        cos, sin: (length, head_dim) float32 each (computed in float64), the D/2H angles repeated twice.
    """
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2H,)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * theta[None]  # (L, D/2H)
    angles = torch.cat([angles, angles], dim=-1)  # (L, D/H)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each feature pair (x_i, x_{i + D/2H}) of x (B, H, L, D/H) by its angle; cos, sin (L, D/H)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, L, D/2H) each
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin  # (B, H, L, D/H)


# -- the KV cache ----------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Keys and values of every layer for the positions seen so far (causal models only).

    Attributes:
        keys: per layer (B, H, length, D/H), already rotated by RoPE.
        values: per layer (B, H, length, D/H).
        length: number of cached positions; the next token sits at position ``length``.
    """

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0

    @classmethod
    def empty(cls) -> KVCache:
        """A cache holding no position."""
        return cls(keys=[], values=[], length=0)


# -- attention and the block -------------------------------------------------------------------------
def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, L, D) * (1 + scale) + shift, with shift and scale (B, D) (DiT's ``modulate``)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention with RoPE, optionally causal, that can extend cached keys and values.

    Args:
        width: D of the tokens.
        heads: H; must divide ``width`` into an even head width D/H.
        causal: position l attends only to positions <= l.
    """

    def __init__(self, width: int, heads: int, *, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.to_qkv = nn.Linear(width, 3 * width)
        self.proj_out = nn.Linear(width, width)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, L, D) at positions P .. P+L-1, cos/sin (L, D/H) of those positions, past (keys, values)
        (B, H, P, D/H) of positions 0 .. P-1 -> (out (B, L, D), (keys, values) (B, H, P+L, D/H)). ``mask``
        (L, L) bool, True = query i reads key j, replaces the bidirectional pattern (no ``past``, not causal)."""
        B, L, D = x.shape
        qkv = self.to_qkv(x).reshape(B, L, 3, self.heads, D // self.heads)  # (B, L, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, L, D/H) each
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, H, L, D/H)
        if mask is not None and (self.causal or past is not None):
            raise ValueError("an attention mask replaces the bidirectional pattern: not with causal=True or a KV cache")
        is_causal = self.causal and past is None
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, P+L, D/H)
            if self.causal:
                mask = _causal_mask(L, k.shape[2], x.device)  # (L, P+L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, H, L, D/H)
        return self.proj_out(out.transpose(1, 2).reshape(B, L, D)), (k, v)  # (B, L, D)


def _causal_mask(new: int, total: int, device: torch.device) -> Tensor:
    """(new, total) bool: query i (position total-new+i) may read key j when j <= total-new+i."""
    queries = torch.arange(total - new, total, device=device)  # (L,)
    return torch.arange(total, device=device)[None] <= queries[:, None]  # (L, P+L)


class TextBlock(nn.Module):
    """Pre-LN transformer block with RoPE attention, adaLN-zero modulated when ``modulated``.

    Args:
        width: D of the tokens (and of the conditioning vector c).
        heads: attention heads.
        mlp_ratio: hidden width of the MLP over ``width``.
        dropout: dropout on the attention and MLP outputs before each residual.
        causal: causal attention mask.
        modulated: adaLN-zero from c (LayerNorms without affine); else affine LayerNorms and no c.
    """

    def __init__(self, width: int, heads: int, *, mlp_ratio: int, dropout: float, causal: bool,
                 modulated: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not modulated)
        self.attn = RotarySelfAttention(width, heads, causal=causal)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not modulated)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.dropout = nn.Dropout(dropout)
        self.modulation = (nn.Sequential(nn.SiLU(), zero_init(nn.Linear(width, MODULATIONS_PER_BLOCK * width)))
                           if modulated else None)

    def forward(self, x: Tensor, c: Tensor | None, cos: Tensor, sin: Tensor,
                past: tuple[Tensor, Tensor] | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, L, D), c (B, D) or None, cos/sin (L, D/H), past cached (keys, values), mask (L, L) bool
        (:class:`RotarySelfAttention`) -> (x (B, L, D), (keys, values) (B, H, P+L, D/H))."""
        if self.modulation is None:
            a, kv = self.attn(self.norm1(x), cos, sin, past, mask)  # (B, L, D)
            x = x + self.dropout(a)  # (B, L, D)
            return x + self.dropout(self.mlp(self.norm2(x))), kv  # (B, L, D)
        mods = self.modulation(c).chunk(MODULATIONS_PER_BLOCK, dim=-1)  # (B, D) each
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        a, kv = self.attn(_modulate(self.norm1(x), shift_a, scale_a), cos, sin, past, mask)  # (B, L, D)
        x = x + gate_a[:, None] * self.dropout(a)  # (B, L, D)
        m = self.mlp(_modulate(self.norm2(x), shift_m, scale_m))  # (B, L, D)
        return x + gate_m[:, None] * self.dropout(m), kv  # (B, L, D)


def _exactly_one(name_a: str, a: int | None, name_b: str, b: int | None) -> None:
    """Raise a ValueError unless exactly one of the two sizes is given, and it is positive."""
    if (a is None) == (b is None):
        given = "both" if a is not None else "neither"
        raise ValueError(f"TextTransformer takes exactly one of {name_a} (tokens) and {name_b} (vectors), "
                         f"got {given}: pass {name_a}=V for token ids or {name_b}=D for continuous vectors")
    size = a if a is not None else b
    if size < 1:
        raise ValueError(f"{name_a if a is not None else name_b} must be at least 1, got {size}")


# -- the network -------------------------------------------------------------------------------------
class TextTransformer(nn.Module):
    """A transformer over a sequence of tokens or vectors, optionally time- and label-conditioned or causal.

    (Not the caption encoder :class:`difflab.models.text_encoders.TextTransformer`, which pools a [CLS] state.)

    Args:
        vocab_in: V_in; the input is (B, L) int64 token ids through an embedding table. Exactly one of
            ``vocab_in`` and ``input_dim``.
        input_dim: D_in; the input is (B, L, D_in) vectors through a linear projection.
        vocab_out: V_out; the output is (B, L, V_out) logits. Exactly one of ``vocab_out`` and ``output_dim``.
        output_dim: D_out; the output is (B, L, D_out) vectors.
        width: D of the states.
        depth: number of blocks.
        heads: H; must divide ``width`` into an even head width (RoPE rotates pairs of features).
        max_length: longest sequence (positions of the RoPE tables; a KV cache may not grow beyond it).
        mlp_ratio: hidden width of each block's MLP over ``width``.
        dropout: dropout on each block's attention and MLP outputs.
        time_conditioning: embed a time t (B,) (sinusoid -> MLP) into the adaLN condition; False = no time
            parameters and ``t`` is ignored (MDLM needs no time, Sahoo et al. 2024, Sec. 3.2).
        num_classes: K label classes (B,) int64 in [0, K) embedded into the adaLN condition; -1 = no label
            (a learned null embedding, also used where ``drop`` is True or no labels are given); 0 = none.
        time_scale: t is multiplied by this before its sinusoidal features (see the module docstring).
        causal: causal attention mask (the autoregressive baseline).
        rope_base: base of the RoPE angles.
    """

    def __init__(self, *, vocab_in: int | None = None, input_dim: int | None = None, vocab_out: int | None = None,
                 output_dim: int | None = None, width: int, depth: int, heads: int, max_length: int,
                 mlp_ratio: int = MLP_RATIO, dropout: float = 0.0, time_conditioning: bool = False,
                 num_classes: int = 0, time_scale: float = 1.0, causal: bool = False,
                 rope_base: float = ROPE_BASE) -> None:
        super().__init__()
        _exactly_one("vocab_in", vocab_in, "input_dim", input_dim)
        _exactly_one("vocab_out", vocab_out, "output_dim", output_dim)
        if width % heads or (width // heads) % 2:
            raise UserError(f"width {width} must split into {heads} heads of an even width (RoPE rotates pairs): "
                            f"use a number of heads dividing width / 2")
        if num_classes < 0 or max_length < 1 or depth < 0:
            raise ValueError(f"num_classes ({num_classes}) and depth ({depth}) must be >= 0 and max_length "
                             f"({max_length}) >= 1")
        self.vocab_in, self.input_dim, self.vocab_out, self.output_dim = vocab_in, input_dim, vocab_out, output_dim
        self.width, self.max_length, self.causal = width, max_length, causal
        self.time_conditioning, self.num_classes, self.time_scale = time_conditioning, num_classes, time_scale
        self.modulated = time_conditioning or num_classes > 0

        if vocab_in is not None:
            self.input = nn.Embedding(vocab_in, width)
            nn.init.normal_(self.input.weight, std=EMBED_INIT_STD)
        else:
            self.input = nn.Linear(input_dim, width)
        self.time_embed = TimestepEmbedding(width, width) if time_conditioning else None
        self.label_embed = nn.Embedding(num_classes + 1, width) if num_classes else None  # row K = null
        cos, sin = rotary_tables(max_length, width // heads, rope_base)  # (L_max, D/H) each
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(TextBlock(width, heads, mlp_ratio=mlp_ratio, dropout=dropout, causal=causal,
                                              modulated=self.modulated) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=not self.modulated)
        self.final_modulation = (nn.Sequential(nn.SiLU(), zero_init(nn.Linear(width, MODULATIONS_FINAL * width)))
                                 if self.modulated else None)
        self.head = nn.Linear(width, vocab_out if vocab_out is not None else output_dim)

    def num_parameters(self) -> int:
        """Number of scalar parameters."""
        return count_parameters(self)

    # -- inputs and conditioning --------------------------------------------------------------------
    def _embed_input(self, x: Tensor, start: int = 0, last: int | None = None) -> Tensor:
        """Check x and embed it: (B, L) ids or (B, L, D_in) vectors at positions start .. (``last``: the largest
        position when they are not consecutive) -> (B, L, D)."""
        if self.vocab_in is not None:
            if x.ndim != 2 or x.is_floating_point():
                raise ValueError(f"this TextTransformer reads token ids (B, L) int64, got {x.dtype} "
                                 f"{tuple(x.shape)}")
        elif x.ndim != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"this TextTransformer reads vectors (B, L, {self.input_dim}), got {tuple(x.shape)}")
        end = start + x.shape[1] if last is None else last + 1
        if end > self.max_length:
            raise ValueError(f"positions up to {end} exceed max_length {self.max_length}: "
                             f"build the model with a larger max_length")
        if self.vocab_in is not None:
            return self.input(x.long())  # (B, L, D)
        return self.input(x.to(self.input.weight.dtype))  # (B, L, D)

    def _condition(self, t: Tensor | None, labels: Tensor | None, drop: Tensor | None, batch: int,
                   device: torch.device) -> Tensor | None:
        """The adaLN vector c (B, D): time embedding + label embedding; None for an unconditioned model."""
        if self.label_embed is None and (labels is not None or drop is not None):
            raise ValueError("labels were given to a TextTransformer built with num_classes=0: "
                             "build it with num_classes > 0")
        c = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this TextTransformer is time-conditioned: pass t (B,)")
            t = t.expand(batch) if t.ndim == 0 else t  # (B,)
            if t.shape != (batch,):
                raise ValueError(f"t must have shape (B,) = ({batch},), got {tuple(t.shape)}")
            c = self.time_embed(t * self.time_scale)  # (B, D)
        if self.label_embed is not None:
            null = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)  # (B,)
            if labels is None:
                index = null
            else:
                if labels.shape != (batch,):
                    raise ValueError(f"labels must have shape (B,) = ({batch},), got {tuple(labels.shape)}")
                index = torch.where(labels < 0, null, labels.long())  # (B,)
            if drop is not None:
                index = torch.where(drop, null, index)  # (B,)
            y = self.label_embed(index)  # (B, D)
            c = y if c is None else c + y.to(c.dtype)  # (B, D)
        return c

    def _output(self, h: Tensor, c: Tensor | None) -> Tensor:
        """Final LayerNorm (modulated by c when adaLN is on) and the head: (B, L, D) -> (B, L, V_out | D_out)."""
        h = self.norm_out(h)  # (B, L, D)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(c).chunk(MODULATIONS_FINAL, dim=-1)  # (B, D) each
            h = _modulate(h, shift, scale)  # (B, L, D)
        return self.head(h)  # (B, L, V_out | D_out)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor | None = None, labels: Tensor | None = None, *,
                drop: Tensor | None = None, positions: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        """Run the whole sequence.

        Args:
            x: (B, L) int64 token ids (``vocab_in``) or (B, L, D_in) vectors (``input_dim``); L <= max_length.
            t: (B,) float times (scaled by ``time_scale``); required when ``time_conditioning``, else ignored.
            labels: (B,) int64 classes in [0, num_classes), -1 = none; None = none for all.
            drop: (B,) bool, True = use the null label for that sample (the unconditional branch of
                classifier-free guidance, as the Gaussian core's ``drop``).
            positions: (L,) int64 position of each element for RoPE (None: 0 .. L-1); a sequence may hold a
                position twice (block diffusion reads the noised and the clean copy of each token).
            attn_mask: (L, L) bool, True = element i attends to element j (None: all, or causal); a bidirectional
                model only.

        Returns:
            (B, L, V_out) logits or (B, L, D_out) vectors.
        """
        B, L = x.shape[:2]
        h = self._embed_input(x, last=None if positions is None else int(positions.max()))  # (B, L, D)
        c = self._condition(t, labels, drop, B, h.device)  # (B, D) or None
        if positions is None:
            cos, sin = self.rope_cos[:L].to(h.dtype), self.rope_sin[:L].to(h.dtype)  # (L, D/H) each
        else:
            cos, sin = self.rope_cos[positions].to(h.dtype), self.rope_sin[positions].to(h.dtype)  # (L, D/H) each
        for block in self.blocks:
            h, _ = block(h, c, cos, sin, mask=attn_mask)  # (B, L, D)
        return self._output(h, c)  # (B, L, V_out | D_out)

    def forward_step(self, x_new: Tensor, cache: KVCache | None = None,
                     labels: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Run a causal model on the next positions only, reading the earlier ones from ``cache``.

        Feeding a sequence in chunks (a prompt, then one token at a time) gives the logits of
        :meth:`forward` on the whole sequence, to float rounding.

        Args:
            x_new: (B, L_new) int64 tokens (or (B, L_new, D_in) vectors) at positions cache.length ...
            cache: what earlier calls returned; None = an empty cache (the first chunk).
            labels: (B,) int64 classes, -1 = none, as in :meth:`forward` (pass the same ones every call).

        Returns:
            (B, L_new, V_out) outputs of the new positions, and the cache extended by them (a new object; the
            one passed in is not modified).
        """
        if not self.causal:
            raise ValueError("forward_step needs a causal TextTransformer (causal=True): a bidirectional model's "
                             "earlier positions change with every new token")
        if self.time_embed is not None:
            raise ValueError("forward_step runs the autoregressive model, which takes no time: build it with "
                             "time_conditioning=False")
        cache = KVCache.empty() if cache is None else cache
        start, B, L = cache.length, x_new.shape[0], x_new.shape[1]
        h = self._embed_input(x_new, start)  # (B, L_new, D)
        c = self._condition(None, labels, None, B, h.device)  # (B, D) or None
        cos = self.rope_cos[start:start + L].to(h.dtype)  # (L_new, D/H)
        sin = self.rope_sin[start:start + L].to(h.dtype)  # (L_new, D/H)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past = (cache.keys[i], cache.values[i]) if start else None
            h, (k, v) = block(h, c, cos, sin, past)  # (B, L_new, D), (B, H, P+L_new, D/H)
            keys.append(k)
            values.append(v)
        return self._output(h, c), KVCache(keys=keys, values=values, length=start + L)  # (B, L_new, V_out)


# -- Diffusion-LM ------------------------------------------------------------------------------------
class EmbeddingDiffusionLM(nn.Module):
    """Diffusion-LM (Li et al. 2022, "Diffusion-LM Improves Controllable Text Generation", Sec. 4):
    Gaussian diffusion in a learned word-embedding space, with a rounding step back to words.

    * ``embedding`` E (V, d): EMB(w) = E[w], the continuous x_0 the Gaussian core noises (Sec. 4.1); it keeps
      nn.Embedding's N(0, 1) initialisation, as Diffusion-LM's code, so coordinates have unit scale like the
      noise.
    * the denoiser: a bidirectional, time-conditioned :class:`TextTransformer` (d -> d) predicting x0_hat
      (Sec. 4.2, the x_0-parameterisation); called as ``model(x_t, t, **cond)``.
    * rounding: p(w | x) = softmax(x E^T), the LM head tied to the embedding (Sec. 4.1, as the paper's code);
      the clamping trick (Sec. 4.2) maps a vector to the L2-nearest row of E.

    Args:
        vocab_size: V.
        embed_dim: d, the dimension the diffusion runs in.
        width, depth, heads, max_length, mlp_ratio, dropout, num_classes, time_scale: the denoiser's
            (:class:`TextTransformer`).
    """

    def __init__(self, *, vocab_size: int, embed_dim: int, width: int, depth: int, heads: int, max_length: int,
                 num_classes: int = 0, time_scale: float = 1.0, mlp_ratio: int = MLP_RATIO,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.denoiser = TextTransformer(input_dim=embed_dim, output_dim=embed_dim, width=width, depth=depth,
                                        heads=heads, max_length=max_length, mlp_ratio=mlp_ratio, dropout=dropout,
                                        time_conditioning=True, num_classes=num_classes, time_scale=time_scale)

    def embed(self, tokens: Tensor) -> Tensor:
        """(B, L) int64 tokens -> (B, L, d) their embeddings E[w]."""
        return self.embedding(tokens)  # (B, L, d)

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None, *, drop: Tensor | None = None) -> Tensor:
        """x_t (B, L, d), t (B,) float, labels (B,) int64 (-1 = none), drop (B,) bool -> x0_hat (B, L, d)."""
        return self.denoiser(x_t, t, labels, drop=drop)  # (B, L, d)

    def rounding_logits(self, x: Tensor) -> Tensor:
        """(B, L, d) vectors -> (B, L, V) logits x E^T of p(w | x) (the tied LM head)."""
        return x @ self.embedding.weight.T  # (B, L, V)

    def nearest_tokens(self, x: Tensor) -> Tensor:
        """(B, L, d) vectors -> (B, L) int64 ids of the L2-nearest embeddings (argmin_w ||x - E[w]||^2).

        This is not the argmax of :meth:`rounding_logits` (x . E[w]) unless every ||E[w]|| is equal:
        ||x - E[w]||^2 = ||x||^2 - 2 x . E[w] + ||E[w]||^2.
        """
        E = self.embedding.weight  # (V, d)
        dist = (E * E).sum(-1) - 2 * (x @ E.T)  # (B, L, V), ||x||^2 dropped: the same for every w
        return dist.argmin(dim=-1)  # (B, L)

    def nearest_embedding(self, x: Tensor) -> Tensor:
        """The clamping trick (Li et al. 2022, Sec. 4.2): each vector of x (B, L, d) replaced by its L2-nearest
        word embedding -> (B, L, d)."""
        return self.embedding(self.nearest_tokens(x))  # (B, L, d)
