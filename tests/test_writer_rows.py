"""How the writer turns a result block into rows: image bytes are views of the block's buffers."""

from __future__ import annotations

import pyarrow as pa

from actors.zip_writer import _rows, blob_views


def test_blob_views_give_every_value_of_every_chunk_without_copying() -> None:
    first = pa.array([b"abc", None, b"", b"defg"], type=pa.binary())
    column = pa.chunked_array([first, first.slice(1, 3), pa.array([b"zz"], type=pa.binary())])
    views = blob_views(column)
    assert [None if v is None else bytes(v) for v in views] == column.to_pylist()
    # a view into the chunk's own data buffer, not a copy
    assert isinstance(views[3].obj, pa.Buffer) and views[3].obj.address == first.buffers()[2].address


def test_blob_views_of_large_binary_slices() -> None:
    column = pa.chunked_array([pa.array([b"xxxxx", None, b"yy"], type=pa.large_binary()).slice(1)])
    assert [None if v is None else bytes(v) for v in blob_views(column)] == [None, b"yy"]


def test_rows_of_a_block_of_several_batches_equal_those_of_one_batch() -> None:
    batches = [
        pa.record_batch({"index": pa.array([2 * k + 1, 2 * k + 2]), "original": pa.array([b"a" * k, None])})
        for k in range(3)
    ]
    several = pa.Table.from_batches(batches)
    one = several.combine_chunks()
    assert several.column("original").num_chunks == 3
    as_bytes = [
        {k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in row.items()}
        for row in _rows(several, ["index", "original"])
    ]
    assert as_bytes == [
        {k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in row.items()}
        for row in _rows(one, ["index", "original"])
    ]
    assert [row["index"] for row in as_bytes] == [1, 2, 3, 4, 5, 6]
