"""Textual MNIST: sources, splits, prompt/labels, cache, sampler, generation batches, metrics, lm-eval task."""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.data import (
    EpochSeededSampler,
    PadCollator,
    PromptFormatter,
    TextualMNISTDataModule,
    load_source,
    parse_first_digit,
    read_idx,
    textual_mnist_accuracy,
    write_idx,
    write_lm_eval_task,
)


def small_cfg(**overrides):
    cfg = {
        "source": "digits",
        "path": None,
        "resolution": None,
        "levels": 10,
        "separator": "",
        "train_size": 64,
        "val_size": 16,
        "test_size": 24,
        "seed": 0,
        "batch_size": 8,
        "eval_batch_size": 16,
        "num_workers": 0,
        "system_prompt": None,
        "prompt": "Which digit (0-9) is drawn above? Answer with the digit only.",
        "supervise_eos": True,
        "cache": False,
        "length_bucketing": False,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tok(smollm2_dir: str):
    from rigsa_lightning.models import load_tokenizer

    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def dm(tok) -> TextualMNISTDataModule:
    module = TextualMNISTDataModule(small_cfg(), tok)
    module.setup()
    return module


# ------------------------------------------------------------------------------------------------ tokens, labels


def test_digits_are_ten_distinct_single_tokens_for_smollm2(tok, dm) -> None:
    singles = [tok(str(d), add_special_tokens=False)["input_ids"] for d in range(10)]
    assert all(len(s) == 1 for s in singles)
    assert dm.digit_token_ids == [s[0] for s in singles]
    assert len(set(dm.digit_token_ids)) == 10
    assert dm.formatter.digit_offset == 0
    assert dm.formatter.eos_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_only_the_answer_is_supervised(tok, dm) -> None:
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "answer_pos", "digit"}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for r in range(batch["input_ids"].shape[0]):
        labels, ids, pos, digit = (
            batch["labels"][r],
            batch["input_ids"][r],
            int(batch["answer_pos"][r]),
            int(batch["digit"][r]),
        )
        supervised = (labels != -100).nonzero().flatten().tolist()
        assert supervised == [pos + 1, pos + 2]
        assert tok.decode(labels[supervised]) == f"{digit}<|im_end|>"
        assert labels[pos + 1] == dm.digit_token_ids[digit] and labels[pos + 2] == im_end
        assert torch.equal(labels[supervised], ids[supervised])
        # the answer position is the last prompt token, the newline after "assistant"
        assert tok.decode(ids[: pos + 1]).endswith("<|im_start|>assistant\n")
        assert int(batch["attention_mask"][r].sum()) == pos + 3


def test_supervise_eos_false_supervises_the_digit_only(tok) -> None:
    module = TextualMNISTDataModule(
        small_cfg(supervise_eos=False, train_size=8, val_size=8, test_size=8), tok
    )
    module.setup()
    batch = next(iter(module.val_dataloader()))
    for r in range(batch["labels"].shape[0]):
        supervised = (batch["labels"][r] != -100).nonzero().flatten().tolist()
        assert supervised == [int(batch["answer_pos"][r]) + 1]
        assert tok.decode(batch["labels"][r][supervised]) == str(int(batch["digit"][r]))


def test_answer_pos_matches_the_models_shifted_loss(tiny_model, dm) -> None:
    model, _ = tiny_model
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    logits = out.logits.float()
    rows = torch.arange(logits.shape[0])
    pos = batch["answer_pos"]
    digit_tokens = torch.tensor(dm.digit_token_ids)[batch["digit"]]
    eos = batch["labels"][rows, pos + 2]
    manual = torch.cat(
        [
            torch.nn.functional.cross_entropy(logits[rows, pos], digit_tokens, reduction="none"),
            torch.nn.functional.cross_entropy(logits[rows, pos + 1], eos, reduction="none"),
        ]
    ).mean()
    assert torch.allclose(out.loss, manual, atol=1e-5)
    acc = textual_mnist_accuracy(logits, batch, dm.digit_token_ids)
    pred = logits[rows, pos][:, dm.digit_token_ids].argmax(-1)
    assert acc.item() == pytest.approx((pred == batch["digit"]).float().mean().item())
    # 2-D logits already taken at the answer position give the same number
    assert textual_mnist_accuracy(logits[rows, pos], batch, dm.digit_token_ids).item() == pytest.approx(
        acc.item()
    )


