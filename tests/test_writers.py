"""Several ZIP writers (``--writers N``): the same ZIP bytes for every N, locally and on S3, and a writer
killed mid-run fails the export cleanly. The pure pieces (block routing, part planning, segment joining,
the central directory of shifted members, the segment and tail assemblers) are tested without Ray."""

from __future__ import annotations

import io
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from actors.segment_writer import SegmentAssembler, TailAssembler
from actors.zip_writer import ExportAssembler
from actors.zipstream import ZipStreamWriter
from ray_export import segments
from ray_export.options import OptionError, build_options
from ray_export.segments import BlockRouter, PartPlanner, PartUpload, default_writer_count
from tests.open_files import unnamed_files_in, wait_until
from tests.test_stages import _plan, _result_rows

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------ pure pieces


def test_default_writer_count_is_one_per_eight_cpus():
    assert [default_writer_count(c) for c in (1, 2, 7.5, 8, 15, 16, 24, 1000)] == [1, 1, 1, 1, 1, 2, 3, 64]


def test_writers_option_is_checked_in_one_line():
    assert build_options({"db": "x.db", "project": "p", "writers": "3"}).writers == 3
    assert build_options({"db": "x.db", "project": "p"}).writers is None
    for value, reason in ((0, "0 is not an integer in 1..64"), (65, "65 is not an integer in 1..64"),
                          ("two", "'two' is not an integer")):  # fmt: skip
        with pytest.raises(OptionError) as info:
            build_options({"db": "x.db", "project": "p", "writers": value})
        assert str(info.value) == f"invalid option writers: {reason}"


def test_router_sends_runs_of_blocks_round_robin_and_closes_each_run():
    router = BlockRouter(writers=3, target_bytes=100, max_blocks=3)
    routes = [router.route(size) for size in (60, 60, 10, 200, 1, 1, 1, 1, 50)]
    assert [(r.writer, r.segment) for r in routes] == [
        (0, 0), (0, 0), (1, 1), (1, 1), (2, 2), (2, 2), (2, 2), (0, 3), (0, 3)
    ]  # fmt: skip
    assert [r.closed for r in routes] == [None, None, (0, 0), None, (1, 1), None, None, (2, 2), None]
    assert router.end() == (3, 0)
    assert BlockRouter(writers=2).end() is None


def test_router_makes_longer_runs_as_segments_grow_and_stops_at_the_part_limit():
    router = BlockRouter(writers=2, target_bytes=10, max_blocks=1000, max_segments=3)
    for _ in range(segments.SEGMENTS_PER_DOUBLING):
        router.route(10)
    assert router.segments == 3  # the last run takes every further block
    grown = BlockRouter(writers=2, target_bytes=10, max_blocks=1000)
    grown.segment = segments.SEGMENTS_PER_DOUBLING
    assert grown.route(10).closed is None and grown.route(10).closed is None  # a target of 20 now
    assert grown.route(10).closed == (segments.SEGMENTS_PER_DOUBLING, 0)


def test_part_planner_hands_small_runs_on_and_numbers_parts_in_order():
    planner = PartPlanner(min_part_bytes=10)
    assert planner.completed(1, 4) == []  # waits for segment 0
    assert planner.completed(0, 12) == [PartUpload(1, 0)]
    assert planner.completed(2, 6) == [PartUpload(3, 2, prefix=(1,))]  # 4 + 6 bytes: 1 is handed on to 2
    assert planner.completed(4, 30) == []
    assert planner.completed(3, 3) == [PartUpload(5, 4, prefix=(3,))]
    assert planner.completed(5, 2) == []
    assert planner.left_over() == (5,)  # goes before the aggregated members, in the last part
    assert planner.last_part_number(6) == 7
    assert planner.uploaded_bytes() == 12 + 4 + 6 + 3 + 30
    with pytest.raises(ValueError):
        planner.completed(5, 2)


def _members(count: int) -> list[tuple[str, bytes]]:
    return [(f"images/m{i}.png" if i % 2 else f"labels/m{i}.txt", os.urandom(97 * i) + b"text" * i)
            for i in range(count)]  # fmt: skip


