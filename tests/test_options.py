"""Export options: defaults, files, flags, precedence and validation messages."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_export.option_flags import add_export_arguments, flag_for_option, options_from_args, overrides_from_args
from ray_export.options import (
    DEFAULT_STAGE_RESOURCES,
    OPTION_FIELDS,
    OPTION_KEYS,
    STAGE_FIELDS,
    STAGE_NAMES,
    VISUALIZATION_FIELDS,
    ExportOptions,
    OptionError,
    StageResources,
    VisualizationSettings,
    build_options,
    check_environment_address,
    load_options_file,
    parse_bytes,
)
from ray_export.ray_address import job_submission_id, ray_address_problem, running_under_job_submit

BASE = {"db": "data.sqlite", "project": "demo"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-export export")
    add_export_arguments(p)
    return p


def parse(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def error_option(file_values: dict[str, Any] | None, overrides: dict[str, Any] | None = None, **kw: Any) -> str:
    with pytest.raises(OptionError) as info:
        build_options(file_values, overrides or {}, **kw)
    assert info.value.option in str(info.value)
    return info.value.option


def test_defaults() -> None:
    options = build_options(BASE, {})
    assert options.db == "data.sqlite" and options.project == "demo"
    assert options.image_ids is None and options.output is None and options.images_root is None
    assert options.force is False and options.address is None
    assert options.include_originals and options.include_visualizations and options.include_docs
    assert options.annotations == ("coco", "yolo", "json")
    assert options.metrics == ("csv", "xlsx", "json", "parquet")
    assert options.visualization == VisualizationSettings()
    assert options.scale_um_per_px is None
    assert options.max_buffered_images == 256
    assert set(options.stages) == set(STAGE_NAMES)
    assert options.stages["read"] == StageResources(num_cpus=1.0, batch_size=32)
    # the four map stages share their hints so that Ray fuses them
    for stage in ("copy", "visualize", "annotate", "metrics"):
        assert options.stages[stage] == StageResources(num_cpus=1.0, batch_size=16)
    assert ExportOptions("data.sqlite", "demo").stages == options.stages


def test_direct_construction_normalises_lists() -> None:
    options = ExportOptions(
        "x.db", "p", annotations=["json", "coco", "json"], metrics="parquet, csv", image_ids="a,b,a"
    )
    assert options.annotations == ("coco", "json")
    assert options.metrics == ("csv", "parquet")
    assert options.image_ids == ("a", "b")
    assert ExportOptions("x.db", "p", annotations="none", metrics=["NONE"]).annotations == ()
    assert ExportOptions("x.db", "p", metrics=["NONE"]).metrics == ()
    partial = ExportOptions("x.db", "p", stages={"copy": StageResources(num_cpus=2.0, batch_size=4)})
    assert partial.stages["copy"].num_cpus == 2.0 and partial.stages["read"] == DEFAULT_STAGE_RESOURCES["read"]
    partial.validate()


def test_stage_resources_hashable_and_ray_args() -> None:
    hints = StageResources(num_cpus=0.5, memory=2**30, resources={"disk": 1, "a": 0.5}, batch_size=8)
    assert hints.resources == (("a", 0.5), ("disk", 1))
    assert hash(hints) == hash(
        StageResources(num_cpus=0.5, memory=2**30, resources={"a": 0.5, "disk": 1}, batch_size=8)
    )
    assert hints.ray_remote_args() == {"num_cpus": 0.5, "memory": 2**30, "resources": {"a": 0.5, "disk": 1.0}}
    assert StageResources(num_cpus=1.0).ray_remote_args() == {"num_cpus": 1.0}


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_file_then_flags_precedence(tmp_path: Path, suffix: str) -> None:
    values = {
        "db": "from_file.sqlite",
        "project": "file project",
        "annotations": ["coco"],
        "metrics": "csv,json",
        "scale": 0.25,
        "originals": False,
        "visualization": {"external_color": "#00FF00", "stroke_width": 5, "format": "webp"},
        "stages": {"copy": {"num_cpus": 0.75, "batch_size": 4, "memory": "1GiB"}, "read": {"resources": {"disk": 1}}},
        "max_buffered_images": 64,
    }
    path = tmp_path / f"options{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values), encoding="utf-8")
    assert load_options_file(path) == values

    from_file = options_from_args(parse("--options", str(path)), under_job=False)
    assert from_file.db == "from_file.sqlite" and from_file.project == "file project"
    assert from_file.annotations == ("coco",) and from_file.metrics == ("csv", "json")
    assert from_file.scale_um_per_px == 0.25 and from_file.include_originals is False
    assert from_file.visualization == VisualizationSettings(external_color="#00FF00", stroke_width=5, format="webp")
    assert from_file.stages["copy"] == StageResources(num_cpus=0.75, memory=2**30, batch_size=4)
    assert from_file.stages["read"].resource_dict() == {"disk": 1.0}
    assert from_file.stages["visualize"] == DEFAULT_STAGE_RESOURCES["visualize"]
    assert from_file.max_buffered_images == 64

    args = parse(
        "--options", str(path), "--project", "flag project", "--annotations", "yolo,json", "--scale", "2",
        "--stroke-width", "3", "--num-cpus", "copy=1.5", "--no-visualizations", "--max-buffered-images", "8",
    )  # fmt: skip
    merged = options_from_args(args, under_job=False)
    assert merged.db == "from_file.sqlite"  # not given as a flag: the file's value stays
    assert merged.project == "flag project"
    assert merged.annotations == ("yolo", "json")
    assert merged.metrics == ("csv", "json")
    assert merged.scale_um_per_px == 2.0
    assert merged.include_originals is False and merged.include_visualizations is False
    # nested values merge key by key
    assert merged.visualization == VisualizationSettings(external_color="#00FF00", stroke_width=3, format="webp")
    assert merged.stages["copy"] == StageResources(num_cpus=1.5, memory=2**30, batch_size=4)
    assert merged.max_buffered_images == 8


def test_flags_only_given_flags_override() -> None:
    assert overrides_from_args(parse()) == {}
    args = parse(
        "--db", "postgresql://u@h/db", "--project", "p", "--images-root", "s3://bucket/uploads", "--out", "/o.zip",
        "--force", "--address", "ray://head:10001", "--image-ids", "a,b", "--image-ids", "c", "--metrics", "none",
        "--no-originals", "--no-docs", "--viz-format", "jpeg", "--external-color", "#112233",
        "--internal-color", "#445566", "--font-size", "20", "--fill-opacity", "0.5", "--no-numbers",
        "--batch-size", "visualize=2", "--memory", "metrics=512MB", "--resource", "copy=io_slot:0.5",
    )  # fmt: skip
    overrides = overrides_from_args(args)
    assert overrides["image_ids"] == "a,b,c"
    assert overrides["stages"] == {
        "visualize": {"batch_size": "2"},
        "metrics": {"memory": "512MB"},
        "copy": {"resources": {"io_slot": "0.5"}},
    }
    options = options_from_args(args, under_job=False)
    assert options.images_root == "s3://bucket/uploads" and options.output == "/o.zip" and options.force
    assert options.address == "ray://head:10001"
    assert options.image_ids == ("a", "b", "c")
    assert options.metrics == () and options.annotations == ("coco", "yolo", "json")
    assert not options.include_originals and not options.include_docs and options.include_visualizations
    assert options.visualization == VisualizationSettings(
        external_color="#112233", internal_color="#445566", font_size=20, fill_opacity=0.5, show_numbers=False,
        format="jpeg",
    )  # fmt: skip
    assert options.stages["visualize"].batch_size == 2
    assert options.stages["metrics"].memory == 512_000_000
    assert options.stages["copy"].resource_dict() == {"io_slot": 0.5}


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"db": None}, "db"),
        ({"db": "  "}, "db"),
        ({"db": "mysql://h/db"}, "db"),
        ({"project": ""}, "project"),
        ({"image_ids": ""}, "image_ids"),
        ({"image_ids": [1.5]}, "image_ids"),
        ({"annotations": "coco,svg"}, "annotations"),
        ({"annotations": "none,coco"}, "annotations"),
        ({"annotations": 3}, "annotations"),
        ({"metrics": ["csv", "pdf"]}, "metrics"),
        ({"scale": 0.0001}, "scale"),
        ({"scale": 1000.5}, "scale"),
        ({"scale": "abc"}, "scale"),
        ({"scale": "nan"}, "scale"),
        ({"force": "maybe"}, "force"),
        ({"originals": 2}, "originals"),
        ({"visualizations": "x"}, "visualizations"),
        ({"docs": []}, "docs"),
        ({"visualization": {"format": "gif"}}, "visualization.format"),
        ({"visualization": {"external_color": "red"}}, "external_color"),
        ({"visualization": {"internal_color": "#12345"}}, "internal_color"),
        ({"visualization": {"stroke_width": 11}}, "stroke_width"),
        ({"visualization": {"stroke_width": "thick"}}, "stroke_width"),
        ({"visualization": {"font_size": 9}}, "font_size"),
        ({"visualization": {"fill_opacity": 1.5}}, "fill_opacity"),
        ({"visualization": {"show_numbers": "perhaps"}}, "show_numbers"),
        ({"stages": {"copy": {"num_cpus": 0}}}, "stages.copy.num_cpus"),
        ({"stages": {"copy": {"num_cpus": 65}}}, "stages.copy.num_cpus"),
        ({"stages": {"read": {"memory": 0}}}, "stages.read.memory"),
        ({"stages": {"read": {"memory": "lots"}}}, "stages.read.memory"),
        ({"stages": {"visualize": {"batch_size": 0}}}, "stages.visualize.batch_size"),
        ({"stages": {"visualize": {"batch_size": 10001}}}, "stages.visualize.batch_size"),
        ({"stages": {"metrics": {"resources": {"disk": -1}}}}, "stages.metrics.resources.disk"),
        ({"stages": {"metrics": {"resources": [1]}}}, "stages.metrics.resources"),
        ({"stages": {"render": {"num_cpus": 1}}}, "stages.render"),
        ({"stages": {"copy": {"cpus": 1}}}, "stages.copy.cpus"),
        ({"visualization": {"colour": "#000000"}}, "visualization.colour"),
        ({"max_buffered_images": 0}, "max_buffered_images"),
        ({"max_buffered_images": 100001}, "max_buffered_images"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"address": "notahost:xx"}, "address"),
        ({"address": "127.0.0.1:"}, "address"),
    ],
)
def test_invalid_option_is_named(overrides: dict[str, Any], option: str) -> None:
    assert error_option(BASE, overrides) == option


@pytest.mark.parametrize("scale", [0.001, 1, 1000, "0.5"])
def test_scale_bounds_inclusive(scale: Any) -> None:
    assert build_options(BASE, {"scale": scale}).scale_um_per_px == float(scale)


def test_images_root_required_with_postgres() -> None:
    for dsn in ("postgresql://user@db.example/seg", "postgres://user@db/seg", "PostgreSQL://h/db"):
        assert error_option({"db": dsn, "project": "p"}) == "images_root"
        assert build_options({"db": dsn, "project": "p", "images_root": "/data/uploads"}, {}).images_root
    assert build_options({"db": "sqlite:///x/app.db", "project": "p"}, {}).images_root is None


def test_output_rules_under_job_submit() -> None:
    assert error_option(BASE, {}, under_job=True) == "output"
    assert error_option(BASE, {"output": "relative.zip"}, under_job=True) == "output"
    assert build_options(BASE, {"output": "/abs/out.zip"}, under_job=True).output == "/abs/out.zip"
    assert build_options(BASE, {"output": "s3://bucket/out.zip"}, under_job=True).output == "s3://bucket/out.zip"
    assert build_options(BASE, {"output": "relative.zip"}).output == "relative.zip"


def test_running_under_job_submit_detection() -> None:
    job_env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}})}
    assert running_under_job_submit(job_env)
    assert job_submission_id(job_env) == "raysubmit_1"
    assert job_submission_id({}) is None
    assert not running_under_job_submit({})
    assert not running_under_job_submit({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}})})
    assert not running_under_job_submit({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"})


def test_none_formats_from_flags_and_files() -> None:
    options = options_from_args(parse("--db", "x.db", "--project", "p", "--annotations", "none", "--metrics", "NONE"))
    assert options.annotations == () and options.metrics == ()
    assert build_options({**BASE, "annotations": "none", "metrics": []}, {}).metrics == ()
    assert build_options({**BASE, "annotations": None}, {}).annotations == ()


def test_formats_deduplicated_in_canonical_order() -> None:
    options = build_options(BASE, {"annotations": "json, yolo, json, COCO", "metrics": ["parquet", "csv", "csv"]})
    assert options.annotations == ("coco", "yolo", "json")
    assert options.metrics == ("csv", "parquet")


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("db: x.db\nproject: p\nimages-root: /data\n", encoding="utf-8")
    with pytest.raises(OptionError) as info:
        load_options_file(path)
    assert info.value.option == "images-root"
    path.write_text("db: x.db\nvisualization:\n  colour: '#FFFFFF'\n", encoding="utf-8")
    with pytest.raises(OptionError, match=r"visualization\.colour"):
        load_options_file(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [("o.yaml", "- a\n- b\n"), ("o.json", "{not json"), ("o.yaml", "a: [1,\n"), ("o.toml", "db = 1"), ("o.json", "[]")],
)
def test_bad_options_files(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OptionError) as info:
        load_options_file(path)
    assert info.value.option == "options"


def test_missing_options_file(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="options"):
        load_options_file(tmp_path / "absent.json")


def test_empty_yaml_file_is_no_values(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_options_file(path) == {}


def test_db_and_project_may_come_from_file_or_flags(tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"db": "x.db"}), encoding="utf-8")
    with pytest.raises(OptionError, match="project"):
        options_from_args(parse("--options", str(path)), under_job=False)
    assert options_from_args(parse("--options", str(path), "--project", "p"), under_job=False).project == "p"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--batch-size", "copy"], "--batch-size"),
        (["--num-cpus", "render=1"], "--num-cpus"),
        (["--num-cpus", "copy=fast"], "--num-cpus copy=fast"),
        (["--resource", "copy=slot"], "--resource"),
        (["--resource", "copy=disk:-1"], "--resource copy=disk:-1"),
        (["--scale", "-1"], "--scale"),
        (["--viz-format", "bmp"], "--viz-format"),
        (["--stroke-width", "20"], "--stroke-width"),
        (["--fill-opacity", "lots"], "--fill-opacity"),
        (["--max-buffered-images", "1.5"], "--max-buffered-images"),
        (["--address", "notahost:xx"], "--address"),
        (["--options", "/nonexistent/o.yaml"], "--options"),
    ],
)
def test_bad_flags_are_named(argv: list[str], option: str) -> None:
    """The command line names the flag (as given), never the options-file key."""
    with pytest.raises(OptionError) as info:
        options_from_args(parse("--db", "x.db", "--project", "p", *argv), under_job=False)
    assert info.value.option == option
    assert str(info.value).startswith(f"invalid option {option}: ")


def test_options_file_values_are_named_by_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("visualization:\n  stroke_width: 20\nscale: 0\n", encoding="utf-8")
    with pytest.raises(OptionError) as info:
        options_from_args(parse("--db", "x.db", "--project", "p", "--options", str(path)), under_job=False)
    assert info.value.option == f"visualization.stroke_width (in {path})"
    with pytest.raises(OptionError) as info:  # a flag overrides the file: the flag is named
        options_from_args(parse("--options", str(path), "--db", "x.db", "--project", "p", "--stroke-width", "0"),
                          under_job=False)  # fmt: skip
    assert info.value.option == "--stroke-width"
    with pytest.raises(OptionError) as info:  # missing in both: the flag is named
        options_from_args(parse("--options", str(path), "--db", "x.db"), under_job=False)
    assert info.value.option == "--project"


@pytest.mark.parametrize(
    "address",
    ["auto", "local", "127.0.0.1:6379", "head-1.example.com:6379", "[::1]:6379", "ray://head:10001",
     "http://127.0.0.1:8265", "https://head", "http://head:8265/"],
)  # fmt: skip
def test_valid_ray_addresses(address: str) -> None:
    assert ray_address_problem(address) is None
    assert build_options(BASE, {"address": address}).address == address


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("notahost:xx", "port 'xx'"),
        ("127.0.0.1:", "port is missing"),
        ("head", "port is missing"),
        (":6379", "host is missing"),
        ("head:0", "port '0'"),
        ("head:65536", "port '65536'"),
        ("head: 12", "port ' 12'"),
        ("ray://head", "port is missing"),
        ("http://head:99999", "port '99999'"),
        ("http://:8265", "host is missing"),
        ("::1:6379", "not a host name"),
        ("anyscale://x", "scheme"),
        ("-bad:1", "not a host name"),
    ],
)
def test_malformed_ray_addresses(address: str, why: str) -> None:
    problem = ray_address_problem(address)
    assert problem is not None and why in problem and repr(address) in problem
    assert error_option(BASE, {"address": address}) == "address"


def test_malformed_ray_address_in_the_environment() -> None:
    with pytest.raises(OptionError, match="RAY_ADDRESS"):
        check_environment_address(None, {"RAY_ADDRESS": "127.0.0.1:"})
    check_environment_address("auto", {"RAY_ADDRESS": "127.0.0.1:"})  # a given address wins
    check_environment_address(None, {"RAY_ADDRESS": "http://127.0.0.1:8265"})
    check_environment_address(None, {"RAY_ADDRESS": ""})
    check_environment_address(None, {})


def test_flag_for_option() -> None:
    flags = {"scale": "0", "visualization": {"stroke_width": "20"}, "stages": {"copy": {"num_cpus": "9"}}}
    assert flag_for_option("stroke_width", flags) == "--stroke-width"
    assert flag_for_option("visualization.format", flags) == "--viz-format"
    assert flag_for_option("viz_format", flags) == "--viz-format"
    assert flag_for_option("stages.copy.num_cpus", flags) == "--num-cpus copy=9"
    assert flag_for_option("stages.read.num_cpus", flags) is None  # not given as a flag
    assert flag_for_option("output", flags) == "--out"
    assert flag_for_option("originals", flags) == "--no-originals"
    assert flag_for_option("visualization", flags) is None


def test_parse_bytes() -> None:
    assert parse_bytes("m", 1024) == 1024
    assert parse_bytes("m", "2GiB") == 2 * 1024**3
    assert parse_bytes("m", "1.5e9") == 1_500_000_000
    assert parse_bytes("m", "512 MB") == 512_000_000
    assert parse_bytes("m", 2.0e9) == 2_000_000_000
    with pytest.raises(OptionError):
        parse_bytes("m", "1.5")


def test_content_options_leave_out_locations_and_secrets() -> None:
    options = build_options(
        {
            "db": "postgresql://admin:s3cret@db.internal:5432/seg",
            "project": "p",
            "images_root": "/srv/uploads",
            "output": "/home/me/out.zip",
            "address": "ray://head:10001",
            "image_ids": ["b", "a"],
            "scale": 0.5,
        },
        {"stages": {"copy": {"num_cpus": 2}}},
    )
    content = options.content_options()
    text = json.dumps(content)
    for secret in ("s3cret", "admin", "postgresql", "/srv/uploads", "/home/me", "ray://", "db.internal", "num_cpus"):
        assert secret not in text
    assert content["image_ids"] == ["a", "b"]
    assert content["scale"] == 0.5
    assert set(content) == {
        "image_ids", "originals", "visualizations", "annotations", "metrics", "docs", "scale", "visualization",
        "max_file_bytes", "max_image_pixels", "file_fingerprint",
    }  # fmt: skip
    # content options are themselves valid options-file values
    assert build_options({**BASE, **content}, {}).content_options() == content


def test_help_lists_every_flag() -> None:
    text = parser().format_help()
    for flag in (
        "--db", "--project", "--images-root", "--out", "--force", "--address", "--options", "--image-ids",
        "--annotations", "--metrics", "--no-originals", "--no-visualizations", "--no-docs", "--scale",
        "--viz-format", "--external-color", "--internal-color", "--stroke-width", "--font-size", "--fill-opacity",
        "--no-numbers", "--batch-size", "--num-cpus", "--memory", "--resource", "--max-buffered-images",
        "--shared-images-root", "--writers",
    ):  # fmt: skip
        assert flag in text
    assert text.count("required (here or in --options)") == 2  # --db and --project


def test_option_table_declares_every_field_once() -> None:
    def attributes(table: tuple) -> list[str]:
        return sorted(option.attribute for option in table)

    assert attributes(OPTION_FIELDS) == sorted(f.name for f in dataclasses.fields(ExportOptions))
    assert attributes(VISUALIZATION_FIELDS) == sorted(f.name for f in dataclasses.fields(VisualizationSettings))
    assert attributes(STAGE_FIELDS) == sorted(f.name for f in dataclasses.fields(StageResources))
    assert OPTION_KEYS == (
        "db", "project", "image_ids", "output", "force", "images_root", "shared_images_root", "address", "originals",
        "visualizations", "docs", "annotations", "coco_holes", "mt_thickness", "mt_margin", "metrics", "scale",
        "visualization", "stages",
        "max_buffered_images", "writers", "max_file_bytes", "read_timeout_s", "max_image_pixels",
        "db_retry_s",
        "stall_timeout_s", "reuse", "file_fingerprint",
    )  # fmt: skip


def test_every_flag_overrides_the_option_it_declares() -> None:
    given = {"value": ["v"], "append": ["v"], "on": [], "off": []}
    expected = {"value": "v", "append": "v", "on": True, "off": False}
    for table, nest in ((OPTION_FIELDS, None), (VISUALIZATION_FIELDS, "visualization")):
        for option in table:
            if option.flag is None:
                continue
            overrides = overrides_from_args(parse(option.flag, *given[option.flag_action]))
            value = expected[option.flag_action]
            assert overrides == ({option.key: value} if nest is None else {nest: {option.key: value}}), option.flag
    for option in STAGE_FIELDS:
        text = "copy=slot:2" if option.key == "resources" else "copy=2"
        value = {"slot": "2"} if option.key == "resources" else "2"
        assert overrides_from_args(parse(option.flag, text)) == {"stages": {"copy": {option.key: value}}}


def test_read_limits_convert_and_reject_bad_values() -> None:
    options = build_options({**BASE, "max_file_bytes": "64MiB", "read_timeout_s": "2.5"}, {"max_image_pixels": 10})
    assert (options.max_file_bytes, options.read_timeout_s, options.max_image_pixels) == (64 << 20, 2.5, 10)
    for key, value in (("max_file_bytes", 0), ("read_timeout_s", 0), ("read_timeout_s", -1), ("max_image_pixels", 0)):
        with pytest.raises(OptionError, match=key):
            build_options({**BASE, key: value})


def test_read_limit_flags() -> None:
    args = parse("--db", "x.db", "--project", "p", "--max-file-bytes", "512MB", "--read-timeout", "30",
                 "--max-image-pixels", "25000000")  # fmt: skip
    options = options_from_args(args, under_job=False)
    assert (options.max_file_bytes, options.read_timeout_s, options.max_image_pixels) == (512_000_000, 30.0, 25_000_000)
    content = options.content_options()
    assert (content["max_file_bytes"], content["max_image_pixels"]) == (512_000_000, 25_000_000)
    assert "read_timeout_s" not in content  # a timeout depends on the machine, not on the options alone


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://AKIAEXAMPLE:s3cr3t@bucket/exports/x.zip", "s3://***@bucket/exports/x.zip"),
        ("s3://bucket/x.zip?endpoint_override=127.0.0.1:9000&secret_key=s3cr3t&access_key=AKIA&scheme=http",
         "s3://bucket/x.zip?endpoint_override=127.0.0.1:9000&secret_key=***&access_key=***&scheme=http"),
        ("gs://bucket/x.zip", "gs://bucket/x.zip"),
        ("/data/exports/user:pw@x.zip", "/data/exports/user:pw@x.zip"),  # a plain path is shown as it is
    ],
)
def test_uris_are_shown_without_credentials(uri, shown):
    from ray_export.locations import uri_for_display

    assert uri_for_display(uri) == shown
