"""The classifier: a pretrained BERT encoder, a pooling from [B,T,H] to [B,H], and a small head. A pure
nn.Module: token ids and mask in, logits out; no tokenizer and no I/O (checkpoint.py builds and loads it).
It imports torch and nothing of this project's, so it can be copied alone.

    from checkpoint import build_model
    model = build_model("sentence-transformers/all-MiniLM-L6-v2", "mean", 0.1, LABELS)   # a ToxicClassifier
    logits = model(input_ids, attention_mask)                                       # (B,T) -> (B,num_labels)
"""
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def math_attention(input_ids):
    """True where attention should take SDPA's math path (matmul, softmax, matmul): training under bf16 autocast
    on a CPU. There torch's fused CPU kernel spends 25x its forward time in its bf16 backward, 60% of a MiniLM
    step, and the math path trains 1.7-1.9x faster (docs/experiments.md, 2026-12-02). Forward-only passes
    (validation, prediction) and fp32 keep the fused kernel, the faster one there. It matters at dropout 0 (the
    mini configs): with attention dropout SDPA takes the math path on a CPU anyway. Measured up to 128 tokens;
    the math path keeps B x heads x T x T scores for the backward, which grows with T squared."""
    return (input_ids.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class ToxicClassifier(nn.Module):
    """input_ids, attention_mask (B,T) -> logits (B, num_labels): one per label, in the checkpoint's label order."""

    def __init__(self, encoder, pooling, dropout, num_labels):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def forward(self, input_ids, attention_mask):
        keep = attention_mask
        if self.encoder.config._attn_implementation == "sdpa":
            # SDPA takes this as it is. Given the 2D mask, transformers first asks mask.all() in Python (a batch
            # without padding needs none), and that is a host-device sync in every eager forward on a GPU.
            keep = attention_mask.bool()[:, None, None, :]  # (B,T) -> (B,1,1,T)
        with sdpa_kernel(SDPBackend.MATH) if math_attention(input_ids) else nullcontext():
            h = self.encoder(input_ids=input_ids, attention_mask=keep).last_hidden_state  # (B,T,H)
        if self.pooling == "cls":
            pooled = h[:, 0]  # (B,T,H) -> (B,H)
        else:
            mask = attention_mask.unsqueeze(-1).to(h.dtype)  # (B,T) -> (B,T,1)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,T,H) * (B,T,1) -> (B,H)
        return self.head(pooled)  # (B,H) -> (B,num_labels)
