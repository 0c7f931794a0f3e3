"""Job names and labels: the syntax and bounds every request is checked against
before any work, with an error that says what was wrong."""

from __future__ import annotations

import pytest

from jobworker import naming
from jobworker.errors import InvalidRequestError
from jobworker.model import JobSpec

pytestmark = pytest.mark.hierarchy_independent


@pytest.mark.parametrize("name", ["a", "build-42", "nightly.backup_2", "9", "x" * 63])
def test_names_in_the_syntax_are_taken(name: str) -> None:
    assert naming.check_name(name) == name
    assert naming.is_name(name)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("", "bad job name"),
        ("-x", "bad job name"),
        ("a b", "bad job name"),
        ("a/b", "bad job name"),
        ("é", "bad job name"),
        ("x" * 64, "bad job name"),
        ("5f0c1a2b-0000-4000-8000-000000000000", "reads as a job id"),
    ],
)
def test_names_outside_the_syntax_or_shaped_like_an_id_are_refused(name: str, said: str) -> None:
    with pytest.raises(InvalidRequestError, match=said):
        naming.check_name(name)
    assert not naming.is_name(name)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("app", "web"),
        ("app", ""),
        ("example.com/tier", "front-end"),
        ("a.b-c.d/x_y.z", "1.2.3"),
        ("k" * 63, "v" * 63),
        ("p" * 253 + "/k", "v"),
    ],
)
def test_labels_in_the_kubernetes_syntax_are_taken(key: str, value: str) -> None:
    assert naming.check_label(key, value) == (key, value)
    assert naming.parse_label(f"{key}={value}") == (key, value)


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("", "v", "bad label key"),
        ("-app", "v", "bad label key"),
        ("app-", "v", "bad label key"),
        ("k" * 64, "v", "bad label key"),
        ("/app", "v", "DNS subdomain"),
        ("Example.com/app", "v", "DNS subdomain"),
        ("p" * 254 + "/k", "v", "DNS subdomain"),
        ("a/b/c", "v", "DNS subdomain"),
        ("app", "v" * 64, "bad label value"),
        ("app", "a b", "bad label value"),
        ("app", "x\n", "bad label value"),
    ],
)
def test_labels_outside_the_syntax_are_refused(key: str, value: str, said: str) -> None:
    with pytest.raises(InvalidRequestError, match=said):
        naming.check_label(key, value)


def test_labels_are_sorted_bounded_in_count_and_each_key_given_once() -> None:
    assert naming.labels_from({"b": "2", "a": "1"}) == (("a", "1"), ("b", "2"))
    assert len(naming.labels_from({f"k{n}": "" for n in range(naming.MAX_LABELS)})) == 32
    with pytest.raises(InvalidRequestError, match="33 labels given; at most 32"):
        naming.labels_from({f"k{n}": "" for n in range(naming.MAX_LABELS + 1)})
    with pytest.raises(InvalidRequestError, match="given twice"):
        naming.labels_from([("a", "1"), ("a", "2")])
    with pytest.raises(InvalidRequestError, match="KEY=VALUE"):
        naming.parse_label("app")


def test_a_selector_selects_jobs_with_every_one_of_its_labels() -> None:
    labels = (("app", "web"), ("tier", "front"))
    assert naming.selects((), labels)
    assert naming.selects((("app", "web"),), labels)
    assert naming.selects(labels, labels)
    assert not naming.selects((("app", "db"),), labels)
    assert not naming.selects((("app", "web"), ("zone", "a")), labels)
    assert not naming.selects((("tier", ""),), labels)


def test_a_spec_checks_its_name_and_labels_when_built() -> None:
    spec = JobSpec(argv=("true",), name="n1", labels={"app": "x"})
    assert spec.labels == (("app", "x"),)
    with pytest.raises(InvalidRequestError, match="bad job name"):
        JobSpec(argv=("true",), name="bad name")
    with pytest.raises(InvalidRequestError, match="bad label value"):
        JobSpec(argv=("true",), labels={"app": "bad value"})
