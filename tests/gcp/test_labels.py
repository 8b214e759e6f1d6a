"""Our tags survive the trip through GCE labels unchanged, and every label is one GCE
accepts."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher import tags as T
from launcher.providers.gcp import labels as L

printable = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)
keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=8)


def assert_valid(labels):
    assert len(labels) <= L.MAX_LABELS
    for key, value in labels.items():
        assert L.is_valid_label(key, value), (key, value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, printable, max_size=4))
def test_round_trip_is_lossless(tags):
    labels = L.encode_tags(tags)
    assert_valid(labels)
    assert L.decode_labels(labels) == tags


@settings(max_examples=300, deadline=None)
@given(printable)
def test_text_round_trip(text):
    encoded = L.encode_text(text)
    assert set(encoded) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    assert L.decode_text(encoded) == text


def test_our_usual_tags_stay_readable():
    tags = {T.TAG_CLUSTER_NAME: "demo", T.TAG_NODE_KIND: T.KIND_WORKER,
            T.TAG_NODE_STATUS: T.STATUS_UP_TO_DATE}
    assert L.encode_tags(tags) == tags


def test_uppercase_spaces_and_punctuation():
    labels = L.encode_tags({"corral-node-type": "GPU worker", "path": "/a:b.c"})
    assert labels == {"corral-node-type": "_g_p_u_-worker", "path": "_5a_4b_3c"}
    assert L.decode_labels(labels) == {"corral-node-type": "GPU worker", "path": "/a:b.c"}


def test_long_failure_text_is_split_and_joined():
    failure = ("setting-up: command `pip install -r /tmp/Requirements.txt` exited 1: "
               "ERROR: Could not find a version that satisfies the requirement Foo==9.9 ") * 3
    labels = L.encode_tags({T.TAG_FAILURE: failure, T.TAG_CLUSTER_NAME: "demo"})
    assert_valid(labels)
    assert len([key for key in labels if key.startswith(T.TAG_FAILURE)]) > 3
    assert L.decode_labels(labels)[T.TAG_FAILURE] == failure


def test_keys_that_do_not_start_with_a_letter():
    tags = {"9lives": "a", "xray": "b", "": "c", "_x": "d", "Zed": "e"}
    labels = L.encode_tags(tags)
    assert_valid(labels)
    assert L.decode_labels(labels) == tags


def test_too_long_key_and_too_many_labels_are_refused():
    with pytest.raises(L.TagEncodingError, match="too long"):
        L.encode_tags({"k" * 60: "v"})
    with pytest.raises(L.TagEncodingError, match="GCE labels"):
        L.encode_tags({"big": "Ü" * 2000})


def test_labels_not_in_our_encoding_are_kept():
    assert L.decode_labels({"goog-dm": "x_", "team": "ml"}) == {"goog-dm": "x_", "team": "ml"}


big_keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=80)
big_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=600)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(big_keys, big_values, max_size=8))
def test_any_tags_survive_labels_plus_metadata_overflow(tags):
    labels, overflow = L.split_tags(tags)
    assert_valid(labels)
    assert set(overflow).isdisjoint(L.decode_labels(labels))
    stored = L.overflow_json(overflow) if overflow else None
    assert L.join_tags(labels, stored) == tags


def test_priority_tags_stay_in_labels_when_others_overflow():
    tags = {"notes": "Ü" * 3000, "k" * 70: "v", T.TAG_CLUSTER_NAME: "demo",
            T.TAG_NODE_STATUS: T.STATUS_SETTING_UP, "color": "red"}
    labels, overflow = L.split_tags(tags)
    assert set(overflow) == {"notes", "k" * 70}
    assert labels[T.TAG_CLUSTER_NAME] == "demo" and labels["color"] == "red"
