"""A faster lm-eval model: each context is encoded once, its continuations share the context's KV cache, and the
LM head runs only where a continuation token is predicted.

:class:`FastHFLM` is lm-eval's own ``HFLM`` with ``_loglikelihood_tokens`` and ``generate_until`` replaced: the
requests, their tokenisation (``_encode_pair``: trailing spaces moved to the continuation, the same left
truncation), the task YAMLs, filters and metrics all stay lm-eval's.

Log-likelihoods: requests with the same context form a group whose prefix is the context plus the token prefix its
continuations share. A batch of prefixes (right padded, sorted by length) runs through the decoder body once; the
remaining continuation tokens then run in length-sorted chunks over a copy of their group's KV cache rows
(``index_select``), with explicit position ids and an attention mask that hides the padding. The head (a plain
``nn.Linear``) is applied only where a continuation token is predicted, in the model's dtype, followed by
``log_softmax`` like HFLM.

Generation (GSM8k), when :attr:`FastHFLM.gold_targets` names the task: one prefill of *prompt + reference solution*
gives the solution's teacher-forced NLL (:attr:`FastHFLM.gold_scores`) and, with the solution masked out, greedy
generation over the same cache. Sampling, logits processors from the generation config, a truncated prompt, or no
gold target: HFLM's own batched ``generate``.

Models whose head is not a plain linear layer, or whose logits the restricted path does not reproduce on a probe,
use HFLM's path (one log line). Both fast paths report their progress (:mod:`rigsa_lightning.progress`: a bar on
a terminal, periodic log lines otherwise) as ``<progress_label>: <tasks> log-likelihoods`` / ``generation``. Equivalence with ``HFLM`` (identical per-item acc / acc_norm / exact match and
generated text, log-likelihoods within 1e-4) is tested in ``tests/test_fast_scorer.py``; ``make bench``
(``bench/fast_scorer.py``) measures the speed ratio.

(Over ~400 lines on purpose: the two replaced lm-eval methods and their cache bookkeeping must be read
together with the parity they keep.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

from rigsa_lightning.models.head import split_causal_lm
from rigsa_lightning.progress import Progress

log = logging.getLogger(__name__)

#: Tokens per batched forward (contexts, and continuations) unless ``token_budget`` is given.
DEFAULT_TOKEN_BUDGET = 2048


def _cache_of(output: Any) -> Any:
    """The KV cache of a model output (``cache`` in recent transformers, ``past_key_values`` before)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def length_batches(lengths: Sequence[int], token_budget: int, slack: float = 0.1) -> list[list[int]]:
    """Split positions ``0..n-1`` of length-sorted ``lengths`` into consecutive batches whose padded size
    (rows x longest) stays within ``token_budget`` and within ``1 + slack`` of their real token count."""
    batches: list[list[int]] = []
    current: list[int] = []
    real = width = 0
    for k, length in enumerate(lengths):
        n = max(int(length), 1)
        w = max(width, n)
        if current and (
            (len(current) + 1) * w > token_budget or (len(current) + 1) * w > (1 + slack) * (real + n)
        ):
            batches.append(current)
            current, real, w = [], 0, n
        current.append(k)
        real += n
        width = w
    if current:
        batches.append(current)
    return batches


