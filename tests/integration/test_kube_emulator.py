"""The Kubernetes test bed itself: kmock's emulator over real HTTP, our API-server layer, and kopf on top."""

from __future__ import annotations

import concurrent.futures
import copy
from typing import Any

import httpx
import kubernetes.client
import pytest

from tests.support.kube import Fault, KopfProcessFactory, KopfRunnerFactory, KubeAPI, KubeApiError
from tests.support.kube.admission import schema_admission

pytest_plugins = ["tests.support.kube.fixtures"]

GTJ = "ganops.io/v1alpha1"
NS = "team-a"

# A minimal GanTrainingJob CRD; the real one comes from `ganops.api.crd.build_crd()`.
GTJ_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gantrainingjobs.ganops.io"},
    "spec": {
        "group": "ganops.io",
        "scope": "Namespaced",
        "names": {
            "plural": "gantrainingjobs",
            "singular": "gantrainingjob",
            "kind": "GanTrainingJob",
            "shortNames": ["gtj"],
        },
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {"status": {}},
            }
        ],
    },
}


def job(name: str, steps: int = 100, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": GTJ,
        "kind": "GanTrainingJob",
        "metadata": {"name": name, "namespace": NS, **metadata},
        "spec": {"model": {"architecture": "mlp"}, "training": {"steps": steps}},
    }


def configmap(name: str, namespace: str = NS, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, **metadata}}


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


# ------------------------------------------------------------------------------------------------ plain HTTP API
def test_crud_over_http(kube_api: KubeAPI) -> None:
    created = kube_api.create({**configmap("settings"), "data": {"a": "1"}})
    meta = created["metadata"]
    assert meta["namespace"] == NS and meta["uid"] and meta["creationTimestamp"]
    assert created["apiVersion"] == "v1" and created["kind"] == "ConfigMap"

    assert kube_api.get("v1", "ConfigMap", NS, "settings") == created
    assert [cm["metadata"]["name"] for cm in kube_api.list("v1", "configmaps", NS)] == ["settings"]
    assert kube_api.list("v1", "cm", "elsewhere") == []

    patched = kube_api.patch("v1", "ConfigMap", NS, "settings", {"data": {"b": "2", "a": None}})
    assert patched["data"] == {"b": "2"}
    assert rv(patched) > rv(created)

    with pytest.raises(KubeApiError) as conflict:
        kube_api.create(configmap("settings"))
    assert conflict.value.status == 409 and conflict.value.reason == "AlreadyExists"

    kube_api.delete("v1", "ConfigMap", NS, "settings")
    assert kube_api.get_or_none("v1", "ConfigMap", NS, "settings") is None
    with pytest.raises(KubeApiError) as missing:
        kube_api.patch("v1", "ConfigMap", NS, "settings", {"data": {}})
    assert missing.value.status == 404
    # kmock keeps every version of an object, deletion included, for assertions.
    assert [version is None for version in kube_api.history("v1", "ConfigMap", NS, "settings")][-1]


def test_unknown_resources_and_wrong_scopes_are_rejected(kube_api: KubeAPI) -> None:
    assert kube_api.http.get("/apis/ganops.io/v1alpha1/namespaces/x/gantrainingjobs").status_code == 404
    assert kube_api.http.post("/api/v1/configmaps", json=configmap("x")).status_code == 405
    mismatch = kube_api.http.post("/api/v1/namespaces/other/configmaps", json=configmap("x"))
    assert mismatch.status_code == 400


def test_resource_version_and_generation(kube_api: KubeAPI) -> None:
    kube_api.register_crd(GTJ_CRD)
    created = kube_api.create({**job("j1"), "status": {"phase": "Forged"}})
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # the status subresource: status is not settable on create

    labelled = kube_api.patch(GTJ, "GanTrainingJob", NS, "j1", {"metadata": {"labels": {"team": "a"}}})
    assert rv(labelled) > rv(created) and labelled["metadata"]["generation"] == 1

    status = kube_api.patch_status(GTJ, "GanTrainingJob", NS, "j1", {"phase": "Running", "step": 5})
    assert status["status"] == {"phase": "Running", "step": 5}
    assert rv(status) > rv(labelled) and status["metadata"]["generation"] == 1

    respec = kube_api.patch(GTJ, "gtj", NS, "j1", {"spec": {"training": {"steps": 200}}, "status": {"phase": "X"}})
    assert respec["metadata"]["generation"] == 2
    assert respec["status"]["phase"] == "Running"  # the main resource ignores status changes
    assert respec["spec"] == {"model": {"architecture": "mlp"}, "training": {"steps": 200}}

    # /status ignores everything but the status.
    done = kube_api.patch_status(GTJ, "GanTrainingJob", NS, "j1", {"phase": "Done"})
    assert done["status"] == {"phase": "Done", "step": 5}  # a merge patch of the status
    sneaky = kube_api.patch(
        GTJ, "GanTrainingJob", NS, "j1", {"spec": {"x": 1}, "status": {"step": 9}}, subresource="status"
    )
    assert "x" not in sneaky["spec"] and sneaky["status"]["step"] == 9 and sneaky["metadata"]["generation"] == 2

    noop = kube_api.patch(GTJ, "GanTrainingJob", NS, "j1", {"spec": {"training": {"steps": 200}}})
    assert rv(noop) == rv(sneaky)  # nothing changed: no new resourceVersion, no watch event


