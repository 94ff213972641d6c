"""The hand-written KEDA schema (deploy/schemas) holds the sentinel triggers of overlays/gpu-ha to
the same rules as the plain ones: it accepts the build, and refuses what KEDA would misread."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import DEPLOY, K8S

Build = Callable[[Path], tuple[dict[str, Any], ...]]
SCHEMA = DEPLOY / "schemas" / "keda.sh_v1alpha1_scaledobject.schema.yaml"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text()))


@pytest.fixture
def scaled_object(kustomize: Build) -> dict[str, Any]:
    (so,) = [d for d in kustomize(K8S / "overlays" / "gpu-ha") if d["kind"] == "ScaledObject"]
    return copy.deepcopy(so)


def test_the_sentinel_triggers_of_the_ha_overlay_pass(validator: Any, scaled_object: dict[str, Any]) -> None:
    assert {t["type"] for t in scaled_object["spec"]["triggers"]} == {"redis-sentinel-streams"}
    assert list(validator.iter_errors(scaled_object)) == []


@pytest.mark.parametrize(
    "spoil",
    [
        lambda meta: meta.pop("sentinelMaster"),  # which primary?
        lambda meta: meta.pop("addresses"),  # no sentinel to ask
        lambda meta: meta.update(address=meta.pop("addresses")),  # the plain scaler's key
        lambda meta: meta.update(lagcount=meta.pop("lagCount")),  # misspelt: KEDA would measure pending entries
        lambda meta: meta.pop("activationLagCount"),
    ],
    ids=["no-master", "no-addresses", "plain-address-key", "misspelt-lag", "lag-without-activation"],
)
def test_a_spoilt_sentinel_trigger_is_refused(
    validator: Any, scaled_object: dict[str, Any], spoil: Callable[[dict[str, str]], object]
) -> None:
    spoil(scaled_object["spec"]["triggers"][0]["metadata"])  # the lag trigger
    assert list(validator.iter_errors(scaled_object)), "the schema accepted it"
