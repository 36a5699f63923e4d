"""Your own task (data=chat): rendering and label mask, splits, the exact-match metric, bad files, a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.data.chat import ChatDataModule
from rigsa_lightning.data.chat_rows import (
    assign_splits,
    check_chat_data,
    exact_match,
    load_chat_examples,
    normalize_text,
)
from tests.helpers import assert_nothing_written, assert_one_line_error, only_run_dir, run_cli, tail

DATA = Path(__file__).parent / "data" / "chat_arithmetic.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _cfg(path: Path | str = DATA, **extra: Any) -> dict[str, Any]:
    cfg = {"path": str(path), "val_size": 8, "test_size": 8, "seed": 0, "batch_size": 4, "eval_batch_size": 5}
    cfg.update({"max_length": 128, "system_prompt": "", **extra})
    return cfg


def _dm(tokenizer: Any, **extra: Any) -> ChatDataModule:
    dm = ChatDataModule(_cfg(**extra), tokenizer, seed=3)
    dm.setup()
    return dm


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ============================================================================================ rendering, mask
def test_prompt_completion_rendering_and_mask(tokenizer: Any) -> None:
    dm = _dm(tokenizer)
    assert tokenizer.convert_ids_to_tokens(sorted(dm.renderer.end_ids)) == ["<|im_end|>"]
    for split in ("train", "val", "test"):
        for item in dm.splits[split].rows:
            ex = dm.examples[item["uid"]]
            ids, sup, p = item["input_ids"], item["supervised"], item["prompt_len"]
            # the prompt is the template's generation prompt (empty system turn), tokenised
            prompt_text = tokenizer.apply_chat_template(
                [{"role": "system", "content": ""}, ex.messages[0]],
                tokenize=False,
                add_generation_prompt=True,
            )
            assert tokenizer.decode(ids[:p]) == prompt_text
            # supervised exactly on the completion and its end token, which end the sequence
            assert sup == [False] * p + [True] * (len(ids) - p)
            assert tokenizer.decode([t for t, m in zip(ids, sup) if m]) == ex.completion + "<|im_end|>"
    batch = next(iter(dm.val_dataloader()))
    for r in range(batch["input_ids"].size(0)):
        item = dm.splits["val"].rows[r]
        n, p = len(item["input_ids"]), item["prompt_len"]
        assert (batch["labels"][r] != -100).nonzero().flatten().tolist() == list(range(p, n))
        assert batch["labels"][r, p:n].tolist() == item["input_ids"][p:]
        assert batch["attention_mask"][r].sum() == n and int(batch["answer_pos"][r]) == p - 1


def test_messages_supervise_every_assistant_turn(tokenizer: Any) -> None:
    msgs = [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and times 3?"},
        {"role": "assistant", "content": "12, since 4 x 3 = 12"},
    ]
    dm = ChatDataModule(_cfg(system_prompt=None), tokenizer)
    ids, sup, p = dm.renderer.encode(msgs)
    # the whole sequence is the template's text (default system turn) without its trailing newline
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(msgs, tokenize=False).rstrip("\n")
    assert tokenizer.decode([t for t, m in zip(ids, sup) if m]) == "4<|im_end|>12, since 4 x 3 = 12<|im_end|>"
    assert tokenizer.decode(ids[p:]) == "12, since 4 x 3 = 12<|im_end|>"
    assert tokenizer.decode(ids[:p]) == tokenizer.apply_chat_template(
        msgs[:3], tokenize=False, add_generation_prompt=True
    )
    # an empty earlier assistant turn: only its end token is supervised
    empty = [msgs[0], {"role": "assistant", "content": ""}, *msgs[2:]]
    ids, sup, p = dm.renderer.encode(empty)
    assert tokenizer.decode([t for t, m in zip(ids, sup) if m]) == "<|im_end|>12, since 4 x 3 = 12<|im_end|>"
    no_eos = ChatDataModule(_cfg(supervise_eos=False), tokenizer)
    ids, sup, p = no_eos.renderer.encode(msgs)
    assert tokenizer.decode([t for t, m in zip(ids, sup) if m]) == "412, since 4 x 3 = 12"
    assert tokenizer.decode(ids[p:]) == "12, since 4 x 3 = 12"


# ============================================================================================ splits
def _split_rows(examples_by_split: dict[str, list[Any]]) -> dict[str, list[str]]:
    return {s: [e.where for e in v] for s, v in examples_by_split.items()}


def test_seeded_split_is_deterministic_and_disjoint() -> None:
    examples = load_chat_examples(_cfg())
    a = _split_rows(assign_splits(examples, _cfg(seed=5)))
    b = _split_rows(assign_splits(load_chat_examples(_cfg()), _cfg(seed=5)))
    c = _split_rows(assign_splits(examples, _cfg(seed=6)))
    assert a == b and a != c
    assert [len(a[s]) for s in ("train", "val", "test")] == [24, 8, 8]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(e.where for e in examples)
    # train_size keeps a seeded subset of the remaining rows; null sizes: 10 % each
    sub = _split_rows(assign_splits(examples, _cfg(seed=5, train_size=10)))
    assert set(sub["train"]) < set(a["train"]) and len(sub["train"]) == 10 and sub["val"] == a["val"]
    assert check_chat_data(_cfg(val_size=None, test_size=None)) == {"train": 32, "val": 4, "test": 4}


def test_splits_from_a_column_and_from_files(tmp_path: Path) -> None:
    rows = [dict(r, split=["train", "validation", "test", "train"][i % 4]) for i, r in enumerate(ROWS)]
    column = _split_rows(
        assign_splits(load_chat_examples(_cfg(_write_jsonl(tmp_path / "s.jsonl", rows))), {})
    )
    assert [len(column[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    assert column["val"][0].endswith("row 2") and column["test"][0].endswith("row 3")
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", ROWS[:30])
    _write_jsonl(folder / "test.jsonl", ROWS[30:])
    files = assign_splits(load_chat_examples({"path": str(folder)}), {"val_size": 5, "seed": 1})
    assert [len(files[s]) for s in ("train", "val", "test")] == [25, 5, 10]
    assert all("train.jsonl" in e.where for e in files["train"] + files["val"])
    assert [e.completion for e in files["test"]] == [r["completion"] for r in ROWS[30:]]


def test_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert [e.completion for e in load_chat_examples({"path": str(path)})] == [r["completion"] for r in ROWS]


# ============================================================================================ metric
def test_normalize_and_exact_match() -> None:
    assert normalize_text("  a \n\t b  ") == "a b"
    assert exact_match(" 12\n", "12") and exact_match("The  answer\nis 4", "The answer is 4")
    assert not exact_match("12", "13") and not exact_match("ab", "a b") and not exact_match("", "0")


def test_generation_stops_once_the_completion_cannot_match(tokenizer: Any) -> None:
    from rigsa_lightning.data.chat import MismatchStop

    prompt = [1, 2, 3]
    texts = ["1", " 1", "12", "12  ", "The answer", "123", "1 2", "", "é"]
    new = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, new))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([prompt + n + [pad] * (width - len(n)) for n in new])  # pad = <|im_end|>: skipped
    stop = MismatchStop(tokenizer, len(prompt), ["12"] * len(texts))
    assert stop(ids).tolist() == [False, False, False, False, True, True, True, False, True]
    # a multi-byte character cut in half decodes to U+FFFD: wait for its second byte
    half = tokenizer.encode("é", add_special_tokens=False)
    cut = [b for b in half if "\ufffd" in tokenizer.decode([b])]
    if cut:
        assert not MismatchStop(tokenizer, 0, ["x"])(torch.tensor([cut[:1]])).item()


class Oracle(nn.Module):
    """A causal LM that "knows" a completion (token ids) for each prompt and predicts it greedily, then its end
    token; anything else predicts token 0. Full-logits forward only (no plain linear head), and its own greedy
    ``generate``."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], end_id: int, vocab: int) -> None:
        super().__init__()
        self.answers, self.end_id, self.vocab = answers, end_id, vocab
        self.weight = nn.Parameter(torch.zeros(1))
        self.forward_calls = self.generate_calls = 0

    def _next(self, prefix: list[int]) -> int:
        for prompt, answer in self.answers.items():
            k = len(prefix) - len(prompt)
            if k >= 0 and tuple(prefix[: len(prompt)]) == prompt:
                return ([*answer, self.end_id] + [0] * k)[k]
        return 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> Any:
        self.forward_calls += 1
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for r in range(input_ids.size(0)):
            real = [(t, int(i)) for t, (i, m) in enumerate(zip(input_ids[r], attention_mask[r])) if m]
            for j, (t, _) in enumerate(real):
                logits[r, t, self._next([i for _, i in real[: j + 1]])] = 5.0
        return type("Out", (), {"logits": logits})()

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, **_: Any):
        self.generate_calls += 1
        out = []
        for r in range(input_ids.size(0)):
            seq = [int(i) for i, m in zip(input_ids[r], attention_mask[r]) if m]
            new = []
            while len(new) < max_new_tokens and (not new or new[-1] != self.end_id):
                new.append(self._next(seq + new))
            out.append(new + [self.end_id] * (max_new_tokens - len(new)))
        return torch.cat([input_ids, torch.tensor(out, dtype=torch.long)], dim=1)