def test_joined_segments_give_the_bytes_of_one_writer(tmp_path):
    members = _members(9)
    with ZipStreamWriter(tmp_path / "one.zip", WHEN) as one:
        for name, data in members:
            one.add_bytes(name, data)
        one.add_bytes("documentation/report.json", b"{}")
    cuts = [(0, 2), (2, 3), (3, 3), (3, 9)]  # an empty segment included
    pieces = []
    for number, (start, end) in enumerate(cuts):
        segment = ZipStreamWriter(None, WHEN, spool=open(tmp_path / f"s{number}", "w+b"))  # noqa: SIM115
        for name, data in members[start:end]:
            segment.add_bytes(name, data)
        pieces.append((segment, *segment.segment_members()))
    joined = ZipStreamWriter(tmp_path / "joined.zip", WHEN)
    for segment, size, infos in pieces:
        joined.append_segment(segment.file, size, infos)
        segment.abort()
    joined.add_bytes("documentation/report.json", b"{}")
    assert joined.commit() == (tmp_path / "one.zip").stat().st_size
    assert (tmp_path / "joined.zip").read_bytes() == (tmp_path / "one.zip").read_bytes()


def test_a_tail_that_starts_after_uploaded_segments_completes_the_same_zip(tmp_path):
    """The last part of an S3 upload: its file starts at the ZIP offset where the uploaded parts end."""
    members = _members(6)
    with ZipStreamWriter(tmp_path / "one.zip", WHEN) as one:
        for name, data in members:
            one.add_bytes(name, data)
        one.add_bytes("data.yaml", b"nc: 1\n")
    parts = []
    for start, end in ((0, 3), (3, 5)):
        segment = ZipStreamWriter(None, WHEN, spool=open(tmp_path / f"s{start}", "w+b"))  # noqa: SIM115
        for name, data in members[start:end]:
            segment.add_bytes(name, data)
        size, infos = segment.segment_members()
        parts.append((segment.file.read() if segment.file.seek(0) == 0 else b"", size, infos))
        segment.abort()
    left = ZipStreamWriter(None, WHEN, spool=open(tmp_path / "s5", "w+b"))  # noqa: SIM115
    left.add_bytes(*members[5])
    left_size, left_infos = left.segment_members()
    left.file.seek(0)
    left_bytes = left.file.read()
    left.abort()
    uploaded = sum(size for _, size, _ in parts)
    tail = ZipStreamWriter(None, WHEN, folder=tmp_path, start_offset=uploaded)
    offset = 0
    for _, size, infos in parts:
        tail.adopt_members(infos, offset)
        offset += size
    tail.append_segment(left_bytes, left_size, left_infos)
    tail.add_bytes("data.yaml", b"nc: 1\n")
    total = tail.commit()
    tail.file.seek(0)
    whole = b"".join(data for data, _, _ in parts) + tail.file.read()
    tail.abort()
    assert total == len(whole)
    assert whole == (tmp_path / "one.zip").read_bytes()


def test_members_shifted_past_4_gib_get_zip64_offsets(tmp_path):
    """A segment placed 5 GiB into the ZIP: the central directory holds its members' ZIP64 offsets, and
    the ZIP (its first 5 GiB a hole of a sparse file) reads back with every CRC right."""
    shift = 5 << 30
    members = _members(4)
    segment = ZipStreamWriter(None, WHEN, spool=open(tmp_path / "seg", "w+b"))  # noqa: SIM115
    for name, data in members:
        segment.add_bytes(name, data)
    size, infos = segment.segment_members()
    segment.file.seek(0)
    data = segment.file.read()
    segment.abort()
    tail = ZipStreamWriter(None, WHEN, folder=tmp_path, start_offset=shift + size)
    tail.adopt_members(infos, shift)
    tail.add_bytes("README.md", b"# hi\n")
    total = tail.commit()
    tail.file.seek(0)
    sparse = tmp_path / "sparse.zip"
    with open(sparse, "wb") as out:
        out.seek(shift)
        out.write(data)
        out.write(tail.file.read())
    tail.abort()
    assert sparse.stat().st_size == total
    with zipfile.ZipFile(sparse) as zf:
        assert [i.header_offset for i in zf.infolist()[:2]] == [shift, shift + infos[1].header_offset]
        assert zf.testzip() is None
        assert [zf.read(name) for name, _ in members] == [data for _, data in members]


def _segmented(tmp_path: Path, total: int, blocks: list[list[int]], runs: list[list[int]], writers: int) -> dict:
    """Assemble ``blocks`` as the driver would: run k (its blocks) to writer k % ``writers``, the rows to
    the tail, the segments joined in an order the writers finish them in (reversed here)."""
    plan = _plan(tmp_path, total)
    assemblers = [SegmentAssembler(plan) for _ in range(writers)]
    tail = TailAssembler(plan)
    summaries = []
    for segment, run in enumerate(runs):
        assembler = assemblers[segment % writers]
        for block in run:
            _written, rows = assembler.add_segment_batch(segment, _result_rows(blocks[block]))
            tail.add_parts(rows[::-1])
        summaries.append(assembler.close_segment(segment))
    joined = [tail.add_segment(summary) for summary in reversed(summaries)]
    assert joined[-1] == list(range(len(runs)))  # nothing before segment 0 came, then all at once
    counts = tail.finish()
    for assembler in assemblers:
        assembler.abort()
    return counts