def test_training_and_scoring_use_the_tested_metric(tiny_model, dm) -> None:
    """What production runs: RigsaLitModule.digit_accuracy (val/acc) and score_textual_mnist (test acc) give the
    number textual_mnist_accuracy gives on the same logits."""
    from types import SimpleNamespace

    from rigsa_lightning.training.module import RigsaLitModule
    from rigsa_lightning.training.scoring import score_textual_mnist

    model, _ = tiny_model
    model.eval()
    expected = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            expected.append(
                (textual_mnist_accuracy(logits, batch, dm.digit_token_ids).item(), len(batch["digit"]))
            )
            fake = SimpleNamespace(digit_token_ids=list(dm.digit_token_ids))
            module_acc = RigsaLitModule.digit_accuracy(fake, logits, batch)
            assert module_acc.item() == pytest.approx(expected[-1][0])
    overall = sum(a * n for a, n in expected) / sum(n for _, n in expected)
    assert score_textual_mnist(model, dm, "test")["acc"] == pytest.approx(overall, abs=1e-9)


def test_single_token_digit_check_reads_the_tokenizer(tok) -> None:
    from rigsa_lightning.training.scoring import digits_are_single_tokens

    assert digits_are_single_tokens(tok)  # SmolLM2: one token per digit

    class SplitDigits:
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [1, 2] if text == "7" else [int(text)]

    assert not digits_are_single_tokens(SplitDigits())


def _char_tokenizer(digit_rewrite: str):
    """A real character-level fast tokenizer whose normaliser rewrites each digit (multi-token digits)."""
    import string

    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) | {"~", "#"})
    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "<eos>", *chars])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(str(d), digit_rewrite.format(d=d)) for d in range(10)]
    )
    backend.add_special_tokens(["<eos>", "<pad>"])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    return tok


