"""Textual MNIST scoring of a live model (``acc`` and ``gen_acc``), used by training and ``evaluate``.

(``evaluate.py`` is the command; every method's adapter export is ``rigsa_lightning.adapters.export_adapter``.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rigsa_lightning.adapters.registry import get_method
from rigsa_lightning.io import atomic_write_json
from rigsa_lightning.progress import Progress, track

log = logging.getLogger(__name__)


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision.startswith("bf16"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def digits_are_single_tokens(tokenizer: Any) -> bool:
    """Whether each digit 0-9 is one token: then greedy generation's first token, when it is a digit token, is the
    parsed answer, and only the other examples need an actual ``generate()``."""
    return all(len(tokenizer.encode(str(d), add_special_tokens=False)) == 1 for d in range(10))


@torch.no_grad()
def score_textual_mnist(
    model: torch.nn.Module,
    dm: Any,
    split: str = "test",
    precision: str = "32-true",
    cfg: DictConfig | None = None,
    cache_key: str | None = None,
) -> dict[str, float]:
    """Accuracy on a Textual MNIST split two ways.

    ``acc``: argmax over the ten digit tokens at the answer position (teacher-forced prompt);
    ``gen_acc``: greedy generation parsed for the first digit (what a user sees). With ``cache_key`` (used for the
    untrained base) the result is cached on disk keyed by the model and every data option.
    """
    from rigsa_lightning.data.prompt import answer_digit_logits, parse_first_digit

    cache_file = None
    if cache_key is not None and cfg is not None:
        payload = json.dumps(
            {
                "model": cache_key,
                "data": OmegaConf.to_container(cfg.data, resolve=True),
                "method": str(cfg.adapter.method) if get_method(cfg.adapter.method).quantized else "base",
                "precision": precision,
                "split": split,
            },
            sort_keys=True,
        )
        digest = hashlib.sha1(payload.encode()).hexdigest()[:16]
        cache_file = Path(cfg.paths.cache_dir) / "zero_shot" / f"{digest}.json"
        if cache_file.is_file():
            log.info("Textual MNIST zero-shot accuracy from cache %s", cache_file)
            return json.loads(cache_file.read_text())

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    digit_ids = torch.tensor(dm.digit_token_ids, device=device)
    max_new = int(cfg.data.get("gen_max_new_tokens", 4)) if cfg is not None else 4
    bs = int(cfg.data.get("eval_batch_size", 32)) if cfg is not None else 32
    single_token_digits = digits_are_single_tokens(dm.tokenizer)
    correct = total = gen_correct = 0
    need_generation: list[int] = []
    with _autocast(precision):
        for batch, at_answer in _answer_batches(model, dm, split, f"Textual MNIST {split}: scoring"):
            # the same digit selection as the metric training logs (val/acc: textual_mnist_accuracy)
            pred = answer_digit_logits(at_answer, batch["answer_pos"], dm.digit_token_ids).argmax(-1)
            correct += int((pred == batch["digit"]).sum())
            # Greedy generation's first token is the full-vocabulary argmax at the answer position: when it is a
            # digit token, the parsed answer is that digit, so only the other examples need an actual generate().
            first = at_answer.argmax(-1)
            is_digit = (first[:, None] == digit_ids[None, :]).any(-1) & single_token_digits
            first_digit = (first[:, None] == digit_ids[None, :]).float().argmax(-1)
            gen_correct += int(((first_digit == batch["digit"]) & is_digit).sum())
            need_generation += [total + i for i in torch.nonzero(~is_digit).flatten().tolist()]
            total += int(batch["digit"].numel())
        tok = dm.tokenizer
        generation = Progress(
            f"Textual MNIST {split}: gen_acc generation", total=len(need_generation), unit="ex"
        )
        for batch in dm.generation_batches(split, bs, indices=need_generation) if need_generation else []:
            ids = batch["input_ids"].to(device)
            out = model.generate(
                input_ids=ids,
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            texts = tok.batch_decode(out[:, ids.size(1) :], skip_special_tokens=True)
            for text, digit in zip(texts, batch["digit"].tolist()):
                gen_correct += int(parse_first_digit(text) == digit)
            generation.update(len(texts))
        generation.close()
    gen_total = total
    model.train(was_training)
    result = {"acc": correct / max(1, total), "gen_acc": gen_correct / max(1, gen_total), "n": float(total)}
    if cache_file is not None:
        atomic_write_json(cache_file, result)
    return result


def _answer_batches(
    model: torch.nn.Module, dm: Any, split: str, desc: str
) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """``(batch on the model's device, [batch, vocab] logits at the answer positions)`` over ``split``'s loader in
    order, reported as progress ``desc`` (the LM head at the answer position only; a full forward for models
    without a plain linear head)."""
    from rigsa_lightning.models.head import answer_logits

    device = next(model.parameters()).device
    loader = {"test": dm.test_dataloader, "val": dm.val_dataloader}[split]()
    total = len(loader.dataset) if hasattr(loader, "dataset") and hasattr(loader.dataset, "__len__") else None
    for batch in track(loader, desc, total=total, unit="ex", weight=lambda b: int(b["digit"].numel())):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        yield batch, answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["answer_pos"])


@torch.no_grad()
def answer_log_probs(
    model: torch.nn.Module, dm: Any, split: str = "test", precision: str = "32-true"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-item view of ``acc``: ``(log_probs, digits)`` over ``split`` in the split's order.

    ``log_probs`` ``[N, 10]`` (fp32, CPU) are the log-probabilities of the ten digit tokens at each item's answer
    position (``log_softmax`` over the whole vocabulary): their argmax is the digit ``acc`` counts, and they are
    the ten log-likelihoods an lm-eval multiple-choice task over the digits scores. ``digits`` ``[N]`` are the
    labels."""
    from rigsa_lightning.data.prompt import answer_digit_logits

    was_training = model.training
    model.eval()
    rows, labels = [], []
    try:
        with _autocast(precision):
            for batch, at_answer in _answer_batches(model, dm, split, f"Textual MNIST {split}: log-probs"):
                logp = torch.log_softmax(at_answer.float(), dim=-1)
                rows.append(answer_digit_logits(logp, batch["answer_pos"], dm.digit_token_ids).cpu())
                labels.append(batch["digit"].cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows), torch.cat(labels)
