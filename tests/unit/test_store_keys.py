"""Key validation, object layout and store URL parsing of the transcript store (pure, no I/O)."""

from __future__ import annotations

import pytest

from agentsession_contract.store import InvalidKeyError, keys
from agentsession_contract.store.codec import (
    decode_compacted,
    decode_entries,
    encode_compacted,
    encode_entries,
    split_lines,
)

UNSAFE_SEGMENTS = [
    "",
    ".",
    "..",
    "a/b",
    "/abs",
    "../other-ns",
    "a\\b",
    "\\",
    "nul\x00byte",
    "line\nbreak",
    "tab\there",
    "del\x7f",
    "%2e%2e",
    "%2F",
    "space here",
    "ünïcode",
    "x" * 256,
    "~",
]


@pytest.mark.parametrize("value", UNSAFE_SEGMENTS)
def test_unsafe_segments_are_rejected(value: str) -> None:
    with pytest.raises(InvalidKeyError):
        keys.check_segment(value, "session_id")


@pytest.mark.parametrize(
    "value",
    [
        "-tmp-x-work",
        "-workspace",
        "0b0f7f4e-2c7a-4c57-9c8e-3d1f0e6a1b2c",
        "a.b_c-d",
        "...",
        ".hidden",
        "x" * 255,
        # What the SDK produces for a cwd over 200 characters: truncated, then a hash suffix.
        "-" + "a" * 199 + "-1x9k2p",
    ],
)
def test_sdk_shaped_segments_are_accepted(value: str) -> None:
    assert keys.check_segment(value, "project_key") == value


@pytest.mark.parametrize("value", [None, 3, b"bytes", ["a"]])
def test_non_string_segments_are_rejected(value: object) -> None:
    with pytest.raises(InvalidKeyError):
        keys.check_segment(value, "project_key")


def test_invalid_key_error_is_a_value_error() -> None:
    assert issubclass(InvalidKeyError, ValueError)


@pytest.mark.parametrize(
    "subpath",
    ["", "/", "/subagents/a", "subagents/", "subagents//a", "subagents/../x", "./a", "a/./b",
     "..", "a\\..\\b", "a/\x00", "/".join(["a"] * 17)],
)  # fmt: skip
def test_unsafe_subpaths_are_rejected(subpath: str) -> None:
    with pytest.raises(InvalidKeyError):
        keys.check_subpath(subpath)


@pytest.mark.parametrize("subpath", ["subagents/agent-1", "a", "a/b/c", "subagents/agent-ab12.x"])
def test_safe_subpaths_are_accepted(subpath: str) -> None:
    assert keys.check_subpath(subpath) == subpath


@pytest.mark.parametrize("namespace", ["default", "team-a", "a", "a1", "x" * 63])
def test_dns_label_namespaces_are_accepted(namespace: str) -> None:
    assert keys.check_namespace(namespace) == namespace


@pytest.mark.parametrize(
    "namespace", ["", "Team", "-a", "a-", "a.b", "a/b", "..", "x" * 64, "a_b", None]
)
def test_non_dns_label_namespaces_are_rejected(namespace: object) -> None:
    with pytest.raises(InvalidKeyError):
        keys.check_namespace(namespace)


def test_parse_key_validates_every_field() -> None:
    stream = keys.parse_key({"project_key": "p", "session_id": "s", "subpath": "subagents/a-1"})
    assert stream == keys.StreamKey("p", "s", "subagents/a-1")
    for bad in (
        {"project_key": "p"},
        {"session_id": "s"},
        {"project_key": "..", "session_id": "s"},
        {"project_key": "p", "session_id": "a/b"},
        {"project_key": "p", "session_id": "s", "subpath": ""},
        {"project_key": "p", "session_id": "s", "subpath": "../../other/s"},
    ):
        with pytest.raises(InvalidKeyError):
            keys.parse_key(bad)


def test_layout_separates_main_subpaths_summary_and_result() -> None:
    main = keys.parse_key({"project_key": "p", "session_id": "s"})
    sub = keys.parse_key({"project_key": "p", "session_id": "s", "subpath": "subagents/a-1"})
    assert main.stream_dir == "p/s/main/"
    assert sub.stream_dir == "p/s/sub/subagents/a-1/"
    assert keys.summary_path("p", "s") == "p/s/summary.json"
    assert keys.result_path("p", "s") == "p/s/result.json"
    # Subpaths named like the reserved files stay inside sub/, so they cannot collide.
    clash = keys.parse_key({"project_key": "p", "session_id": "s", "subpath": "result.json"})
    assert clash.stream_dir == "p/s/sub/result.json/"


