"""Identifier extraction for GCP calls: resource names, request forms and aliases, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud.secretmanager_v1 import types

from secret_audit._internal.event import Item
from secret_audit._internal.gcp_source import RPCS, build_item, parse_name, principal_of


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("projects/p/secrets/s", ("s", None, len("projects/p/secrets/s"))),
        ("projects/p/secrets/s/versions/7", ("s", "7", len("projects/p/secrets/s"))),
        ("projects/p/secrets/s/versions/latest", ("s", "latest", len("projects/p/secrets/s"))),
        (
            "projects/p/locations/us-east1/secrets/s/versions/3",
            ("s", "3", len("projects/p/locations/us-east1/secrets/s")),
        ),
        ("projects/secrets/secrets/secrets", ("secrets", None, len("projects/secrets/secrets/secrets"))),
        ("projects/locations/secrets/s", ("s", None, len("projects/locations/secrets/s"))),
        ("projects/p", ("projects/p", None, 0)),
        ("projects/p/secrets/", ("projects/p/secrets/", None, 0)),
        ("folders/f/secrets/s", ("folders/f/secrets/s", None, 0)),
        ("", ("", None, 0)),
    ],
)
def test_parse_name(name, expected):
    assert parse_name(name) == expected


ACCESS = RPCS["access_secret_version"]
V7 = types.AccessSecretVersionResponse(name="projects/123/secrets/s/versions/7", payload={"data": b"canary"})


@pytest.mark.parametrize(
    ("rpc", "args", "kwargs", "response", "expected"),
    [
        (ACCESS, (), {"name": "projects/p/secrets/s/versions/latest"}, V7,
         Item("s", "read", "AccessSecretVersion", "found", "projects/p/secrets/s/versions/7", "7")),
        (ACCESS, ({"name": "projects/p/secrets/s/versions/2"},), {}, V7,
         Item("s", "read", "AccessSecretVersion", "found", "projects/p/secrets/s/versions/2", "2")),
        (ACCESS, (), {"request": types.AccessSecretVersionRequest(name="projects/p/secrets/s/versions/prod")},
         None,
         Item("s", "read", "AccessSecretVersion", "found", "projects/p/secrets/s/versions/prod", None)),
        (ACCESS, (), {}, None, Item("unknown", "read", "AccessSecretVersion", "found")),
        (ACCESS, (), {"request": {"name": 42}}, None, Item("unknown", "read", "AccessSecretVersion", "found")),
        (ACCESS, (), {"name": "not-a-resource-name"}, None,
         Item("not-a-resource-name", "read", "AccessSecretVersion", "found")),
        (RPCS["create_secret"], (), {"parent": "projects/p/locations/l", "secret_id": "s"}, None,
         Item("s", "write", "CreateSecret", "created", "projects/p/locations/l/secrets/s")),
        (RPCS["create_secret"], ({"parent": "projects/p"},), {}, None,
         Item("unknown", "write", "CreateSecret", "created")),
        (RPCS["update_secret"], (types.UpdateSecretRequest(secret={"name": "projects/p/secrets/s"}),), {}, None,
         Item("s", "write", "UpdateSecret", "updated", "projects/p/secrets/s")),
        (RPCS["add_secret_version"], (), {"parent": "projects/p/secrets/s", "payload": {"data": b"c"}},
         types.SecretVersion(name="projects/p/secrets/s/versions/12"),
         Item("s", "write", "AddSecretVersion", "created", "projects/p/secrets/s/versions/12", "12")),
        (RPCS["add_secret_version"], (), {"parent": "projects/p/secrets/s"}, None,
         Item("s", "write", "AddSecretVersion", "created", "projects/p/secrets/s")),
        (RPCS["list_secrets"], (), {"parent": "projects/p/locations/l"}, None,
         Item("*", "metadata", "ListSecrets", None, "projects/p/locations/l")),
        (RPCS["set_iam_policy"], ({"resource": "projects/p/secrets/s", "policy": {}},), {}, None,
         Item("s", "admin", "SetIamPolicy", "updated", "projects/p/secrets/s")),
    ],
)
def test_build_item(rpc, args, kwargs, response, expected):
    assert build_item(rpc, args, kwargs, response) == expected


class _Creds:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)
        self.token = "ya29.secret-token"


class _Exploding:
    @property
    def service_account_email(self) -> str:
        raise RuntimeError("metadata server unreachable")


@pytest.mark.parametrize(
    ("creds", "expected"),
    [
        (_Creds(service_account_email="sa@p.iam.gserviceaccount.com"), "serviceAccount:sa@p.iam.gserviceaccount.com"),
        (_Creds(service_account_email="default"), None),  # Compute Engine before its first refresh
        (_Creds(account="dev@example.com"), "user:dev@example.com"),
        (_Creds(account=""), None),
        (_Creds(), None),
        (_Exploding(), None),
    ],
)
def test_principal_of(creds, expected):
    assert principal_of(creds) == expected