def test_multi_token_digits_are_handled() -> None:
    tok = _char_tokenizer("{d}~")  # "7" -> tokens "7", "~"
    module = TextualMNISTDataModule(small_cfg(train_size=8, val_size=8, test_size=8), tok)
    module.setup()
    assert module.digit_token_ids == [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    batch = next(iter(module.train_dataloader()))
    tilde, eos = tok.convert_tokens_to_ids("~"), tok.eos_token_id
    for r in range(batch["labels"].shape[0]):
        pos, digit = int(batch["answer_pos"][r]), int(batch["digit"][r])
        supervised = batch["labels"][r][batch["labels"][r] != -100].tolist()
        assert supervised == [module.digit_token_ids[digit], tilde, eos]
        assert batch["labels"][r][pos + 1] == module.digit_token_ids[digit]


def test_non_distinct_first_digit_tokens_raise() -> None:
    tok = _char_tokenizer("#{d}")  # every digit starts with the same token "#"
    with pytest.raises(ConfigError, match="distinct"):
        PromptFormatter(tok)


# ------------------------------------------------------------------------------------------------ splits, errors


def test_splits_are_disjoint_and_stable(tok, dm) -> None:
    idx = {s: np.asarray(dm.splits[s].hf["source_index"]) for s in ("train", "val", "test")}
    assert [len(v) for v in idx.values()] == [64, 16, 24]
    assert not set(idx["train"]) & set(idx["val"])
    assert not set(idx["train"]) & set(idx["test"])
    assert not set(idx["val"]) & set(idx["test"])
    again = TextualMNISTDataModule(small_cfg(), tok)
    again.setup()
    for s in idx:
        assert np.array_equal(np.asarray(again.splits[s].hf["source_index"]), idx[s])
        assert again.splits[s].hf["input_ids"] == dm.splits[s].hf["input_ids"]
    # a Hydra DictConfig is read the same way as a dict
    from omegaconf import OmegaConf

    assert TextualMNISTDataModule(OmegaConf.create(small_cfg()), tok).cache_key == dm.cache_key
    # the run seed changes the order only; data.seed changes the splits
    assert TextualMNISTDataModule(small_cfg(), tok, seed=123).cache_key == dm.cache_key
    other = TextualMNISTDataModule(small_cfg(seed=1), tok)
    other.setup()
    assert not np.array_equal(np.asarray(other.splits["test"].hf["source_index"]), idx["test"])
    # labels really are the source's labels
    images, labels, _ = load_source(small_cfg())
    assert np.array_equal(labels[idx["test"]], np.asarray(dm.splits["test"].hf["digit"]))


@pytest.mark.parametrize(
    "overrides,option",
    [
        ({"train_size": 0}, "data.train_size"),
        ({"val_size": -3}, "data.val_size"),
        ({"test_size": 0}, "data.test_size"),
        ({"train_size": 5000}, "data.train_size"),
        ({"test_size": 1797}, "data.val_size"),
        ({"test_size": 2000}, "data.test_size"),
        ({"test_size": None}, "data.test_size"),
        ({"val_size": None}, "data.val_size"),
        ({"train_size": "many"}, "data.train_size"),
        ({"resolution": 9}, "data.resolution"),
        ({"resolution": 0}, "data.resolution"),
        ({"source": "cifar"}, "data.source"),
        ({"levels": 11}, "data.separator"),
        ({"levels": 1}, "data.levels"),
        ({"batch_size": 0}, "data.batch_size"),
    ],
)
def test_bad_options_raise_config_errors(tok, overrides, option) -> None:
    with pytest.raises(ConfigError) as err:
        TextualMNISTDataModule(small_cfg(**overrides), tok).setup()
    assert err.value.option == option
    assert "\n" not in err.value.one_line()


def test_train_size_null_takes_the_rest(tok) -> None:
    images, labels, hint = load_source(small_cfg())
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and hint is None
    assert images.max() == 255 and images.min() == 0
    module = TextualMNISTDataModule(small_cfg(train_size=None, val_size=100, test_size=97), tok)
    module.setup()
    assert len(module.splits["train"]) == 1600


def test_offline_mnist_fails_fast_naming_the_source(monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_source({"source": "mnist", "path": None})
    assert time.perf_counter() - start < 5
    assert err.value.option == "data.source" and "data.path" in str(err.value)


def test_unreachable_hub_fails_fast(monkeypatch) -> None:
    import rigsa_lightning.models as models

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_source({"source": "mnist"})
    assert time.perf_counter() - start < 5 and err.value.option == "data.source"


def test_missing_path_names_data_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_source({"source": "mnist", "path": str(tmp_path / "nowhere")})
    assert err.value.option == "data.path"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        load_source({"source": "mnist", "path": str(tmp_path / "empty")})
    assert err.value.option == "data.path"


def test_mnist5k_source() -> None:
    images, labels, hint = load_source({"source": "mnist5k"})
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and hint is None
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255


# ------------------------------------------------------------------------------------------------ local MNIST files


def _synthetic_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    for i, d in enumerate(labels):  # a bar whose position encodes the label, plus noise
        images[i, 4:24, 2 + 2 * d : 4 + 2 * d] = 255
        images[i] |= rng.integers(0, 40, (28, 28), dtype=np.uint8)
    return images, labels


def test_idx_files_load_through_data_path(tmp_path: Path, tok) -> None:
    tr_img, tr_lab = _synthetic_mnist(30, 0)
    te_img, te_lab = _synthetic_mnist(10, 1)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr_img)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", tr_lab)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", te_img)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", te_lab)
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and int.from_bytes(raw[4:8], "big") == 10
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), tr_img)
    images, labels, hint = load_source({"source": "mnist", "path": str(tmp_path)})
    assert np.array_equal(images, np.concatenate([tr_img, te_img]))
    assert np.array_equal(labels, np.concatenate([tr_lab, te_lab]))
    assert hint["train"].tolist() == list(range(30)) and hint["test"].tolist() == list(range(30, 40))
    cfg = small_cfg(
        source="mnist", path=str(tmp_path), train_size=None, val_size=5, test_size=None, resolution=14
    )
    module = TextualMNISTDataModule(cfg, tok)
    module.setup()
    sizes = {s: len(module.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 25, "val": 5, "test": 10}
    assert set(np.asarray(module.splits["test"].hf["source_index"])) == set(range(30, 40))
    ex = module.render_example(0, "test")
    assert ex["grid"].count("\n") == 13 and ex["prompt"].endswith("<|im_start|>assistant\n")
    assert ex["answer"] == f"{ex['digit']}<|im_end|>"
    with pytest.raises(ConfigError) as err:
        load_source({"source": "mnist", "path": str(tmp_path), "resolution": 29})
    assert err.value.option == "data.resolution"


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_files_load_through_data_path(tmp_path: Path) -> None:
    import pandas as pd

    folder = tmp_path / "mnist" / "mnist"
    folder.mkdir(parents=True)
    parts = {"train": _synthetic_mnist(12, 2), "test": _synthetic_mnist(6, 3)}
    for split, (imgs, labs) in parts.items():
        frame = pd.DataFrame({"image": [{"bytes": _png(x), "path": None} for x in imgs], "label": labs})
        frame.to_parquet(folder / f"{split}-00000-of-00001.parquet")
    images, labels, hint = load_source({"source": "mnist", "path": str(tmp_path / "mnist")})
    assert np.array_equal(images, np.concatenate([parts["train"][0], parts["test"][0]]))
    assert np.array_equal(labels, np.concatenate([parts["train"][1], parts["test"][1]]))
    assert len(hint["train"]) == 12 and len(hint["test"]) == 6
    # a single parquet file is one pool (no official split)
    images, labels, hint = load_source(
        {"source": "mnist", "path": str(folder / "test-00000-of-00001.parquet")}
    )
    assert np.array_equal(images, parts["test"][0]) and hint is None


def test_hub_dataset_is_converted(monkeypatch) -> None:
    import datasets

    def fake_load_dataset(name, *args, **kwargs):
        assert name == "ylecun/mnist"
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
        )
        out = {}
        for split, seed in (("train", 4), ("test", 5)):
            imgs, labs = _synthetic_mnist(5, seed)
            out[split] = datasets.Dataset.from_dict(
                {"image": [{"bytes": _png(x), "path": None} for x in imgs], "label": labs.tolist()},
                features=features,
            )
        return datasets.DatasetDict(out)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    images, labels, hint = load_source({"source": "mnist"})
    assert images.shape == (10, 28, 28)
    assert np.array_equal(images[:5], _synthetic_mnist(5, 4)[0]) and np.array_equal(
        labels[5:], _synthetic_mnist(5, 5)[1]
    )
    assert hint["test"].tolist() == [5, 6, 7, 8, 9]