@pytest.mark.parametrize("writers", [1, 2, 3])
def test_segment_and_tail_assemblers_give_the_bytes_of_one_assembler(tmp_path, writers):
    blocks = [[1, 2], [3], [4, 5, 6], [7, 8, 9], [10]]
    (tmp_path / "one").mkdir()
    one = ExportAssembler(_plan(tmp_path / "one", 10))
    for block in blocks:
        one.add_batch(_result_rows(block))
    expected_counts = one.finish()
    (tmp_path / "many").mkdir()
    counts = _segmented(tmp_path / "many", 10, blocks, [[0], [1, 2], [3], [4]], writers)
    assert counts == expected_counts
    assert (tmp_path / "many" / "out.zip").read_bytes() == (tmp_path / "one" / "out.zip").read_bytes()
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["out.zip"]
    assert unnamed_files_in(tmp_path / "many") == []


def test_tail_refuses_a_missing_segment_and_abort_leaves_nothing(tmp_path):
    plan = _plan(tmp_path, 3)
    assembler, tail = SegmentAssembler(plan), TailAssembler(plan)
    _written, rows = assembler.add_segment_batch(0, _result_rows([1, 2, 3]))
    tail.add_parts(rows)
    with pytest.raises(RuntimeError, match="hold 0 of 3 images"):
        tail.finish()
    with pytest.raises(RuntimeError, match="segment 1 began before segment 0 was closed"):
        assembler.add_segment_batch(1, _result_rows([4]))
    assembler.abort()
    tail.abort()
    assert list(tmp_path.iterdir()) == []
    assert unnamed_files_in(tmp_path) == []


# ------------------------------------------------------------------------------------------ with Ray


@pytest.fixture
def short_runs(monkeypatch):
    """Every block its own segment, so that a small project has several segments on every writer."""
    monkeypatch.setattr(segments, "SEGMENT_TARGET_BYTES", 1)


@pytest.fixture(scope="module")
def one_writer_zip(demo_project, ray_session, tmp_path_factory) -> Path:
    from ray_export.api import export

    out = tmp_path_factory.mktemp("one-writer") / "one.zip"
    result = export(db=str(demo_project.db_path), project=demo_project.project_id, output=str(out), writers=1)
    assert result.counts["images"] == 12
    return out


def _export(demo, output: Path | str, writers: int, **options):
    from ray_export.api import export

    return export(db=str(demo.db_path), project=demo.project_id, output=str(output), writers=writers, **options)


def test_three_writers_give_the_bytes_of_one(demo_project, one_writer_zip, short_runs, tmp_path):
    out = tmp_path / "three.zip"
    result = _export(demo_project, out, 3)
    assert out.read_bytes() == one_writer_zip.read_bytes()
    assert result.counts["bytes"] == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.zip"]


@pytest.mark.slow
def test_two_writers_and_reuse_inside_segments(demo_project, one_writer_zip, short_runs, tmp_path):
    two = tmp_path / "two.zip"
    _export(demo_project, two, 2)
    assert two.read_bytes() == one_writer_zip.read_bytes()
    again = tmp_path / "again.zip"
    result = _export(demo_project, again, 3, reuse=str(one_writer_zip))
    assert result.reuse["reused"] == 12
    assert again.read_bytes() == one_writer_zip.read_bytes()


def _kill_a_writer_mid_run(handle, name: str) -> None:
    import ray

    from actors.progress import PROGRESS_NAMESPACE

    wait_until(lambda: handle.progress().get("done", {}).get("write", 0) > 0, 180, "the first image written")
    ray.kill(ray.get_actor(name, namespace=PROGRESS_NAMESPACE))


@pytest.fixture(scope="module")
def big_demo(tmp_path_factory):
    from ray_export.demo import build_demo_project

    return build_demo_project(tmp_path_factory.mktemp("writersdemo"), n_images=48, seed=1)


@pytest.mark.slow
def test_a_killed_writer_fails_the_export_with_one_line_and_no_files(big_demo, short_runs, ray_session, tmp_path):
    from actors.segment_writer import segment_writer_name
    from ray_export.api import start
    from ray_export.errors import ExportError

    out = tmp_path / "killed.zip"
    handle = start(db=str(big_demo.db_path), project=big_demo.project_id, output=str(out), writers=3)
    _kill_a_writer_mid_run(handle, segment_writer_name(handle.export_id, 1))
    with pytest.raises(ExportError) as failed:
        handle.wait(timeout=300)
    message = str(failed.value)
    assert "\n" not in message and failed.value.exit_code == 1
    assert message.startswith("ZIP writer 2 of 3 on node ")
    assert message.endswith("died (killed, or out of memory?); no output was written")
    assert list(tmp_path.iterdir()) == []
    wait_until(lambda: not unnamed_files_in(tmp_path), 30, "the writers' segment and partial files to go")


