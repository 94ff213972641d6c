"""The devhub's access decisions: which error the Hub answers for each repo state and caller."""

from __future__ import annotations

import pytest

from devhub.access import DISABLED_MESSAGE, caller, check_repo, check_revision
from devhub.repo import Flags

ANON = caller(None, "secret")
WRONG = caller("Bearer nope", "secret")
RIGHT = caller("Bearer secret", "secret")


def test_caller_token_rules() -> None:
    assert (ANON.has_token, ANON.authorized) == (False, False)
    assert (WRONG.has_token, WRONG.authorized) == (True, False)
    assert RIGHT.authorized
    assert caller("Bearer anything", None).authorized  # no server token: any bearer token
    assert not caller("Basic abc", None).has_token
    assert not caller("Bearer ", None).has_token


@pytest.mark.parametrize(("who", "status"), [(ANON, 401), (WRONG, 404), (RIGHT, 404)])
def test_missing_repo_is_401_anonymous_404_with_token(who, status) -> None:
    err = check_repo("o/n", None, who, download=False)
    assert err is not None and (err.status, err.code) == (status, "RepoNotFound")


def test_private_repo_is_invisible_without_the_token() -> None:
    flags = Flags(private=True)
    assert check_repo("o/n", flags, ANON, download=False).code == "RepoNotFound"  # type: ignore[union-attr]
    assert check_repo("o/n", flags, WRONG, download=True).status == 404  # type: ignore[union-attr]
    assert check_repo("o/n", flags, RIGHT, download=True) is None


def test_gated_repo_shows_metadata_but_refuses_files() -> None:
    flags = Flags(gated="manual")
    assert check_repo("o/n", flags, ANON, download=False) is None
    err = check_repo("o/n", flags, WRONG, download=True)
    assert err is not None and (err.status, err.code) == (403, "GatedRepo")
    assert check_repo("o/n", flags, RIGHT, download=True) is None


def test_disabled_repo_sends_the_message_the_client_maps() -> None:
    err = check_repo("o/n", Flags(disabled=True), RIGHT, download=False)
    assert err is not None and err.code is None and err.message == DISABLED_MESSAGE


def test_revision_is_main_or_current_sha() -> None:
    sha = "a" * 40
    assert check_revision("main", sha) is None
    assert check_revision(sha, sha) is None
    assert check_revision("b" * 40, sha).code == "RevisionNotFound"  # type: ignore[union-attr]
    assert check_revision("v1.0", sha) is not None