# ------------------------------------------------------------------------------------------------ cache


def test_cache_hit_on_second_build_and_miss_on_changed_option(tok, tmp_path: Path, caplog) -> None:
    cfg = small_cfg(cache=True)
    first = TextualMNISTDataModule(cfg, tok, cache_dir=tmp_path)
    first.prepare_data()
    first.setup()
    assert first.cache_hit is False
    assert (
        first.cache_path.parent == tmp_path / "textual_mnist"
        and (first.cache_path / "rigsa_key.json").is_file()
    )
    caplog.set_level(logging.INFO, logger="rigsa_lightning.data.textual_mnist")
    second = TextualMNISTDataModule(cfg, tok, cache_dir=tmp_path)
    second.setup()
    assert second.cache_hit is True and "cache hit" in caplog.text
    for split in ("train", "val", "test"):
        assert second.splits[split].hf["input_ids"] == first.splits[split].hf["input_ids"]
    uncached = TextualMNISTDataModule(small_cfg(), tok)
    uncached.setup()
    assert uncached.splits["train"].hf["input_ids"] == second.splits["train"].hf["input_ids"]
    keys = {second.cache_key}
    for change in (
        {"prompt": "Which digit?"},
        {"levels": 5},
        {"resolution": 4},
        {"test_size": 20},
        {"seed": 3},
    ):
        changed = TextualMNISTDataModule(small_cfg(cache=True, **change), tok, cache_dir=tmp_path)
        changed.setup()
        assert changed.cache_hit is False, change
        keys.add(changed.cache_key)
    assert len(keys) == 6
    # the order seed and loader options don't touch the cache
    same = TextualMNISTDataModule(
        small_cfg(cache=True, batch_size=4, num_workers=1), tok, cache_dir=tmp_path, seed=9
    )
    assert same.cache_key == second.cache_key