def _oracle(dm: ChatDataModule, tokenizer: Any, answer_of: Any) -> Oracle:
    answers = {}
    for item in dm.splits["val"].rows:
        prompt = tuple(item["input_ids"][: item["prompt_len"]])
        answers[prompt] = tokenizer.encode(
            answer_of(dm.examples[item["uid"]].completion), add_special_tokens=False
        )
    return Oracle(answers, end_id=2, vocab=len(tokenizer))


def test_exact_match_of_the_greedy_completion(tokenizer: Any) -> None:
    dm = _dm(tokenizer)
    batch = next(iter(dm.val_dataloader()))  # 5 rows
    # knows every answer: decided by the teacher-forced check alone, no generation
    right = _oracle(dm, tokenizer, lambda c: c)
    s = dm.score_batch(right, batch)
    assert float(s["acc"]) == 1.0 and float(s["token_acc"]) == 1.0 and right.generate_calls == 0
    # answers with extra whitespace: other tokens (token_acc < 1), yet the same text once normalised
    spaced = _oracle(dm, tokenizer, lambda c: f"  {c} \n")
    s = dm.score_batch(spaced, batch)
    assert float(s["acc"]) == 1.0 and float(s["token_acc"]) < 1.0 and spaced.generate_calls == 1
    # wrong on the rows whose answer is odd: exact match is the fraction of even answers
    odd_wrong = _oracle(dm, tokenizer, lambda c: c if int(c) % 2 == 0 else str(int(c) + 1))
    refs = [dm.reference(int(u)) for u in batch["uid"]]
    s = dm.score_batch(odd_wrong, batch)
    assert float(s["acc"]) == pytest.approx(sum(int(c) % 2 == 0 for c in refs) / len(refs))
    # the loss is the mean cross-entropy over the supervised tokens of the full logits
    logits = odd_wrong(batch["input_ids"], batch["attention_mask"]).logits
    ref = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1)
    )
    assert float(s["loss"]) == pytest.approx(float(ref), rel=1e-6)
    # the whole split: the same numbers summed over its batches
    split = dm.score_split(odd_wrong, "val")
    refs = [e.completion for e in (dm.examples[r["uid"]] for r in dm.splits["val"].rows)]
    assert split["exact_match"] == pytest.approx(sum(int(c) % 2 == 0 for c in refs) / 8) and split["n"] == 8