def test_optimistic_concurrency(kube_api: KubeAPI) -> None:
    created = kube_api.create(configmap("cm"))
    kube_api.patch("v1", "ConfigMap", NS, "cm", {"data": {"a": "1"}})
    stale = str(rv(created))

    with pytest.raises(KubeApiError) as merge_conflict:
        kube_api.patch("v1", "ConfigMap", NS, "cm", {"metadata": {"resourceVersion": stale}, "data": {"a": "2"}})
    assert merge_conflict.value.status == 409

    with pytest.raises(KubeApiError) as test_failed:  # kopf's JSON patches carry such a test op
        kube_api.patch(
            "v1",
            "ConfigMap",
            NS,
            "cm",
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": stale},
                {"op": "add", "path": "/data/b", "value": "2"},
            ],
        )
    assert test_failed.value.status == 422

    with pytest.raises(KubeApiError) as put_conflict:
        kube_api.replace({**created, "data": {"c": "3"}})
    assert put_conflict.value.status == 409

    fresh = kube_api.get("v1", "ConfigMap", NS, "cm")
    replaced = kube_api.replace({**fresh, "data": {"c": "3"}})
    assert replaced["data"] == {"c": "3"} and rv(replaced) > rv(fresh)


def test_generate_name(kube_api: KubeAPI) -> None:
    names = {kube_api.create(configmap("", generateName="trial-"))["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5 and all(name.startswith("trial-") and len(name) == len("trial-") + 5 for name in names)
    with pytest.raises(KubeApiError) as nameless:
        kube_api.create(configmap(""))
    assert nameless.value.status == 422


# ------------------------------------------------------------------------------------------------ watch & selectors
def test_watch_from_resource_version_gets_later_events(kube_api: KubeAPI) -> None:
    kube_api.create(configmap("before"))
    listing = kube_api.list_raw("v1", "ConfigMap", NS)
    since = listing["metadata"]["resourceVersion"]

    kube_api.create(configmap("after"))
    kube_api.patch("v1", "ConfigMap", NS, "after", {"data": {"k": "v"}})
    kube_api.delete("v1", "ConfigMap", NS, "before")
    kube_api.create(configmap("other-namespace", namespace="team-b"))

    events = kube_api.watch("v1", "ConfigMap", NS, resource_version=since, max_events=3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "after"),
        ("DELETED", "before"),
    ]
    assert [rv(e["object"]) for e in events] == sorted(rv(e["object"]) for e in events)

    # Without a resourceVersion: the current state as synthetic ADDED events, then live changes.
    current = kube_api.watch("v1", "ConfigMap", None, max_events=2)
    assert {(e["type"], e["object"]["metadata"]["name"]) for e in current} == {
        ("ADDED", "after"),
        ("ADDED", "other-namespace"),
    }

    # sendInitialEvents ends the initial state with a bookmark, as kopf's initial streaming expects.
    initial = kube_api.watch("v1", "ConfigMap", NS, send_initial_events=True, max_events=2)
    assert [e["type"] for e in initial] == ["ADDED", "BOOKMARK"]
    assert initial[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_live_watch_with_label_selector(kube_api: KubeAPI) -> None:
    kube_api.create(configmap("a", labels={"ganops.io/job": "j1"}))
    since = kube_api.list_raw("v1", "ConfigMap", NS)["metadata"]["resourceVersion"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        watching = pool.submit(
            kube_api.watch,
            "v1",
            "ConfigMap",
            NS,
            resource_version=since,
            label_selector="ganops.io/job=j1",
            max_events=3,
        )
        kube_api.wait_for(lambda: kube_api.watchers("v1", "ConfigMap") == 1, message="the watch is open")
        kube_api.create(configmap("b", labels={"ganops.io/job": "j2"}))  # not selected: never seen
        kube_api.patch("v1", "ConfigMap", NS, "a", {"data": {"x": "1"}})
        kube_api.patch("v1", "ConfigMap", NS, "a", {"metadata": {"labels": {"ganops.io/job": "j2"}}})  # leaves
        kube_api.patch("v1", "ConfigMap", NS, "b", {"metadata": {"labels": {"ganops.io/job": "j1"}}})  # enters
        events = watching.result(timeout=10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"),
        ("DELETED", "a"),
        ("ADDED", "b"),
    ]
    kube_api.wait_for(lambda: kube_api.watchers("v1", "ConfigMap") == 0, message="closed watches are released")


def test_label_and_field_selectors(kube_api: KubeAPI) -> None:
    for name, job_name in [("p1", "a"), ("p2", "a"), ("p3", "b"), ("p4", None)]:
        labels = {"ganops.io/job": job_name} if job_name else {}
        kube_api.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            }
        )
    kube_api.patch_status("v1", "Pod", NS, "p2", {"phase": "Running"})

    def names(**selectors: str) -> list[str]:
        return [pod["metadata"]["name"] for pod in kube_api.list("v1", "pods", NS, **selectors)]

    assert names(label_selector="ganops.io/job=a") == ["p1", "p2"]
    assert names(label_selector="ganops.io/job==b") == ["p3"]
    assert names(label_selector="ganops.io/job!=a") == ["p3", "p4"]
    assert names(label_selector="ganops.io/job in (a, b),ganops.io/job notin (b)") == ["p1", "p2"]
    assert names(label_selector="ganops.io/job") == ["p1", "p2", "p3"]
    assert names(label_selector="!ganops.io/job") == ["p4"]
    assert names(field_selector="metadata.name=p3") == ["p3"]
    assert names(field_selector="status.phase=Running") == ["p2"]
    assert names(label_selector="ganops.io/job=a", field_selector="status.phase!=Running") == ["p1"]
    assert kube_api.http.get(f"/api/v1/namespaces/{NS}/pods", params={"labelSelector": "a in b"}).status_code == 400


def test_namespaces(kube_api: KubeAPI) -> None:
    listed = {ns["metadata"]["name"] for ns in kube_api.list("v1", "Namespace")}
    assert {"default", "kube-system"} <= listed and NS not in listed

    kube_api.create(configmap("cm"))  # namespaces are created on first use (KubeAPI(auto_namespaces=False): 404)
    namespace = kube_api.http.get(f"/api/v1/namespaces/{NS}").json()
    assert namespace["kind"] == "Namespace" and namespace["status"]["phase"] == "Active"

    kube_api.ensure_namespace("explicit")
    assert "explicit" in {ns["metadata"]["name"] for ns in kube_api.list("v1", "ns")}

    kube_api.delete("v1", "Namespace", None, NS)  # deleting a namespace deletes what is in it
    assert kube_api.get_or_none("v1", "ConfigMap", NS, "cm") is None


# ------------------------------------------------------------------------------------------------ CRDs, GC, faults
def test_crd_registration_makes_the_resource_discoverable(kube_api: KubeAPI) -> None:
    assert kube_api.http.get("/apis/ganops.io/v1alpha1").status_code == 404

    crd = kube_api.register_crd(GTJ_CRD)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and crd["status"]["acceptedNames"]["shortNames"] == ["gtj"]

    groups = {group["name"]: group for group in kube_api.http.get("/apis").json()["groups"]}
    assert groups["ganops.io"]["preferredVersion"]["version"] == "v1alpha1"
    resources = {r["name"]: r for r in kube_api.http.get("/apis/ganops.io/v1alpha1").json()["resources"]}
    assert set(resources) == {"gantrainingjobs", "gantrainingjobs/status"}
    main = resources["gantrainingjobs"]
    assert main["kind"] == "GanTrainingJob" and main["namespaced"] is True and main["shortNames"] == ["gtj"]
    assert {"create", "get", "list", "watch", "patch", "update", "delete"} <= set(main["verbs"])

    kube_api.create(job("j1"))
    assert kube_api.register_crd(GTJ_CRD)["metadata"]["name"] == "gantrainingjobs.ganops.io"  # re-apply is fine

    bad = copy.deepcopy(GTJ_CRD)
    bad["metadata"]["name"] = "wrong.ganops.io"
    with pytest.raises(KubeApiError) as invalid:
        kube_api.register_crd(bad)
    assert invalid.value.status == 422

    kube_api.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "gantrainingjobs.ganops.io")
    assert kube_api.http.get("/apis/ganops.io/v1alpha1").status_code == 404
    assert kube_api.http.get(f"/apis/ganops.io/v1alpha1/namespaces/{NS}/gantrainingjobs/j1").status_code == 404


