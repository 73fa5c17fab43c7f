"""Greedy and beam-search decoding for ``Seq2SeqTransformer``, batched over sentences.

Both return, per sentence, the generated token ids without [BOS] and without the final [EOS] (a
hypothesis that never emits [EOS] stops after ``max_len`` tokens). With ``use_cache`` each step feeds
only the newest token and reuses the decoder's key/value cache; without it each step re-runs the
decoder over the whole prefix: both give the same tokens. Call them with the model in eval mode.

Beam search keeps ``beam_size`` hypotheses per sentence. At each step it takes the 2K best extensions
of all K beams (at most K of them end in [EOS], one per beam, so K others can go on): an [EOS] among
the K best finishes a hypothesis, scored by its log-probability divided by the GNMT length penalty
((5 + length) / 6) ** length_penalty (Wu et al., 2016; the length counts [EOS]); the K best that do
not end become the next beams, and the cache rows follow their parents (``index_select``). A sentence
is done once it has K finished hypotheses and none of its live beams, ended now, would beat the K-th
best of them; at ``max_len`` its live beams compete with the finished ones. With beam_size 1 this is
exactly greedy search.

Shapes: B = sentences, K = beam size, S = source length, t = tokens so far (with [BOS]), V = vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aigc_lab.models.seq2seq import DecoderCache, Seq2SeqTransformer


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """((5 + length) / 6) ** alpha; alpha 0 ranks hypotheses by their raw log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def _next_log_probs(
    model: Seq2SeqTransformer,
    tokens: torch.Tensor,
    memory: torch.Tensor,
    src_mask: torch.Tensor | None,
    cache: DecoderCache | None,
) -> torch.Tensor:
    """tokens [R, t] -> log-probabilities of the next token [R, V] (float32, or float64 for a float64 model)."""
    inputs = tokens[:, -1:] if cache is not None else tokens  # a cache holds the earlier positions
    logits = model.decode(inputs, memory, src_mask, cache)[:, -1]  # [R, V]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.log_softmax(logits, dim=-1)


def _strip(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: torch.Tensor, src_mask: torch.Tensor | None, bos: int, eos: int,
                  max_len: int, use_cache: bool = True) -> list[list[int]]:
    """src [B, S], src_mask [B, S] -> B lists of at most ``max_len`` token ids: the most likely token at each step."""
    max_len = min(max_len, model.cfg.max_len)
    memory = model.encode(src, src_mask)  # [B, S, D]
    cache = model.new_cache() if use_cache else None
    tokens = src.new_full((src.shape[0], 1), bos)  # [B, t]
    ended = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        next_ids = _next_log_probs(model, tokens, memory, src_mask, cache).argmax(dim=-1)  # [B]
        tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
        ended |= next_ids == eos
        if bool(ended.all()):
            break
    return [_strip(row, eos) for row in tokens[:, 1:].tolist()]


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src: torch.Tensor,
    src_mask: torch.Tensor | None,
    bos: int,
    eos: int,
    beam_size: int,
    max_len: int,
    length_penalty: float = 1.0,
    use_cache: bool = True,
) -> list[list[int]]:
    """src [B, S], src_mask [B, S] -> B lists of token ids: the best hypothesis of each sentence."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    b, k = src.shape[0], beam_size
    max_len = min(max_len, model.cfg.max_len)
    memory = model.encode(src, src_mask).repeat_interleave(k, dim=0)  # [B*K, S, D]; row i*K + j = beam j of sentence i
    mask = src_mask.repeat_interleave(k, dim=0) if src_mask is not None else None  # [B*K, S]
    cache = model.new_cache() if use_cache else None
    tokens = src.new_full((b * k, 1), bos)  # [B*K, t]
    dtype = torch.float64 if memory.dtype == torch.float64 else torch.float32
    scores = torch.full((b, k), float("-inf"), dtype=dtype, device=src.device)  # [B, K] summed log-probs
    scores[:, 0] = 0.0  # at the start only the first beam is live: the others would repeat it
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]  # (normalized score, ids)
    done = [False] * b
    first_row = torch.arange(b, device=src.device)[:, None] * k  # [B, 1]
    for step in range(max_len):
        logp = _next_log_probs(model, tokens, memory, mask, cache)  # [B*K, V]
        v = logp.shape[-1]
        candidates = (scores.view(-1, 1) + logp.to(dtype)).view(b, k * v)  # [B, K*V]
        top, flat = candidates.topk(2 * k, dim=1)  # [B, 2K], best first
        parent, token = flat // v, flat % v  # [B, 2K]: the beam extended and the token appended
        is_eos = token == eos
        hits = is_eos[:, :k].nonzero().tolist()  # [EOS] among the K best: finished hypotheses
        if hits:
            top_l, parent_l = top.tolist(), parent.tolist()
            penalty = gnmt_length_penalty(step + 1, length_penalty)
            for i, j in hits:
                if not done[i] and top_l[i][j] > float("-inf"):
                    ids = tokens[i * k + parent_l[i][j], 1:].tolist()
                    finished[i].append((top_l[i][j] / penalty, ids))
        # The K best extensions that do not end, in rank order: the next beams.
        keep = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :k]  # [B, K]
        scores = top.gather(1, keep)
        rows = (first_row + parent.gather(1, keep)).view(-1)  # [B*K]: each new beam's parent row
        tokens = torch.cat([tokens.index_select(0, rows), token.gather(1, keep).view(-1, 1)], dim=1)
        if cache is not None:
            cache.reorder(rows)
        # Done: K finished hypotheses, the K-th best of them at least as good as the best live beam would be
        # if it ended now (log-probabilities only fall as a hypothesis grows; with length_penalty > 0 this
        # is the usual heuristic, as in Hugging Face's beam search).
        live_best = scores[:, 0].tolist()  # [B]: rank order, so column 0 is each sentence's best live beam
        penalty = gnmt_length_penalty(step + 1, length_penalty)
        for i in range(b):
            if not done[i] and len(finished[i]) >= k:
                kth_best = sorted((h[0] for h in finished[i]), reverse=True)[k - 1]
                done[i] = live_best[i] / penalty <= kth_best
        if all(done):
            break
    results = []
    scores_l = scores.tolist()
    penalty = gnmt_length_penalty(tokens.shape[1] - 1, length_penalty)
    for i in range(b):
        hyps = finished[i]
        if not done[i]:  # max_len reached: the live beams (no [EOS]) compete too
            hyps = hyps + [(scores_l[i][j] / penalty, tokens[i * k + j, 1:].tolist())
                           for j in range(k) if scores_l[i][j] > float("-inf")]
        results.append(max(hyps, key=lambda h: h[0])[1] if hyps else [])
    return results


def search(model: Seq2SeqTransformer, src: torch.Tensor, src_mask: torch.Tensor | None, bos: int, eos: int,
           max_len: int, beam_size: int = 1, length_penalty: float = 1.0) -> list[list[int]]:
    """Greedy search for beam_size 1 (the same tokens as a beam of one, with less bookkeeping), else beam search."""
    if beam_size == 1:
        return greedy_decode(model, src, src_mask, bos, eos, max_len)
    return beam_search(model, src, src_mask, bos, eos, beam_size, max_len, length_penalty)