def test_loss_equals_the_training_loss_on_a_real_model(tokenizer: Any, tiny_model: Any) -> None:
    from rigsa_lightning.models.head import supervised_loss_and_answer_logits

    model, _ = tiny_model
    dm = _dm(tokenizer)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        train_loss, _ = supervised_loss_and_answer_logits(model, batch)
        s = dm.score_batch(model, batch)
        full = dm.score_batch(model, batch, full_head=True)
    assert float(s["loss"]) == pytest.approx(float(train_loss), rel=1e-5)
    assert float(full["loss"]) == pytest.approx(float(train_loss), rel=1e-5)
    assert 0.0 <= float(s["acc"]) <= 1.0 and math.isfinite(float(s["loss"]))


# ============================================================================================ bad files
@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([], ["is empty"]),
        (
            [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": 3}],
            ["row 2", "column 'completion'", "int"],
        ),
        ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], ["row 2", "column 'completion'", "missing"]),
        ([{"question": "a", "answer": "b"}], ["row 1", "column 'messages'", "found: answer, question"]),
        ([{"messages": [{"role": "user", "content": "a"}]}], ["row 1", "column 'messages'", "last turn"]),
        (
            [{"messages": [{"role": "user", "content": 1}]}],
            ["row 1", "column 'messages'", "turn 1", "string"],
        ),
        ([{"messages": "hi"}], ["row 1", "column 'messages'", "non-empty list"]),
        ([{"prompt": "a", "completion": "b", "split": "holdout"}], ["row 1", "column 'split'", "holdout"]),
    ],
)
def test_bad_rows_are_one_line_naming_file_row_and_column(
    tmp_path: Path, rows: list, fragments: list
) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        check_chat_data(_cfg(path))
    line = err.value.one_line()
    assert line.startswith("error: data.path: ") and str(path) in line and "\n" not in line
    for fragment in fragments:
        assert fragment in line, line


