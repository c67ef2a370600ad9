"""Data: corpus reading, the split by document, byte encoding, the seeded resumable sampler."""
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fim_attention.data import (BatchSampler, encode, decode, fixed_windows, load_corpus, load_documents, read_text,
                                split_documents, strip_gutenberg)


@pytest.fixture(scope="module")
def docs():
    return load_documents()


def test_default_corpus_is_the_42_works(docs):
    assert len(docs) == 42
    names = [n for n, _ in docs]
    assert names == sorted(names) and "hamlet_gut" in names and not any(n.endswith("_gut_f") for n in names)
    assert all(len(t) > 1000 for _, t in docs)


def test_split_by_play_is_deterministic_disjoint_and_order_free(docs):
    tr, va = split_documents(docs, 0.1, 0)
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    tr2, va2 = split_documents(shuffled, 0.1, 0)
    assert sorted(n for n, _ in va) == sorted(n for n, _ in va2)  # not the listing order, the names decide
    assert {n for n, _ in tr} | {n for n, _ in va} == {n for n, _ in docs}
    assert not {n for n, _ in tr} & {n for n, _ in va}
    total = sum(len(t.encode()) for _, t in docs)
    nval = sum(len(t.encode()) for _, t in va)
    last = max(len(t.encode()) for _, t in va)
    assert nval >= 0.1 * total and nval - last < 0.1 * total  # the smallest prefix (in key order) reaching 10%
    other = split_documents(docs, 0.1, 1)[1]
    assert {n for n, _ in other} != {n for n, _ in va}  # the split seed matters


def test_corpus_matches_documents(docs):
    c = load_corpus(block_size=128)
    assert c.train.dtype == torch.uint8 and len(c.val) > 128
    val_text = "\n\n".join(t.strip("\n") for n, t in docs if n in c.val_docs) + "\n"
    assert decode(c.val) == val_text
    assert c.fingerprint == load_corpus().fingerprint


def test_single_file_split_at_line(tmp_path):
    text = "".join(f"line {i} of the only document\n" for i in range(200))
    f = tmp_path / "one.txt"
    f.write_text(text)
    c = load_corpus(f, val_fraction=0.25, block_size=16)
    tr, va = decode(c.train), decode(c.val)
    assert tr + va == text and tr.endswith("\n") and va.startswith("line ")
    assert abs(len(va) / len(text) - 0.25) < 0.02


def test_folder_recursive_hidden_skipped(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for i, p in enumerate(["a.txt", "sub/b.txt", "c.txt", ".hidden/x.txt"]):
        (tmp_path / p).write_text(f"document {i} " * 200)
    (tmp_path / "notes.md").write_text("not matched")
    names = [n for n, _ in load_documents(tmp_path)]
    assert names == ["a.txt", "c.txt", "sub/b.txt"]
    c = load_corpus(tmp_path, val_fraction=0.3, block_size=32)
    assert len(c.val_docs) == 1 and len(c.train_docs) == 2


def test_gutenberg_markers_stripped(tmp_path):
    body = "Ham. To be, or not to be\n"
    text = ("The Project Gutenberg EBook of Hamlet\r\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
            + body + "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nlicence text\n")
    assert strip_gutenberg(text) == body
    (tmp_path / "h.txt").write_text(text)
    assert read_text(tmp_path / "h.txt") == body


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"   \n\n\t", "empty"),
    (b"caf\xe9 au lait", r"not UTF-8 .*0xe9 at offset 3"),
])
def test_bad_files(tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_corpus(f)


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="no '\\*.txt' files"):
        load_corpus(tmp_path)


def test_corpus_shorter_than_one_context(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("a short line\n" * 10)
    with pytest.raises(ValueError, match="too short.*block_size \\+ 1 = 129"):
        load_corpus(f, block_size=128)


def test_sampler_seeded_resumable_and_exact_windows():
    data = torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    s = BatchSampler(data, 64, 6, seed=3)
    batches = [next(s) for _ in range(5)]
    again = BatchSampler(data, 64, 6, seed=3)
    again.load_state_dict({**s.state_dict(), "step": 2})
    assert torch.equal(next(again)[0], batches[2][0])
    for x, y in batches:
        assert x.shape == (6, 64) and (x[:, 1:] == y[:, :-1]).all()
        starts = s.starts(0)
        assert int(starts.max()) <= len(data) - 65
    x0 = batches[0][0]
    st0 = s.starts(0)
    assert torch.equal(x0, torch.stack([data[i:i + 64].long() for i in st0.tolist()]))
    assert not torch.equal(BatchSampler(data, 64, 6, seed=4).batch(0)[0], x0)  # the seed matters
    with pytest.raises(ValueError, match="another stream"):
        BatchSampler(data, 32, 6, seed=3).load_state_dict(s.state_dict())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(70, 400), t=st.integers(1, 60), b_per=st.integers(1, 4), world=st.integers(1, 4),
       seed=st.integers(0, 2**31), step=st.integers(0, 10**6))
def test_ranks_partition_the_global_batch(n, t, b_per, world, seed, step):
    data = torch.arange(n) % 256
    B = b_per * world
    full = BatchSampler(data, t, B, seed=seed).batch(step)[0]
    parts = [BatchSampler(data, t, B, seed=seed, rank=r, world_size=world).batch(step)[0] for r in range(world)]
    assert torch.equal(torch.cat(parts), full)


def test_sampler_rejects_bad_shapes():
    with pytest.raises(ValueError, match="not divisible"):
        BatchSampler(torch.zeros(100, dtype=torch.uint8), 10, 5, world_size=2)
    with pytest.raises(ValueError, match="shorter than one context"):
        BatchSampler(torch.zeros(10, dtype=torch.uint8), 10, 2)


def test_fixed_windows_cover_the_stream():
    data = torch.arange(1000)
    w = fixed_windows(data, 9, 10)
    assert w.shape == (10, 10) and int(w[0, 0]) == 0 and int(w[-1, -1]) <= 999
    assert int(w[-1, 0]) >= 850  # evenly spaced to the end
    assert torch.equal(w, fixed_windows(data, 9, 10))
    with pytest.raises(ValueError, match="shorter than one context"):
        fixed_windows(torch.arange(5), 9, 2)


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_encode_decode_roundtrip(s):
    assert decode(encode(s)) == s