def right_padded(seqs: Sequence[Sequence[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token lists right-padded to the longest (padding id 0, mask 0)."""
    ids = torch.zeros(len(seqs), max(len(x) for x in seqs), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, seq in enumerate(seqs):
        if len(seq):
            ids[r, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            mask[r, : len(seq)] = 1
    return ids, mask


class FastHFLM(HFLM):
    """lm-eval's ``HFLM`` whose log-likelihood requests share each context's KV cache.

    Args:
        pretrained: the live model (or anything ``HFLM`` accepts).
        token_budget: tokens per batched forward pass (contexts; continuations).
        **kwargs: passed to ``HFLM`` (``tokenizer``, ``batch_size`` for generation, ...).
    """

    def __init__(self, pretrained: Any, token_budget: int = DEFAULT_TOKEN_BUDGET, **kwargs: Any) -> None:
        super().__init__(pretrained=pretrained, **kwargs)
        self.token_budget = int(token_budget)
        self._split = split_causal_lm(self.model) if self.backend == "causal" else None
        self._checked = False
        #: ``{task name: doc -> reference continuation}``: generate-until tasks whose solution NLL is wanted.
        self.gold_targets: dict[str, Any] = {}
        #: ``{prompt: (NLL of the reference solution, its tokens)}`` filled by :meth:`generate_until`.
        self.gold_scores: dict[str, tuple[float, int]] = {}
        #: The stage named in progress reports (``forgetting before``, ...); ``progress_what``: what is scored.
        self.progress_label = "fast scorer"
        self.progress_what: str | None = None
        self._cache_kw = "past_key_values"
        if self._split is not None:
            import inspect

            if "cache" in inspect.signature(self._split[0].forward).parameters:
                self._cache_kw = "cache"  # transformers >= 5.2x renamed it
        if self._split is None:
            log.info("fast scorer: the model's head is not a plain linear layer; using lm-eval's HFLM path")

    # ------------------------------------------------------------------ helpers
    def _head_logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self._split is not None
        logits = self._split[1](hidden)
        return F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)

    def _probe(self, tokens: Sequence[int]) -> bool:
        """Whether the restricted path gives the model's own logits on ``tokens`` (checked once per instance)."""
        assert self._split is not None
        ids = torch.tensor([list(tokens)[-64:]], dtype=torch.long, device=self.device)
        with torch.no_grad():
            full = self.model(ids).logits[0, -1].float()
            hidden = self._split[0](input_ids=ids).last_hidden_state
            part = self._split[1](hidden[0, -1]).float()
        ok = torch.allclose(full, part, atol=1e-4, rtol=1e-4)
        if not ok:
            log.info(
                "fast scorer: restricted head differs from the model's logits; using lm-eval's HFLM path"
            )
        return ok

    def _progress(self, what: str, total: int, unit: str) -> Progress:
        """The progress report of one scoring pass (``<progress_label>: <what>``)."""
        return Progress(f"{self.progress_label}: {self.progress_what or what}", total=total, unit=unit)

    @staticmethod
    def _task_names(requests: Sequence[Any]) -> str:
        names = sorted({str(n) for n in (getattr(r, "task_name", None) for r in requests) if n})
        return ", ".join(names) + " " if names else ""

    # ------------------------------------------------------------------ lm-eval hooks
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """HFLM's ``loglikelihood``, its progress reports naming the requests' tasks."""
        outer = self.progress_what
        self.progress_what = outer or f"{self._task_names(requests)}log-likelihoods"
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self.progress_what = outer

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """``(sum of continuation log-probs, continuation is greedy)`` per request, in request order."""
        if self._split is not None and not self._checked and requests:
            _, ctx, cont = requests[0]
            if not self._probe(ctx + cont):
                self._split = None
            self._checked = True
        if self._split is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        by_context: dict[tuple[int, ...], list[int]] = {}
        overlong: list[int] = []
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont:
                raise ValueError("fast scorer: empty context or continuation tokens")
            if len(ctx) + len(cont) > self.max_length + 1:
                overlong.append(i)
            else:
                by_context.setdefault(tuple(ctx), []).append(i)
        if overlong:  # left truncation mixes context and continuation: lm-eval's own path
            out = super()._loglikelihood_tokens([requests[i] for i in overlong], disable_tqdm=True)
            for i, value in zip(overlong, out, strict=True):
                results[i] = value
        groups = [_Group.of(ctx, members, requests) for ctx, members in by_context.items()]
        groups.sort(key=lambda grp: -len(grp.prefix))  # by length: little padding in the prefix pass
        with self._progress("log-likelihoods", len(requests), "req") as bar:
            bar.update(len(overlong))
            for part in length_batches([len(grp.prefix) for grp in groups], self.token_budget):
                self._score_batch([groups[k] for k in part], requests, results)
                bar.update(sum(len(groups[k].members) for k in part))
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    @torch.no_grad()
    def _score_batch(
        self,
        batch: list[_Group],
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        results: list[tuple[float, bool] | None],
    ) -> None:
        """One pass over the groups' shared prefixes, then their continuations' remainders in length-sorted chunks."""
        assert self._split is not None
        body, _ = self._split
        device = self.device
        ids, prefix_mask = right_padded([grp.prefix for grp in batch], device)
        out = body(input_ids=ids, attention_mask=prefix_mask, use_cache=True)
        # the head at the last context position and every shared-continuation position, for all groups at once
        rows_idx = [g for g, grp in enumerate(batch) for _ in range(grp.n_shared + 1)]
        pos_idx = [p for grp in batch for p in range(grp.ctx_len - 1, len(grp.prefix))]
        prefix_lp = self._head_logprobs(out.last_hidden_state[torch.tensor(rows_idx), torch.tensor(pos_idx)])
        first_logprobs, shared = [], []
        offset = 0
        for grp in batch:
            lp = prefix_lp[offset : offset + grp.n_shared + 1]
            offset += grp.n_shared + 1
            first_logprobs.append(lp[-1])
            if grp.n_shared:
                target = torch.tensor(grp.prefix[grp.ctx_len :], dtype=torch.long, device=device)
                shared.append(
                    (
                        float(lp[:-1].gather(1, target[:, None]).sum()),
                        bool((lp[:-1].argmax(-1) == target).all()),
                    )
                )
            else:
                shared.append((0.0, True))
        first = torch.stack(first_logprobs)  # [groups, vocab]: predicts each remainder's first token

        rows = sorted(
            ((g, i) for g, grp in enumerate(batch) for i in grp.members),
            key=lambda gi: len(requests[gi[1]][2]),
        )
        tails = [len(requests[i][2]) - batch[g].n_shared - 1 for g, i in rows]
        for part in length_batches(tails, self.token_budget):
            chunk = [rows[k] for k in part]
            self._score_rows(chunk, batch, requests, results, _cache_of(out), prefix_mask, first, shared)

    def _score_rows(
        self,
        rows: list[tuple[int, int]],
        batch: list[_Group],
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        results: list[tuple[float, bool] | None],
        prefix_cache: Any,
        prefix_mask: torch.Tensor,
        first: torch.Tensor,
        shared: list[tuple[float, bool]],
    ) -> None:
        """Score the remainders of ``rows`` (``(group index in the batch, request index)``) over the prefix cache."""
        from transformers import DynamicCache

        assert self._split is not None
        body, _ = self._split
        device = self.device
        rests = [requests[i][2][batch[g].n_shared :] for g, i in rows]
        tail = max(len(c) for c in rests) - 1
        row_group = torch.tensor([g for g, _ in rows], dtype=torch.long, device=device)
        tail_logprobs = None
        if tail > 0:
            cache = DynamicCache(
                ddp_cache_data=[
                    (layer.keys.index_select(0, row_group), layer.values.index_select(0, row_group))
                    for layer in prefix_cache.layers
                ],
                config=getattr(body, "config", None),
            )
            tail_ids, tail_mask = right_padded([rest[:-1] for rest in rests], device)
            starts = torch.tensor([len(batch[g].prefix) for g, _ in rows], dtype=torch.long, device=device)
            positions = starts[:, None] + torch.arange(tail, device=device)[None, :]
            hidden = body(
                input_ids=tail_ids,
                attention_mask=torch.cat([prefix_mask[row_group], tail_mask], dim=1),
                position_ids=positions,
                use_cache=True,
                **{self._cache_kw: cache},
            ).last_hidden_state
            tail_logprobs = self._head_logprobs(
                hidden[tail_mask.bool()]
            )  # only positions that predict tokens
        offset = 0
        for (g, i), rest in zip(rows, rests, strict=True):
            target = torch.tensor(rest, dtype=torch.long, device=device)
            logprobs = first[g][None, :]
            if len(rest) > 1:
                assert tail_logprobs is not None
                logprobs = torch.cat([logprobs, tail_logprobs[offset : offset + len(rest) - 1]], dim=0)
                offset += len(rest) - 1
            score = shared[g][0] + float(logprobs.gather(1, target[:, None]).sum())
            greedy = shared[g][1] and bool((logprobs.argmax(dim=-1) == target).all())
            results[i] = (score, greedy)
            self.cache_hook.add_partial("loglikelihood", requests[i][0], (score, greedy))

    # ------------------------------------------------------------------ generation (+ the gold solution's NLL)
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy generation with a KV cache; for tasks in :attr:`gold_targets` one prefill of *prompt + reference
        solution* also gives the solution's teacher-forced NLL (:attr:`gold_scores`), the solution's positions being
        masked out while generating. Falls back to HFLM's ``generate`` for sampling, a truncated prompt, a
        non-plain head, or when no gold target is asked for."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        gold = self.gold_targets
        if self._split is None or not gold or not requests or not self._plain_greedy():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        plans: list[tuple[int, str, list[int], list[int], list[str], int]] = []
        for k, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            sampling = kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0
            target = gold.get(getattr(req, "task_name", None))
            ctx_enc = self.tok_batch_encode([context])[0][0].tolist()
            if (
                sampling
                or target is None
                or "max_length" in kwargs
                or len(ctx_enc) > self.max_length - max_gen
            ):
                return super().generate_until(requests, disable_tqdm=disable_tqdm)
            pair_ctx, cont_enc = self._encode_pair(context, target(req.doc))
            if pair_ctx != ctx_enc or not cont_enc:
                return super().generate_until(requests, disable_tqdm=disable_tqdm)
            plans.append((k, context, ctx_enc, cont_enc, until, max_gen))
        out: list[str] = [""] * len(requests)
        plans.sort(key=lambda p: -(len(p[2]) + len(p[3])))
        batch = max(1, int(self.batch_size) if str(self.batch_size).isdigit() else 8)
        what = f"{self._task_names(requests)}generation"
        with self._progress(what, len(plans), "doc") as bar:
            for start in range(0, len(plans), batch):
                for k, text in self._generate_batch(plans[start : start + batch]):
                    out[k] = text
                    context, gen_kwargs = requests[k].args
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                bar.update(len(plans[start : start + batch]))
        return out

    @torch.no_grad()
    def _generate_batch(
        self, plans: list[tuple[int, str, list[int], list[int], list[str], int]]
    ) -> list[tuple[int, str]]:
        from lm_eval.models.utils import postprocess_generated_text

        assert self._split is not None
        body, _ = self._split
        device = self.device
        ids, mask = right_padded([ctx + cont[:-1] for _, _, ctx, cont, _, _ in plans], device)
        width = ids.shape[1]
        out = body(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = _cache_of(out)
        # the head where the solution's tokens are predicted: its NLL, and the first generated token (greedy)
        rows = [r for r, p in enumerate(plans) for _ in range(len(p[3]))]
        pos = [t for p in plans for t in range(len(p[2]) - 1, len(p[2]) + len(p[3]) - 1)]
        logprobs = self._head_logprobs(out.last_hidden_state[torch.tensor(rows), torch.tensor(pos)])
        scores = self.gold_scores
        first_tokens, offset = [], 0
        for _, context, _, cont, _, _ in plans:
            lp = logprobs[offset : offset + len(cont)]
            offset += len(cont)
            target = torch.tensor(cont, dtype=torch.long, device=device)
            scores[context] = (-float(lp.gather(1, target[:, None]).sum()), len(cont))
            first_tokens.append(int(lp[0].argmax()))
        # generation: only the prompt's cache entries are visible (the solution's are masked out)
        ctx_lens = torch.tensor([len(p[2]) for p in plans], dtype=torch.long, device=device)
        visible = (torch.arange(width, device=device)[None, :] < ctx_lens[:, None]).long()
        max_gen = max(p[5] for p in plans)
        generated: list[list[int]] = [[t] for t in first_tokens]
        done = [self._finished(g, p[4], p[5]) for g, p in zip(generated, plans, strict=True)]
        step = 0
        while not all(done) and step + 1 < max_gen:
            tokens = torch.tensor([[g[-1]] for g in generated], dtype=torch.long, device=device)
            visible = torch.cat([visible, torch.ones(len(plans), 1, dtype=torch.long, device=device)], dim=1)
            hidden = body(
                input_ids=tokens,
                attention_mask=visible,
                position_ids=(ctx_lens + step)[:, None],
                use_cache=True,
                **{self._cache_kw: cache},
            ).last_hidden_state
            nxt = self._split[1](hidden[:, -1]).argmax(-1).tolist()
            step += 1
            for r, token in enumerate(nxt):
                if not done[r]:
                    generated[r].append(int(token))
                    done[r] = self._finished(generated[r], plans[r][4], plans[r][5])
        results = []
        for (k, _, _, _, until, _), toks in zip(plans, generated, strict=True):
            text = postprocess_generated_text(
                generation=self.tok_decode(toks), stop=until, think_end_token=None
            )
            results.append((k, text))
        return results

    def _plain_greedy(self) -> bool:
        """Whether HF ``generate`` would be plain greedy decoding here (no logits processor from the model's
        generation config); records the end-of-sequence ids it stops at."""
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self._eos_ids = {int(i) for i in ids} | {int(self.eot_token_id)}
        if config is None:
            return True
        neutral = {
            "repetition_penalty": (None, 1.0),
            "no_repeat_ngram_size": (None, 0),
            "bad_words_ids": (None,),
            "suppress_tokens": (None,),
            "begin_suppress_tokens": (None,),
            "forced_bos_token_id": (None,),
            "forced_eos_token_id": (None,),
            "min_new_tokens": (None, 0),
            "min_length": (None, 0),
            "encoder_repetition_penalty": (None, 1.0),
            "sequence_bias": (None,),
        }
        return all(getattr(config, k, None) in v for k, v in neutral.items())

    def _finished(self, tokens: list[int], until: list[str], max_gen: int) -> bool:
        """A row stops at an end-of-sequence token, at a stop sequence, or after ``max_gen`` tokens."""
        if len(tokens) >= max_gen or tokens[-1] in getattr(self, "_eos_ids", {self.eot_token_id}):
            return True
        text = self.tok_decode(tokens[-12:])  # a stop sequence ends within the last tokens
        return any(u and u in text for u in until)


@dataclass
class _Group:
    """Requests with the same context tokens; ``prefix`` = the context + the longest token prefix their
    continuations share (at most each continuation's length - 1, so every request keeps one token to predict)."""

    prefix: tuple[int, ...]
    ctx_len: int
    members: list[int]

    @property
    def n_shared(self) -> int:
        """Continuation tokens in the prefix."""
        return len(self.prefix) - self.ctx_len

    @classmethod
    def of(
        cls,
        ctx: tuple[int, ...],
        members: list[int],
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
    ) -> _Group:
        """The group of ``members`` (request indices) sharing context ``ctx``."""
        conts = [requests[i][2] for i in members]
        limit = min(len(c) for c in conts) - 1
        n = 0
        while n < limit and all(c[n] == conts[0][n] for c in conts):
            n += 1
        return cls(prefix=ctx + tuple(conts[0][:n]), ctx_len=len(ctx), members=members)