# ------------------------------------------------------------------------------------------ S3


def _s3_output(server, key: str) -> str:
    from urllib.parse import quote

    from tests.test_s3 import ACCESS_KEY, SECRET_KEY

    # the writer actors read the credentials from the URI (the test's environment does not reach them)
    return server.uri(key).replace("s3://", f"s3://{ACCESS_KEY}:{quote(SECRET_KEY, safe='')}@", 1)


try:
    from tests.test_s3 import s3_server
except pytest.skip.Exception:  # moto[s3] with flask (the test extra) is not installed
    s3_server = None


@pytest.fixture(scope="module")
def s3(request):
    if s3_server is None:
        pytest.skip("moto[s3] with flask (the test extra) is not installed")
    return request.getfixturevalue("s3_server")


@pytest.mark.slow
@pytest.mark.parametrize(("writers", "min_part"), [(2, None), (3, None), (3, 20 << 20)])
def test_s3_parts_from_several_writers_give_the_bytes_of_one(demo_project, one_writer_zip, short_runs, s3,
                                                             monkeypatch, writers, min_part):  # fmt: skip
    """Each segment of the 12 demo images (a block of about 13 MB) is its own part at S3's real 5 MiB
    minimum; with a 20 MiB minimum every other segment is handed on to the next one's part."""
    if min_part is not None:
        monkeypatch.setattr(segments, "S3_MIN_PART_BYTES", min_part)
    key = f"exports/writers-{writers}-{min_part}.zip"
    result = _export(demo_project, _s3_output(s3, key), writers)
    assert s3.get(key) == one_writer_zip.read_bytes()
    assert result.counts["bytes"] == one_writer_zip.stat().st_size
    assert s3.open_uploads() == []
    parts = s3.client.head_object(Bucket="rx-export-test", Key=key, PartNumber=1).get("PartsCount")
    assert parts is None or parts >= 2


@pytest.mark.slow
def test_s3_export_with_a_killed_writer_aborts_its_upload(big_demo, short_runs, s3, ray_session):
    from actors.segment_writer import segment_writer_name
    from ray_export.api import start
    from ray_export.errors import ExportError

    key = "exports/killed-writer.zip"
    handle = start(db=str(big_demo.db_path), project=big_demo.project_id, output=_s3_output(s3, key), writers=3)
    _kill_a_writer_mid_run(handle, segment_writer_name(handle.export_id, 2))
    with pytest.raises(ExportError, match=r"^ZIP writer 3 of 3 on node .* died"):
        handle.wait(timeout=300)
    assert s3.open_uploads() == [], "the multipart upload was aborted: no part is left"
    assert s3.keys("exports/killed-writer") == []
    assert s3.versions(key) == []


def test_part_body_reads_a_range_without_moving_the_file(tmp_path):
    from actors.segment_writer import FileRange, part_body

    source = open(tmp_path / "seg", "w+b")  # noqa: SIM115
    source.write(b"0123456789")
    source.flush()
    source.seek(3)
    spool, body = part_body([], source, 10, tmp_path)
    assert spool is None and body.read() == b"0123456789" and source.tell() == 3
    spool, body = part_body([b"ab", b"c"], source, 10, tmp_path)
    assert body.read() == b"abc0123456789" and len(body) == 13
    body.seek(0)
    assert io.BufferedReader(FileRange(spool.fileno(), 2, 4)).read() == b"c012"
    spool.close()
    source.close()


@pytest.mark.slow
def test_a_cancelled_export_with_several_writers_leaves_nothing(big_demo, short_runs, ray_session, tmp_path):
    from ray_export.api import start
    from ray_export.errors import ExportCancelled

    handle = start(db=str(big_demo.db_path), project=big_demo.project_id, output=str(tmp_path / "c.zip"), writers=2)
    wait_until(lambda: handle.progress().get("done", {}).get("write", 0) > 0, 180, "the first image written")
    handle.cancel()
    with pytest.raises(ExportCancelled):
        handle.wait(timeout=120)
    assert handle.progress()["state"] == "cancelled"
    assert list(tmp_path.iterdir()) == []
    wait_until(lambda: not unnamed_files_in(tmp_path), 30, "the writers' files to go")
