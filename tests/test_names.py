"""Ids unique by construction, whatever the names: properties checked over adversarial name sets.

The names hypothesis draws are built to collide: separators that flatten alike ('a/b', 'a_b'),
suffix look-alikes ('x~1', 'x-1f2e3d4c'), case ('A', 'a'), Unicode normalisation ('é' composed and
decomposed), undecodable bytes, empty and null ids."""

from __future__ import annotations

import hashlib
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.names import (escape_name, os_name, raw_name, same_file_key, unique_names,
                                 unique_shard_ids)
from pipeline.data.planning import list_input, plan_listing

ATOMS = ["a", "A", "b", "sub", "SUB", "x~1", "x", "~", "-", "_", ".", "é", unicodedata.normalize("NFD", "é"),
         "caf\udce9", "\\", "\\x41", " "]
name = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=4).map("".join)
path = st.lists(name, min_size=1, max_size=3).map("/".join)


def suffix_look_alikes(base: list[str]) -> list[str]:
    """The spellings a suffixing scheme could produce for `base`, as names of their own."""
    alikes = []
    for b in base:
        alikes += [f"{b}~1", f"{b}~2"]
        alikes.append(f"{b}-{hashlib.sha256((b + '.tar').encode('utf-8', 'surrogateescape')).hexdigest()[:8]}")
    return alikes


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(name, st.just("")), min_size=1, max_size=25), st.lists(name, max_size=5))
def test_unique_names_are_unique_and_keep_every_unique_spelling(names, taken):
    names = names + suffix_look_alikes(names[:3])
    out = unique_names(names, taken=taken)
    assert len(out) == len(names) and len(set(out)) == len(out)
    assert not set(out) & set(taken)
    for before, after in zip(names, out):
        assert after == before or after.startswith(before)
    first = {}
    for i, n in enumerate(names):
        first.setdefault(n, i)
    assert all(out[i] == n for n, i in first.items() if n not in taken)  # the first of each spelling keeps it


@settings(max_examples=300, deadline=None)
@given(st.lists(path, min_size=1, max_size=25, unique=True), st.lists(name, max_size=5))
def test_shard_ids_are_file_name_safe_and_unique_under_case_and_normalisation(paths, taken):
    relative = [escape_name(p) + ".tar" for p in paths]
    relative += [r + ".tar" for r in suffix_look_alikes([escape_name(p).replace("/", "_") for p in paths[:3]])]
    relative = list(dict.fromkeys(relative))
    ids = unique_shard_ids(relative, ".tar", taken=taken)
    keys = [same_file_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert not set(keys) & {same_file_key(t) for t in taken}
    assert all(i and all(c.isascii() and (c.isalnum() or c in "._-") for c in i) for i in ids)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=30))
def test_an_escaped_name_is_text_and_gives_its_bytes_back(raw):
    os_str = raw.decode("utf-8", "surrogateescape")
    escaped = escape_name(os_str)
    escaped.encode("utf-8")  # storable as Arrow/Parquet text
    assert raw_name(escaped) == raw and os_name(escaped) == os_str


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), name), min_size=1, max_size=12), st.integers(1, 3))
def test_parquet_ids_of_a_whole_plan_are_unique_with_nulls_and_look_alikes(tmp_path_factory, ids, files):
    root = tmp_path_factory.mktemp("pq")
    ids = [escape_name(i) if i is not None else None for i in ids]
    for f in range(files):
        column = ids + [f"part{f}/0", f"part{(f + 1) % files}/1"]  # explicit ids equal to other rows' defaults
        pq.write_table(pa.table({"id": column, "image": [b"x"] * len(column)}), root / f"part{f}.parquet")
    plan = plan_listing(list_input(str(root)), id_column="id")
    from pipeline.data.sources import read_shard

    got = [r.image_id for spec in plan.shards for r in read_shard(spec)]
    assert len(got) == files * (len(ids) + 2) and len(set(got)) == len(got)
