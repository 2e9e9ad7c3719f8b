"""Cross-attention map capture for diffusers UNets (pix2pix-zero's guidance, prompt-to-prompt-style methods).

`install_attention_capture(unet)` gives the UNet's cross-attention layers (`attn2`, the ones attending to the text
tokens) an `AttentionMapProcessor`. While no sink is active it forwards to the layer's original processor (SDPA),
so the UNet behaves and costs exactly as before; inside `hub.capture(sink)` it computes the attention explicitly
(as diffusers' `AttnProcessor` does) and hands each layer's softmax probabilities to `sink(name, probs)` with
probs shaped (batch, heads, queries, keys), gradients attached when autograd is recording. Only `attn2` layers get
the processor: on all layers map capture was 3.7x slower (measured on the CI machine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from diffusers.models.attention_processor import Attention, AttnProcessor

Sink = Callable[[str, Any], None]


class AttentionHub:
    """The switch shared by the processors of one UNet: which sink (if any) receives the maps right now."""

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.names: list[str] = []

    @contextlib.contextmanager
    def capture(self, sink: Sink) -> Iterator[None]:
        if self.sink is not None:
            raise RuntimeError("attention capture is already active on this UNet (nested capture)")
        self.sink = sink
        try:
            yield
        finally:
            self.sink = None


class AttentionMapProcessor(AttnProcessor):
    """diffusers' `AttnProcessor` computation with the attention probabilities handed to the hub's sink.

    The computation below follows `diffusers.models.attention_processor.AttnProcessor.__call__` (0.42), which
    keeps its probabilities local; with no sink active the layer's original processor runs instead.
    """

    def __init__(self, name: str, hub: AttentionHub, fallback: Any) -> None:
        self.name = name
        self.hub = hub
        self.fallback = fallback

    def __call__(
        self,
        attn: Attention,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        import torch

        sink = self.hub.sink
        if sink is None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)

        probs = attn.get_attention_scores(query, key, attention_mask)  # (batch * heads, queries, keys)
        b = probs.shape[0] // attn.heads
        sink(self.name, probs.view(b, attn.heads, *probs.shape[1:]))  # head_to_batch_dim is batch-major

        hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def is_cross_attention(name: str) -> bool:
    """True for the processor key of a text cross-attention layer (`...transformer_blocks.N.attn2.processor`)."""
    return name.rsplit(".", 2)[-2] == "attn2"


def install_attention_capture(unet: Any, match: Callable[[str], bool] = is_cross_attention) -> AttentionHub:
    """Put an `AttentionMapProcessor` on every attention layer of `unet` whose processor key `match`es (default:
    the `attn2` layers); the others keep their processors. Returns the hub that switches capture on and off.

    Installing twice returns the existing hub.
    """
    procs = dict(unet.attn_processors)
    existing = [p for p in procs.values() if isinstance(p, AttentionMapProcessor)]
    if existing:
        return existing[0].hub
    hub = AttentionHub()
    new: dict[str, Any] = {}
    for key, proc in procs.items():
        if match(key):
            name = key.removesuffix(".processor")
            new[key] = AttentionMapProcessor(name, hub, proc)
            hub.names.append(name)
        else:
            new[key] = proc
    if not hub.names:
        raise ValueError("the UNet has no attention layer matching the capture filter (no attn2 layers?)")
    unet.set_attn_processor(new)
    return hub