# ------------------------------------------------------------------------------------------------ order, batches


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = EpochSeededSampler(50, seed=7), EpochSeededSampler(50, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    a.set_epoch(4)
    assert list(a) != list(b)
    assert list(EpochSeededSampler(50, seed=8)) != list(EpochSeededSampler(50, seed=7))
    # bucketing: a permutation whose consecutive batches have close lengths
    lengths = np.random.default_rng(0).integers(10, 1000, 203)
    s = EpochSeededSampler(203, seed=1, lengths=lengths, batch_size=8, bucket=True, bucket_factor=4)
    order = list(s)
    assert sorted(order) == list(range(203))
    spread = [np.ptp(lengths[order[i : i + 8]]) for i in range(0, 200, 8)]
    assert np.mean(spread) < 0.5 * np.mean([np.ptp(lengths[i : i + 8]) for i in range(0, 200, 8)])
    s.set_epoch(1)
    assert list(s) != order


def test_train_loader_order_resumes_exactly(tok, dm) -> None:
    def digits_of_epoch(module, epoch):
        loader = module.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["digit"] for b in loader]), torch.cat([b["input_ids"][:, -10:] for b in loader])

    e0, e1 = digits_of_epoch(dm, 0), digits_of_epoch(dm, 1)
    fresh = TextualMNISTDataModule(small_cfg(), tok)  # a "resumed" process
    fresh.setup()
    r1 = digits_of_epoch(fresh, 1)
    assert torch.equal(e1[0], r1[0]) and torch.equal(e1[1], r1[1])
    assert not torch.equal(e0[1], e1[1])


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_lightning_calls_set_epoch_on_the_train_sampler(tiny_model, tok) -> None:
    import lightning as L

    model, _ = tiny_model
    module = TextualMNISTDataModule(small_cfg(batch_size=4), tok, seed=5)
    seen: list[list[int]] = []

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.train()

        def training_step(self, batch, batch_idx):
            seen.append(batch["digit"].tolist())
            return self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(Recorder(), datamodule=module)
    labels = np.asarray(module.splits["train"].hf["digit"])
    sampler = module.train_sampler()
    for epoch in (0, 1):
        expected = labels[sampler.order(epoch)[:8]].reshape(2, 4).tolist()
        assert seen[2 * epoch : 2 * epoch + 2] == expected


def test_loader_with_worker_processes(tok) -> None:
    module = TextualMNISTDataModule(small_cfg(num_workers=2, batch_size=16), tok)
    module.setup()
    loader = module.train_dataloader()
    loader.sampler.set_epoch(2)
    batches = list(loader)
    order = loader.sampler.order(2)
    collate = PadCollator(tok.pad_token_id)
    split = module.splits["train"]
    expected = [collate(split.__getitems__(order[i : i + 16].tolist())) for i in range(0, len(order), 16)]
    assert len(batches) == len(expected) == 4
    for got, ref in zip(batches, expected):
        for key in ref:
            assert torch.equal(got[key], ref[key]), key


def test_dynamic_padding_right_and_left() -> None:
    items = [
        {"input_ids": np.array([5, 6, 7, 8, 9]), "prompt_len": 3, "answer_pos": 2, "digit": 1},
        {"input_ids": np.array([5, 6, 8, 9]), "prompt_len": 2, "answer_pos": 1, "digit": 2},
    ]
    right = PadCollator(pad_id=0)(items)
    assert right["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 8, 9, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert right["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, -100, 8, 9, -100]]
    left = PadCollator(pad_id=0, prompt_only=True)(items)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 5, 6]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert set(left) == {"input_ids", "attention_mask", "digit"}