def test_bad_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(ConfigError, match=r"broken\.jsonl, row 2: not valid JSON"):
        check_chat_data(_cfg(path))
    with pytest.raises(ConfigError, match="does not exist"):
        check_chat_data(_cfg(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError, match="data.val_size: 40 val rows leave no training rows"):
        check_chat_data(_cfg(val_size=40))
    with pytest.raises(ConfigError, match="data.hub_id: cannot load 'some-org/missing-data'"):
        check_chat_data({"hub_id": "some-org/missing-data"})


def test_example_longer_than_max_length_names_its_row(tokenizer: Any) -> None:
    with pytest.raises(ConfigError) as err:
        _dm(tokenizer, max_length=24, val_size=1, test_size=1)
    line = err.value.one_line()
    assert line.startswith("error: data.max_length: ") and "chat_arithmetic.jsonl, row " in line
    assert "longer than data.max_length=24" in line and "raise data.max_length to >= 25" in line


def test_cli_bad_file_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    bad = _write_jsonl(
        tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}]
    )
    # an unknown model: had it loaded first, the error would name the model
    args = [
        "experiment=rigsa_chat",
        "model=tiny",
        "model.name_or_path=some-org/missing-model",
        f"data.path={bad}",
    ]
    res = run_cli(args, tmp_path)
    assert_one_line_error(res, "data.path", "bad.jsonl, row 2, column 'completion'", "NoneType")
    assert_nothing_written(tmp_path)


# ============================================================================================ end to end
def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_chat", "model=tiny", "debug=fast", "stop_at.val_acc=0.9"], tmp_path)
    assert res.returncode == 0, tail(res)
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["name"] == "rigsa_chat"
    for key in ("final_val/acc", "final_val/token_acc", "chat/exact_match", "chat/zero_shot_exact_match"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert math.isfinite(metrics["final_val/loss"]) and math.isfinite(metrics["chat/loss"])
    # the paper's schedule: two rounds keeping 20 % of the sign-stable entries each
    assert metrics["chat/n"] == 8 and 0.0 < metrics["adapter/density"] <= 0.2**2 + 1e-6
    assert len(metrics["prune/history"]) == 2
    # stop_at reads val/acc (the exact match): the random tiny model never reaches 0.9
    assert metrics["stop_at/target"] == 0.9 and metrics["stop_at/reached"] == 0.0
    assert "chat/exact_match" in res.stdout