def test_part_names_sort_in_sequence_order() -> None:
    writer = "0123456789abcdef"
    names = [keys.part_name(seq, writer) for seq in (9, 10, 1_700_000_000_000_000, 11)]
    assert sorted(names) == [names[0], names[1], names[3], names[2]]
    parsed = keys.parse_object_name(names[2])
    assert parsed == keys.StreamObjectName(1_700_000_000_000_000, writer, "part", names[2])
    compacted = keys.compacted_name(5, writer)
    assert keys.parse_object_name(compacted) == keys.StreamObjectName(
        5, writer, "compacted", compacted
    )


@pytest.mark.parametrize(
    "name", ["summary.json", "result.json", ".tmp", "1-abc.jsonl", "x.jsonl", "compacted-1-a.jsonl"]
)
def test_other_file_names_are_not_transcript_objects(name: str) -> None:
    assert keys.parse_object_name(name) is None


def test_classifiers_recognise_only_their_own_shapes() -> None:
    part = keys.part_name(1, "0123456789abcdef")
    assert keys.main_session_of(f"s1/main/{part}") == "s1"
    assert keys.main_session_of(f"s1/sub/a/{part}") is None
    assert keys.main_session_of("s1/main/summary.json") is None
    assert keys.summary_session_of("s1/summary.json") == "s1"
    assert keys.summary_session_of("s1/main/summary.json") is None
    assert keys.subpath_of(f"subagents/agent-1/{part}") == "subagents/agent-1"
    assert keys.subpath_of(f"a/{part}/{part}") == f"a/{part}"
    assert keys.subpath_of(part) is None
    assert keys.subpath_of("subagents/agent-1/notes.txt") is None


def test_check_relative_key_rejects_escapes() -> None:
    assert keys.check_relative_key("p/s/main/") == "p/s/main/"
    assert keys.check_relative_key("") == ""
    for bad in ("../x", "p//s", "/p", "p/../../x", "p/\x00"):
        with pytest.raises(InvalidKeyError):
            keys.check_relative_key(bad)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", keys.S3Location("bucket", "")),
        ("s3://my.bucket-1/", keys.S3Location("my.bucket-1", "")),
        ("s3://bucket/a/b", keys.S3Location("bucket", "a/b/")),
        ("s3://bucket/a/b/", keys.S3Location("bucket", "a/b/")),
        ("file:///var/lib/transcripts", keys.FileLocation("/var/lib/transcripts")),
        ("file:///var/lib/transcripts/", keys.FileLocation("/var/lib/transcripts")),
        ("file://localhost/tmp/x", keys.FileLocation("/tmp/x")),
        ("file:///tmp/with%20space", keys.FileLocation("/tmp/with space")),
    ],
)
def test_store_urls_parse(url: str, expected: object) -> None:
    assert keys.parse_store_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/tmp/x",
        "http://bucket/x",
        "s3://",
        "s3://ab",
        "s3://Upper",
        "s3://user:secret@bucket/x",
        "s3://bucket:9000/x",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "s3://bucket/x?versionId=1",
        "file://host/tmp/x",
        "file:relative/dir",
        "file:///tmp/../etc",
        "file:///tmp/%2e%2e/etc",
        "file:///tmp/nul%00",
    ],
)
def test_bad_store_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidKeyError):
        keys.parse_store_url(url)


def test_codec_round_trips_and_dedups_by_uuid() -> None:
    entries = [
        {"type": "user", "uuid": "u1", "text": "line\nbreak \u2028 \ud800"},
        {"type": "title", "title": "t"},
        {"type": "user", "uuid": "u1", "text": "retried copy"},
        {"type": "title", "title": "t"},
        {"type": "x", "uuid": None},
        {"type": "x", "uuid": None},
    ]
    lines = split_lines(encode_entries(entries))
    assert len(lines) == 6
    assert decode_entries(lines) == [entries[0], entries[1], entries[3], entries[4], entries[5]]


def test_compacted_objects_keep_their_segments() -> None:
    segments = [("a", [b'{"n":1}', b'{"n":2}']), ("b", []), ("c", [b'{"n":3}'])]
    assert decode_compacted(encode_compacted(segments)) == segments
    for broken in (b"", b'{"n":1}\n', encode_compacted(segments) + b'{"extra":1}\n'):
        with pytest.raises(ValueError, match="compacted"):
            decode_compacted(broken)


@pytest.mark.parametrize(
    "lines",
    [
        [b'{"type":"x"}', b"{not json"],
        [b'{"type":"x"},{"type":"y"}'],  # two values on one line: not JSONL
        [b"[1", b"2]"],  # only valid when glued together
    ],
)
def test_malformed_jsonl_is_rejected(lines: list[bytes]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json's own error, subclass of ValueError
        decode_entries(lines)