def test_generation_batches_are_left_padded_prompts(tok, dm) -> None:
    batches = list(dm.generation_batches("test", batch_size=10))
    assert [b["input_ids"].shape[0] for b in batches] == [10, 10, 4]
    prefix = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    test = dm.splits["test"].hf
    for start, b in zip((0, 10, 20), batches):
        for r in range(b["input_ids"].shape[0]):
            assert b["input_ids"][r, -len(prefix) :].tolist() == prefix
            assert b["attention_mask"][r, -1] == 1
            n = int(b["attention_mask"][r].sum())
            assert b["attention_mask"][r, -n:].all() and not b["attention_mask"][r, :-n].any()
            assert n == test[start + r]["prompt_len"]
        assert b["digit"].tolist() == test["digit"][start : start + len(b["digit"])]


def test_prompt_length_stats_digits(dm) -> None:
    stats = dm.prompt_length_stats()
    assert stats["train"]["examples"] == 64
    # SmolLM2 chat template: 71 grid tokens + system turn + question = 119; + digit + <|im_end|>
    assert stats["train"]["prompt_min"] == stats["train"]["prompt_max"] == 119
    assert stats["test"]["total_max"] == 121


def test_parse_first_digit() -> None:
    assert parse_first_digit("7") == 7
    assert parse_first_digit("The digit is 3.") == 3
    assert parse_first_digit(" 10") == 1
    assert parse_first_digit("none") is None and parse_first_digit("") is None


def test_preview_cli(capsys) -> None:
    from rigsa_lightning.data.preview import main

    assert main(["n=2", "split=val", "resolution=4"]) == 0
    out = capsys.readouterr().out
    assert out.count("label=") == 2 and "grid 19)" in out and "grid=4x4" in out
    assert main(["colour=blue"]) == 2
    assert "data.colour" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ lm-eval


def test_lm_eval_task_runs_and_agrees_with_acc(tiny_model, tmp_path: Path) -> None:
    import json

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = tiny_model
    cfg = small_cfg(cache=True)
    yaml_path = write_lm_eval_task(cfg, tok, tmp_path / "tasks", cache_dir=tmp_path / "cache")
    assert yaml_path.name == "textual_mnist.yaml"
    rows = [json.loads(x) for x in (tmp_path / "tasks" / "textual_mnist_test.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and set(rows[0]) == {"prompt", "grid", "question", "label"}
    assert (
        os.path.isabs(str(tmp_path / "tasks" / "textual_mnist_test.jsonl"))
        and str(tmp_path) in yaml_path.read_text()
    )

    tm = TaskManager(include_path=str(yaml_path.parent), include_defaults=False)
    res = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=8),
        tasks=["textual_mnist"],
        task_manager=tm,
        limit=8,
        bootstrap_iters=0,
        log_samples=True,
    )
    model.train()
    acc = res["results"]["textual_mnist"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    # the harness's choice is the argmax over the ten digit tokens at answer_pos: the DataModule's `acc`
    module = TextualMNISTDataModule(cfg, tok, cache_dir=tmp_path / "cache")
    module.setup()
    assert module.cache_hit is True
    batch = next(iter(module.test_dataloader()))
    with torch.no_grad():
        model.eval()
        logits = model(input_ids=batch["input_ids"][:8], attention_mask=batch["attention_mask"][:8]).logits
    model.train()
    sub = {k: v[:8] for k, v in batch.items()}
    ours = textual_mnist_accuracy(logits, sub, module.digit_token_ids).item()
    per_doc = {s["doc_id"]: s["acc"] for s in res["samples"]["textual_mnist"]}
    assert np.mean([per_doc[i] for i in range(8)]) == pytest.approx(acc)
    assert acc == pytest.approx(ours)
