"""The Token Recycling adjacency matrix (native/recycling_matrix; Luo et al. 2024, "Turning
Trash into Treasure"): rows, the update, and the file it is kept in between runs."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat

import reference
from native_inputs import filled_matrix, i32


def test_matrix_starts_empty():
    matrix = nat.RecyclingMatrix(n_vocab=50, k=4)
    assert (matrix.n_vocab, matrix.k, matrix.filled_rows()) == (50, 4, 0)
    assert matrix.row(7).tolist() == [-1, -1, -1, -1]
    assert nat.RecyclingMatrix(10).k == 8


def test_matrix_update_and_row():
    matrix = nat.RecyclingMatrix(n_vocab=50, k=3)
    topk = np.array([[1, 2, 3, 40, 41], [4, 5, 6, 42, 43]], dtype=np.int32)  # extra columns ignored
    matrix.update(i32(10, 20), topk)
    assert matrix.row(10).tolist() == [1, 2, 3]
    assert matrix.row(20).tolist() == [4, 5, 6]
    assert matrix.filled_rows() == 2

    matrix.update(i32(10, 10), np.array([[7, 8, 9], [11, 12, -1]], dtype=np.int32))
    assert matrix.row(10).tolist() == [11, 12, -1]  # the later duplicate wins
    assert matrix.filled_rows() == 2


def test_matrix_rejects_bad_updates_without_changing():
    matrix = nat.RecyclingMatrix(n_vocab=50, k=3)
    matrix.update(i32(1), np.array([[2, 3, 4]], dtype=np.int32))
    with pytest.raises(ValueError):
        matrix.update(i32(1, 2), np.array([[2, 3, 4]], dtype=np.int32))  # row count
    with pytest.raises(ValueError):
        matrix.update(i32(1), np.array([[2, 3]], dtype=np.int32))  # fewer than k columns
    with pytest.raises(ValueError):
        matrix.update(i32(5, 1), np.array([[2, 3, 4], [9, 50, 1]], dtype=np.int32))  # id >= n_vocab
    with pytest.raises(IndexError):
        matrix.update(i32(50), np.array([[2, 3, 4]], dtype=np.int32))
    with pytest.raises(IndexError):
        matrix.row(-1)
    assert matrix.row(1).tolist() == [2, 3, 4]
    assert matrix.row(5).tolist() == [-1, -1, -1]
    assert matrix.filled_rows() == 1


def test_matrix_save_load_round_trip(tmp_path):
    matrix = filled_matrix()
    path = tmp_path / "matrix.bin"
    matrix.save(str(path))
    matrix.save(path)  # overwrites; os.PathLike works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrix.bin"]  # no temporary left behind

    loaded = nat.RecyclingMatrix.load(str(path), 300, 8)
    assert loaded.filled_rows() == matrix.filled_rows() == 120
    for token in range(300):
        assert np.array_equal(loaded.row(token), matrix.row(token))


def test_matrix_load_rejects_mismatch(tmp_path):
    path = tmp_path / "matrix.bin"
    filled_matrix().save(str(path))
    with pytest.raises(ValueError, match="n_vocab"):
        nat.RecyclingMatrix.load(str(path), 301, 8)
    with pytest.raises(ValueError):
        nat.RecyclingMatrix.load(str(path), 300, 4)


def corrupt(path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    ["magic", "version", "payload_bit", "truncated_payload", "truncated_header", "trailing", "empty"],
)
def test_matrix_load_rejects_corrupt_files(tmp_path, damage: str):
    path = tmp_path / "matrix.bin"
    filled_matrix().save(str(path))
    raw = path.read_bytes()
    if damage == "magic":
        corrupt(path, 0, b"XXXX")
    elif damage == "version":
        corrupt(path, 8, (7).to_bytes(4, "little"))
    elif damage == "payload_bit":
        corrupt(path, 32 + 4 * 1000, bytes([raw[32 + 4 * 1000] ^ 0x10]))
    elif damage == "truncated_payload":
        path.write_bytes(raw[:-4])
    elif damage == "truncated_header":
        path.write_bytes(raw[:20])
    elif damage == "trailing":
        path.write_bytes(raw + b"\0")
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(ValueError):
        nat.RecyclingMatrix.load(str(path), 300, 8)


def test_matrix_load_missing_file_is_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        nat.RecyclingMatrix.load(str(tmp_path / "absent.bin"), 300, 8)
    with pytest.raises(OSError):
        nat.RecyclingMatrix(10, 2).save(str(tmp_path / "no" / "such" / "dir" / "m.bin"))


def test_updates_are_the_reference_update(tmp_path):
    """Random batches of updates against the reference (tests/reference.py; Luo et al. 2024,
    Token Recycling: a verified token's row becomes the model's latest top-k), duplicate
    tokens in a batch, -1 candidates, extra columns and bad batches included: a bad batch
    raises the same error and changes nothing. Saved and loaded, the matrix is the same."""
    rng = np.random.default_rng(37)
    n_vocab, k = 40, 5
    native, expected = nat.RecyclingMatrix(n_vocab, k), reference.RecyclingMatrix(n_vocab, k)
    refused = 0
    for batch in range(400):
        rows = int(rng.integers(1, 12))
        tokens = rng.integers(0, n_vocab, size=rows).astype(np.int32)
        topk = rng.integers(-1, n_vocab, size=(rows, k + int(rng.integers(0, 3)))).astype(np.int32)
        if rng.random() < 0.15:  # one bad id: a token or a candidate outside the vocabulary
            row = int(rng.integers(rows))
            if rng.random() < 0.5:
                tokens[row] = n_vocab + int(rng.integers(0, 3))
            else:
                topk[row, int(rng.integers(k))] = n_vocab
        try:
            expected.update(tokens.tolist(), topk.tolist())
        except (ValueError, IndexError) as error:
            refused += 1
            with pytest.raises(type(error)):
                native.update(tokens, topk)
        else:
            native.update(tokens, topk)
        assert native.filled_rows() == expected.filled_rows(), f"batch {batch}"
        assert all(native.row(t).tolist() == expected.row(t) for t in range(n_vocab)), f"batch {batch}"
    assert 20 < refused < 120

    path = tmp_path / "matrix.bin"
    native.save(path)
    loaded = nat.RecyclingMatrix.load(str(path), n_vocab, k)
    assert all(loaded.row(t).tolist() == expected.row(t) for t in range(n_vocab))
    assert loaded.filled_rows() == expected.filled_rows()