def test_owner_references_are_garbage_collected_and_finalizers_hold(kube_api: KubeAPI) -> None:
    kube_api.register_crd(GTJ_CRD)
    owner = kube_api.create(job("j1"))
    reference = {
        "apiVersion": GTJ,
        "kind": "GanTrainingJob",
        "name": "j1",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    kube_api.create(configmap("child", ownerReferences=[reference]))
    kube_api.create(configmap("orphan"))

    held = kube_api.create(configmap("held", finalizers=["ganops.io/cleanup"]))
    deleting = kube_api.delete("v1", "ConfigMap", NS, "held")
    assert deleting is not None and deleting["metadata"]["deletionTimestamp"]
    assert kube_api.get("v1", "ConfigMap", NS, "held")["metadata"]["deletionTimestamp"]
    with pytest.raises(KubeApiError):  # no new finalizers on a dying object
        kube_api.patch("v1", "ConfigMap", NS, "held", {"metadata": {"finalizers": ["ganops.io/cleanup", "x"]}})
    kube_api.patch("v1", "ConfigMap", NS, "held", {"metadata": {"finalizers": None}})
    assert kube_api.get_or_none("v1", "ConfigMap", NS, "held") is None
    assert held

    kube_api.delete(GTJ, "GanTrainingJob", NS, "j1")
    assert kube_api.get_or_none("v1", "ConfigMap", NS, "child") is None
    assert kube_api.get_or_none("v1", "ConfigMap", NS, "orphan") is not None


def test_fault_injection_and_request_log(kube_api: KubeAPI) -> None:
    kube_api.inject_fault(method="POST", plural="configmaps", status=503, times=1)
    with pytest.raises(KubeApiError) as failed:
        kube_api.create(configmap("cm"))
    assert failed.value.status == 503
    kube_api.create(configmap("cm"))  # the fault is used up, nothing was stored by the failed one
    kube_api.inject_fault(Fault(method="GET", plural="configmaps", name="cm", status=500, times=None))
    with pytest.raises(KubeApiError):
        kube_api.get("v1", "ConfigMap", NS, "cm")
    kube_api.clear_faults()
    assert kube_api.get("v1", "ConfigMap", NS, "cm")
    assert len(kube_api.requests("POST", "configmaps")) == 2


def test_kubernetes_client_works_against_the_emulator(kube_api: KubeAPI) -> None:
    with kube_api.kubernetes_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespaced_config_map(NS, configmap("cm"))
        read = core.read_namespaced_config_map("cm", NS)
        assert read.metadata.uid and read.metadata.namespace == NS
        # A dict body goes as a strategic merge patch (emulated as a JSON merge patch: lists are replaced).
        core.patch_namespaced_config_map("cm", NS, {"data": {"a": "1"}})
        core.patch_namespaced_config_map("cm", NS, {"data": {"b": "2"}})
        assert core.read_namespaced_config_map("cm", NS).data == {"a": "1", "b": "2"}
        # Custom resources refuse strategic merge patches, as on a real API server.
        kube_api.register_crd(GTJ_CRD)
        kube_api.create(job("j1"))
        custom = kubernetes.client.CustomObjectsApi(client)
        with pytest.raises(kubernetes.client.ApiException) as strategic:
            custom.patch_namespaced_custom_object(
                "ganops.io",
                "v1alpha1",
                NS,
                "gantrainingjobs",
                "j1",
                {"spec": {"x": 1}},
                _content_type="application/strategic-merge-patch+json",
            )
        assert strategic.value.status == 415
        patched = custom.patch_namespaced_custom_object(
            "ganops.io", "v1alpha1", NS, "gantrainingjobs", "j1", {"spec": {"x": 1}}
        )
        assert patched["spec"]["x"] == 1 and patched["metadata"]["generation"] == 2
        names = [cm.metadata.name for cm in core.list_namespaced_config_map(NS).items]
        assert names == ["cm"]
    assert httpx.get(f"{kube_api.url}/version").json()["major"] == "1"


def test_schema_admission_defaults_and_validates_custom_resources() -> None:
    crd = copy.deepcopy(GTJ_CRD)
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-validations": [{"rule": "self.training.steps % 2 == 0", "message": "steps must be even"}],
                "properties": {
                    "model": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "training": {
                        "type": "object",
                        "default": {},
                        "properties": {"steps": {"type": "integer", "minimum": 1, "default": 1000}},
                    },
                },
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    with KubeAPI(admission=schema_admission) as kube:
        kube.register_crd(crd)
        bare = job("defaults")
        del bare["spec"]["training"]
        assert kube.create(bare)["spec"]["training"] == {"steps": 1000}
        for steps, problem in [(-2, "minimum"), (3, "steps must be even")]:
            with pytest.raises(KubeApiError) as rejected:
                kube.create(job(f"bad{steps}", steps=steps))
            assert rejected.value.status == 422 and problem in rejected.value.message
        with pytest.raises(KubeApiError):
            kube.patch(GTJ, "GanTrainingJob", NS, "defaults", {"spec": {"training": {"steps": 7}}})
        assert kube.get(GTJ, "gtj", NS, "defaults")["metadata"]["generation"] == 1


# ------------------------------------------------------------------------------------------------ kopf on top
def test_sample_kopf_operator_reconciles_over_http(kube_api: KubeAPI, kopf_runner: KopfRunnerFactory) -> None:
    kube_api.register_crd(GTJ_CRD)
    runner = kopf_runner(["tests.support.kube.sample_operator"])
    created = kube_api.create(job("j1"))

    child = kube_api.wait_for(lambda: kube_api.get_or_none("v1", "ConfigMap", NS, "j1-spec"))
    (owner_ref,) = child["metadata"]["ownerReferences"]
    assert owner_ref["uid"] == created["metadata"]["uid"]
    assert owner_ref["kind"] == "GanTrainingJob" and owner_ref["controller"] is True
    assert child["metadata"]["labels"] == {"ganops.io/job": "j1"}
    assert [cm["metadata"]["name"] for cm in kube_api.list("v1", "cm", NS, label_selector="ganops.io/job=j1")] == [
        "j1-spec"
    ]
    kube_api.wait_for(lambda: kube_api.get(GTJ, "gtj", NS, "j1").get("status", {}).get("phase") == "Pending")
    (event,) = kube_api.wait_for(lambda: kube_api.events(NS, involved_name="j1"), message="kopf posts k8s events")
    assert event.reason == "ChildCreated" and event.involved_kind == "GanTrainingJob" and event.type == "Normal"

    # A spec change bumps the generation; the update handler sees it.
    kube_api.patch(GTJ, "GanTrainingJob", NS, "j1", {"spec": {"training": {"steps": 500}}})
    kube_api.wait_for(lambda: kube_api.get(GTJ, "gtj", NS, "j1")["status"].get("observedGeneration") == 2)

    # A restarted operator finds its progress in the object and does not redo the creation.
    runner.restart()
    kube_api.create(job("j2"))
    kube_api.wait_for(lambda: kube_api.get_or_none("v1", "ConfigMap", NS, "j2-spec"))
    kube_api.wait_for(lambda: kube_api.get(GTJ, "gtj", NS, "j2").get("status", {}).get("phase") == "Pending")
    assert len(kube_api.requests("POST", "configmaps", include_watches=False)) == 2
    assert not runner.error_records, runner.messages()

    # Deleting the owner garbage-collects the child (owner references are honoured).
    kube_api.delete(GTJ, "GanTrainingJob", NS, "j1")
    kube_api.wait_for(lambda: kube_api.get_or_none("v1", "ConfigMap", NS, "j1-spec") is None)


@pytest.mark.slow  # two `kopf run` subprocess starts: 3-9 s depending on load
def test_killed_operator_process_resumes_without_duplicate_children(
    kube_api: KubeAPI, kopf_process: KopfProcessFactory
) -> None:
    kube_api.register_crd(GTJ_CRD)
    operator = kopf_process(["tests.support.kube.sample_operator"], env={"SAMPLE_OPERATOR_HANG_AFTER_CHILD": "1"})
    kube_api.create(job("j1"))
    kube_api.wait_for(lambda: kube_api.get_or_none("v1", "ConfigMap", NS, "j1-spec"))
    kube_api.wait_for(lambda: "hanging after the child was created" in operator.output)

    operator.restart(kill=True)  # SIGKILL mid-handler: no status, no kopf progress written yet
    kube_api.wait_for(lambda: kube_api.get(GTJ, "gtj", NS, "j1").get("status", {}).get("phase") == "Pending")

    assert len(kube_api.list("v1", "ConfigMap", NS, label_selector="ganops.io/job=j1")) == 1
    posts = kube_api.requests("POST", "configmaps")
    assert len(posts) == 2  # the handler ran again after the kill; its second create got 409 and moved on
