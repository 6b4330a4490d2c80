"""deploy/k8s (kustomize base, dev, prod and prod-split overlays) checked offline against the code.

No cluster, no network, and no kustomize needed: ``render()`` below builds an overlay with the
subset of kustomize the overlays use (resources, namespace, images, replicas, and patches:
strategic merge or JSON 6902, by kind and name or label selector), and refuses anything else.
Where ``kubectl`` (or ``kustomize``) is installed, a test renders every overlay with it too and
checks both renderings are the same document set, so the two cannot drift apart.

Every rendered manifest is then validated:

- Kubernetes kinds against the API schemas bundled by kubernetes-validate (strict: unknown
  fields fail), KEDA ScaledObjects against KEDA's CRD schema vendored in
  deploy/k8s/crds/ (made strict the same way: the API server would silently prune them);
- every environment variable and ConfigMap/Secret key a container gets is a real setting of
  that container's service (names derived from the pydantic-settings classes, as
  tests/deploy/test_compose.py does), and its value validates (the settings class is built);
- commands are importable modules, probes hit /healthz and /readyz on the service's real
  port, Services and PodDisruptionBudgets select the right pods, Prometheus annotations name
  the metrics port;
- KEDA triggers name the real consumer groups and topics (shared/topics.py, default prefix),
  maxReplicaCount never exceeds the partitions, Kafka security matches the services';
- secrets only come from Secrets, and committed Secrets hold placeholders only;
- each service's consumer lanes (HERALD_LANES) run in exactly one of its Deployments, and where a
  service is split (prod-split) transactional and campaign work stay apart, with PriorityClasses,
  Guaranteed resources and HERALD_NICE as docs/kubernetes.md describes.

Each check is a function returning a list of problems; ``test_each_check_can_fail`` breaks
the rendered manifests in one way per check and shows the check reports it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from shared import topics as topic_table
from shared.service import MAIN_LANE
from tests.deploy.test_compose import SETTINGS, env_names, reads

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
    "prod-split": K8S / "overlays" / "prod-split",  # prod, with the transactional and campaign lanes apart
}
#: Production overlays: a released image, no Secret manifests, no API docs.
PRODUCTION = ("prod", "prod-split")
KEDA_SCHEMA = K8S / "crds" / "keda-scaledobject.schema.json"
DOCS = REPO / "docs" / "kubernetes.md"
K8S_VERSION = "1.31"

#: Secrets that no overlay renders because something else creates them (docs/kubernetes.md).
EXTERNAL_SECRETS = {"herald-kafka-ca": {"ca.crt"}}  # Strimzi's cluster CA, copied into the namespace
#: Marker every committed Secret value carries, so that no real credential is ever committed.
PLACEHOLDER = "REPLACE_ME"
#: The consumer services KEDA scales on lag, and the one the HPA scales on CPU.
LAG_SCALED = ("scheduler", "dispatcher", "reports")
CPU_SCALED = ("ingest",)
HERALD_SERVICES = ("ingest", "scheduler", "dispatcher", "reports")
API_SERVICES = ("ingest", "reports")  # the others serve only their ops port (HERALD_OPS_PORT)
#: PostgreSQL connections the services may open at most (docs/kubernetes.md: size the database
#: or put a pooler in front).
PG_CONNECTION_BUDGET = 200
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}


# ============================================================================================
# A kustomize subset, in Python


class KustomizeError(Exception):
    pass


SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
#: Strategic merge keys of the lists the overlays patch (k8s.io/api patchMergeKey); any other
#: list is replaced by the patch's, as kustomize does.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "topologySpreadConstraints": "topologyKey",
    "imagePullSecrets": "name",
}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def res_id(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def build(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build directory`` for the features in SUPPORTED_FIELDS."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: {sorted(unknown)} not supported by the test's renderer: teach it first")
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        docs.extend(build(path) if path.is_dir() else load_yaml_docs(path))
    ids = [res_id(d) for d in docs]
    duplicated = {i for i in ids if ids.count(i) > 1}
    if duplicated:
        raise KustomizeError(f"{directory}: resources defined twice: {sorted(duplicated)}")
    # kustomize's builtin transformer order: patches, namespace, replicas, images
    for patch in k.get("patches", []):
        docs = apply_patch(docs, patch, directory)
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    for rep in k.get("replicas", []):
        targets = [d for d in docs if d["kind"] in SCALABLE and d["metadata"]["name"] == rep["name"]]
        if not targets:
            raise KustomizeError(f"replicas: no workload {rep['name']}")
        for doc in targets:
            doc.setdefault("spec", {})["replicas"] = rep["count"]
    for image in k.get("images", []):
        for doc in docs:
            for container in pod_containers(doc):
                set_image(container, image)
    return docs


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def set_image(container: dict[str, Any], image: dict[str, Any]) -> None:
    current = container.get("image", "")
    name = re.split(r"[@]", current)[0]
    name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    if name != image["name"]:
        return
    new = image.get("newName", name)
    if "digest" in image:
        container["image"] = f"{new}@{image['digest']}"
    elif "newTag" in image:
        container["image"] = f"{new}:{image['newTag']}"
    else:
        container["image"] = new + current[len(name) :]


def apply_patch(docs: list[dict[str, Any]], spec: dict[str, Any], directory: Path) -> list[dict[str, Any]]:
    unknown = set(spec) - {"path", "patch", "target"}
    if unknown:
        raise KustomizeError(f"patch fields {sorted(unknown)} not supported")
    text = (directory / spec["path"]).read_text() if "path" in spec else spec["patch"]
    parsed = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(parsed) != 1:
        raise KustomizeError("one patch per file or entry (kustomize 5 crashes on several $patch: delete)")
    body = parsed[0]
    target = spec.get("target")
    if isinstance(body, list):  # JSON 6902
        if not target:
            raise KustomizeError("a JSON 6902 patch needs a target")
        matched = [d for d in docs if matches(d, target)]
        if not matched:
            raise KustomizeError(f"patch target {target} matches nothing")
        for doc in matched:
            json6902(doc, body)
        return docs
    # strategic merge
    selector = target or {"kind": body["kind"], "name": body["metadata"]["name"]}
    matched = [d for d in docs if matches(d, selector)]
    if not matched:
        raise KustomizeError(f"patch for {selector} matches nothing")
    if body.get("$patch") == "delete":
        return [d for d in docs if not any(d is m for m in matched)]
    for doc in matched:
        patch = copy.deepcopy(body)
        if target:
            patch.setdefault("metadata", {})["name"] = doc["metadata"]["name"]
        merged = strategic_merge(doc, patch)
        doc.clear()
        doc.update(merged)
    return docs


def matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    unknown = set(target) - {"kind", "name", "labelSelector", "group", "version"}
    if unknown:
        raise KustomizeError(f"patch target fields {sorted(unknown)} not supported")
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and not re.fullmatch(target["name"], doc["metadata"]["name"]):
        return False
    group, _, version = doc["apiVersion"].rpartition("/")
    if "group" in target and target["group"] != group:
        return False
    if "version" in target and target["version"] != version:
        return False
    if "labelSelector" in target:
        labels = doc["metadata"].get("labels") or {}
        for term in target["labelSelector"].split(","):
            key, sep, value = term.partition("=")
            if not sep or "!" in key:
                raise KustomizeError(f"only key=value label selectors are supported: {term}")
            if labels.get(key.strip()) != value.strip():
                return False
    return True


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(patch, dict) and isinstance(base, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(base, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        if not all(isinstance(x, dict) and mk in x for x in [*base, *patch]):
            return copy.deepcopy(patch)
        by_key = {item[mk]: item for item in base}
        # apimachinery's order: the patch's items (merged with the base's), then the rest
        out = [strategic_merge(by_key[item[mk]], item) if item[mk] in by_key else copy.deepcopy(item) for item in patch]
        patched = {item[mk] for item in patch}
        out += [copy.deepcopy(item) for item in base if item[mk] not in patched]
        return out
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if kind not in {"add", "replace", "remove"}:
            raise KustomizeError(f"JSON 6902 op {kind} not supported")
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                del node[index]
        else:
            if kind in {"replace", "remove"} and last not in node:
                raise KustomizeError(f"{op['path']}: nothing to {kind}")
            if kind == "remove":
                del node[last]
            else:
                node[last] = copy.deepcopy(op["value"])


@functools.cache
def _render(name: str) -> str:
    return json.dumps(build(OVERLAYS[name]))


def render(name: str) -> list[dict[str, Any]]:
    """The overlay's manifests (a fresh copy each call)."""
    return json.loads(_render(name))


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


# ============================================================================================
# The rendered manifests, and what each container runs with


@dataclass
class Render:
    name: str
    docs: list[dict[str, Any]]
    #: Secrets a container may reference: the rendered ones, else the base's (prod leaves its
    #: Secrets to the secret manager, which creates them with the base's names and keys).
    contract: dict[str, dict[str, str]] = field(default_factory=dict)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((d for d in self.of(kind) if d["metadata"]["name"] == name), None)

    def secrets(self) -> dict[str, dict[str, str]]:
        out = dict(self.contract)
        for s in self.of("Secret"):
            out[s["metadata"]["name"]] = secret_data(s)
        return out

    def workloads(self) -> list[Workload]:
        out = []
        for doc in self.docs:
            if doc["kind"] in ("Deployment", "Job"):
                pod = doc["spec"]["template"]["spec"]
                for container in pod["containers"]:
                    out.append(Workload(doc, pod, container, service_of(container)))
        return out

    def workload(self, service: str) -> Workload | None:
        return next((w for w in self.workloads() if w.service == service), None)


@dataclass
class Workload:
    doc: dict[str, Any]
    pod: dict[str, Any]
    container: dict[str, Any]
    service: str | None  # ingest, scheduler, dispatcher, reports, simulator, migrate

    @property
    def name(self) -> str:
        return f"{self.doc['kind']}/{self.doc['metadata']['name']}"


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    import base64

    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


def service_of(container: dict[str, Any]) -> str | None:
    command = container.get("command") or []
    if command[:2] != ["python", "-m"] or len(command) < 3:
        return None
    if command[2] == "herald_tools.cli" and command[3:4] == ["migrate"]:
        return "migrate"
    found = re.fullmatch(r"services\.(\w+)", command[2])
    return found.group(1) if found else None


def make_render(name: str, docs: list[dict[str, Any]] | None = None) -> Render:
    docs = render(name) if docs is None else docs
    r = Render(name, docs)
    if name != "base":
        r.contract = {s["metadata"]["name"]: secret_data(s) for s in render("base") if s["kind"] == "Secret"}
    for secret, keys in EXTERNAL_SECRETS.items():
        r.contract.setdefault(secret, {k: f"<{secret}/{k}>" for k in keys})
    return r


class EnvError(Exception):
    pass


def container_env(r: Render, w: Workload) -> dict[str, tuple[str, str]]:
    """Variable -> (value, source) as the kubelet builds it (env wins over envFrom)."""
    out: dict[str, tuple[str, str]] = {}
    secrets = r.secrets()
    for source in w.container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            cm = r.get("ConfigMap", ref)
            if cm is None:
                raise EnvError(f"{w.name}: envFrom ConfigMap {ref} is not in the render")
            for k, v in (cm.get("data") or {}).items():
                out[prefix + k] = (str(v), f"ConfigMap/{ref}")
        elif "secretRef" in source:
            ref = source["secretRef"]["name"]
            if ref not in secrets:
                raise EnvError(f"{w.name}: envFrom Secret {ref} is neither rendered nor in the base's contract")
            for k, v in secrets[ref].items():
                out[prefix + k] = (v, f"Secret/{ref}")
    for var in w.container.get("env", []):
        if "value" in var:
            out[var["name"]] = (str(var["value"]), "literal")
            continue
        ref = var.get("valueFrom", {})
        if "secretKeyRef" in ref:
            name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            if key not in secrets.get(name, {}):
                raise EnvError(f"{w.name}: {var['name']} from Secret {name} key {key}, which does not exist")
            out[var["name"]] = (secrets[name][key], f"Secret/{name}")
        elif "configMapKeyRef" in ref:
            name, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            cm = r.get("ConfigMap", name)
            if cm is None or key not in (cm.get("data") or {}):
                raise EnvError(f"{w.name}: {var['name']} from ConfigMap {name} key {key}, which does not exist")
            out[var["name"]] = (str(cm["data"][key]), f"ConfigMap/{name}")
        elif "fieldRef" in ref:
            out[var["name"]] = (f"{w.doc['metadata']['name']}-5d8f7c-x2x9q", "fieldRef")
        else:
            raise EnvError(f"{w.name}: {var['name']}: unsupported valueFrom {ref}")
    return out


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ with exactly ``env`` for the settings' variables (test sessions set some)."""
    saved = dict(os.environ)
    known = set().union(*(env_names(cls) for cls in SETTINGS.values()))
    try:
        for name in list(os.environ):
            if name.upper().startswith("HERALD_") or name.upper() in known:
                del os.environ[name]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_of(r: Render, w: Workload) -> Any:
    """The settings object the container builds at start-up (raises when a value is invalid)."""
    env = {k: v for k, (v, _) in container_env(r, w).items()}
    with environ(env):
        return SETTINGS[w.service]()


def herald_workloads(r: Render) -> list[Workload]:
    return [w for w in r.workloads() if w.service in HERALD_SERVICES]


# ============================================================================================
# Checks: each returns a list of problems


def check_schemas(r: Render) -> list[str]:
    problems = []
    keda = strict_schema(json.loads(KEDA_SCHEMA.read_text()))
    for doc in r.docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == "keda.sh/v1alpha1":
            if doc["kind"] == "ScaledObject":
                for error in jsonschema.Draft7Validator(keda).iter_errors(doc):
                    problems.append(f"{what}: {'.'.join(map(str, error.path))}: {error.message}")
            elif doc["kind"] == "TriggerAuthentication":
                problems += trigger_authentication_shape(doc)
            else:
                problems.append(f"{what}: no schema for this KEDA kind: vendor it first")
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{what}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{what}: {error.message}")
    return problems


def strict_schema(node: Any) -> Any:
    """The CRD schema as the API server applies it: fields it does not know are pruned, so a
    misspelt one silently does nothing. Here it fails instead (like kubectl --validate=strict)."""
    if isinstance(node, dict):
        out = {k: strict_schema(v) for k, v in node.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict_schema(x) for x in node]
    return node


#: The kafka scaler's authentication parameters (KEDA docs, apache-kafka scaler).
KAFKA_AUTH_PARAMS = {"sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}
#: HERALD_KAFKA_SASL_MECHANISM -> the kafka scaler's ``sasl`` value.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def trigger_authentication_shape(doc: dict[str, Any]) -> list[str]:
    """No CRD schema is vendored for TriggerAuthentication: the fields Herald uses, by hand."""
    what = f"TriggerAuthentication/{doc['metadata']['name']}"
    spec = doc.get("spec") or {}
    problems = [f"{what}: spec.{k} is not used by Herald's checks" for k in set(spec) - {"env", "secretTargetRef"}]
    for item in spec.get("env", []):
        if set(item) - {"parameter", "name", "containerName"} or not {"parameter", "name"} <= set(item):
            problems.append(f"{what}: env item {item} needs parameter and name only")
    for item in spec.get("secretTargetRef", []):
        if set(item) != {"parameter", "name", "key"}:
            problems.append(f"{what}: secretTargetRef item {item} needs parameter, name and key")
    for item in [*spec.get("env", []), *spec.get("secretTargetRef", [])]:
        if item.get("parameter") not in KAFKA_AUTH_PARAMS:
            problems.append(f"{what}: {item.get('parameter')!r} is not a kafka scaler parameter")
    return problems


def check_commands(r: Render) -> list[str]:
    """`python -m services.<name>` (importable, with a __main__) or `python -m herald_tools.cli migrate`."""
    problems = []
    for w in r.workloads():
        command = w.container.get("command") or []
        if command[:2] != ["python", "-m"] or len(command) < 3:
            problems.append(f"{w.name}: command {command} is not `python -m <module> ...`")
            continue
        module = command[2]
        spec = importlib.util.find_spec(module) if all(module.split(".")) else None
        if spec is None:
            problems.append(f"{w.name}: no module {module}")
            continue
        if spec.submodule_search_locations is not None and importlib.util.find_spec(f"{module}.__main__") is None:
            problems.append(f"{w.name}: {module} has no __main__")
        if w.service not in SETTINGS:
            problems.append(f"{w.name}: {module} is not a Herald service (services.<name>) nor `herald_tools.cli migrate`")
            continue
        if w.service == "migrate":
            problems += migrate_command_problems(w, command[3:])
            continue
        if len(command) != 3:
            problems.append(f"{w.name}: {command} passes arguments the service does not read")
        expected = f"herald-{w.service}"
        name = w.doc["metadata"]["name"]
        if (w.doc["kind"], w.container["name"]) != ("Deployment", w.service) or name not in (expected, f"{expected}-bulk"):
            problems.append(f"{w.name}: runs {module}: name it Deployment/{expected}, container {w.service}")
        labels = w.doc["spec"]["template"]["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/component") != w.service:
            problems.append(f"{w.name}: pod label app.kubernetes.io/component should be {w.service}")
    return problems


def migrate_command_problems(w: Workload, args: list[str]) -> list[str]:
    """`herald <args>` parses and runs the migration (stubbed: no database here)."""
    from unittest import mock

    from herald_tools.cli import main

    calls = []

    async def fake_migrate(topics: bool) -> dict[str, list[str]]:
        calls.append(topics)
        return {}

    problems = []
    with mock.patch("herald_tools.cli._migrate", fake_migrate), contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
        try:
            code = main(args)
        except SystemExit as exit_:
            code = exit_.code
    if code not in (0, None) or calls != [True]:
        problems.append(f"{w.name}: `herald {' '.join(args)}` is not a valid command line that migrates and creates topics")
    if w.doc["kind"] != "Job":
        problems.append(f"{w.name}: migrations run once per release, as a Job")
    return problems


def check_env_names(r: Render) -> list[str]:
    """Every variable a container gets (from ConfigMaps, Secrets, env) is a setting of its service."""
    problems = []
    used: set[str] = set()
    for w in r.workloads():
        if w.service not in SETTINGS:
            continue
        try:
            env = container_env(r, w)
        except EnvError as error:
            problems.append(str(error))
            continue
        cls = SETTINGS[w.service]
        for name, (_, source) in sorted(env.items()):
            if not reads(cls, name):
                problems.append(f"{w.name}: {name} (from {source}) is not a setting of {cls.__module__}.{cls.__name__}")
        for source in w.container.get("envFrom", []):
            used.add(source.get("configMapRef", {}).get("name", ""))
    for cm in r.of("ConfigMap"):
        data = cm.get("data") or {}
        if any(k.startswith("HERALD_") for k in data) and cm["metadata"]["name"] not in used:
            problems.append(f"ConfigMap/{cm['metadata']['name']}: no container loads it")
    return problems


def check_env_values(r: Render) -> list[str]:
    """Each container's settings class builds from its environment, and each variable lands."""
    problems = []
    for w in r.workloads():
        if w.service not in SETTINGS:
            continue
        try:
            env = container_env(r, w)
            settings = settings_of(r, w)
        except EnvError as error:
            problems.append(str(error))
            continue
        except ValueError as error:  # pydantic.ValidationError (a ValueError), or a model validator's ValueError
            problems.append(f"{w.name}: its settings do not validate: {error}")
            continue
        names = env_names(SETTINGS[w.service])
        for var, (raw, _) in env.items():
            field_name = names.get(var.upper())
            if field_name is None:
                continue  # a nested NAME__KEY variable; check_env_names reports unknown ones
            value = getattr(settings, field_name)
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, (str, int, float, bool)) and str(value).lower() != raw.lower():
                try:
                    same = float(value) == float(raw)
                except (TypeError, ValueError):
                    same = False
                if not same:
                    problems.append(f"{w.name}: {var}={raw!r} gave {field_name}={value!r}")
    return problems


def _holds_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_holds_secret(f.annotation) for f in annotation.model_fields.values())
    return any(_holds_secret(a) for a in typing.get_args(annotation) if not isinstance(a, (str, int, types.NoneType)))


def check_secrets_come_from_secrets(r: Render) -> list[str]:
    """A setting that holds a secret (SecretStr anywhere in its type) never comes from a
    ConfigMap or a literal; and every committed Secret value is a placeholder."""
    problems = []
    for w in r.workloads():
        if w.service not in SETTINGS:
            continue
        cls = SETTINGS[w.service]
        names = env_names(cls)
        try:
            env = container_env(r, w)
        except EnvError as error:
            problems.append(str(error))
            continue
        for var, (_, source) in env.items():
            field_name = names.get(var.upper())
            if field_name and _holds_secret(cls.model_fields[field_name].annotation) and not source.startswith("Secret/"):
                problems.append(f"{w.name}: {var} holds a secret but comes from {source}")
        for source in w.container.get("envFrom", []):
            cm = r.get("ConfigMap", source.get("configMapRef", {}).get("name", ""))
            for key in (cm or {}).get("data") or {}:
                field_name = names.get(key.upper())
                if field_name and _holds_secret(cls.model_fields[field_name].annotation):
                    problems.append(f"ConfigMap/{cm['metadata']['name']}: {key} holds a secret: put it in a Secret")
    for secret in r.of("Secret"):
        for key, value in secret_data(secret).items():
            if PLACEHOLDER not in value:
                problems.append(f"Secret/{secret['metadata']['name']}: {key} is not a {PLACEHOLDER} placeholder")
    if r.name in PRODUCTION and r.of("Secret"):
        problems.append(f"{r.name} renders Secrets {[s['metadata']['name'] for s in r.of('Secret')]}: the secret manager owns them")
    return problems


def _port(container: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def _exec_url(probe: dict[str, Any]) -> tuple[str, int, str] | None:
    command = " ".join(probe.get("exec", {}).get("command", []))
    found = re.search(r"https?://([\w.\-]+):(\d+)(/\w*)", command)
    return (found.group(1), int(found.group(2)), found.group(3)) if found else None


def check_probes(r: Render) -> list[str]:
    problems = []
    for w in r.workloads():
        c = w.container
        if w.service in HERALD_SERVICES:
            try:
                settings = settings_of(r, w)
            except (EnvError, ValueError) as error:  # a missing reference, or settings that do not validate
                problems.append(f"{w.name}: {error}")
                continue
            port = settings.ops_port  # health and metrics: never on the API port
            want = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
            for kind, path in want.items():
                probe = c.get(kind)
                if probe is None:
                    if kind != "startupProbe":
                        problems.append(f"{w.name}: no {kind}")
                    continue
                get = probe.get("httpGet")
                if not get:
                    problems.append(f"{w.name}: {kind} should be an HTTP GET of {path}")
                    continue
                if get.get("path") != path:
                    problems.append(f"{w.name}: {kind} GETs {get.get('path')}, not {path}")
                if _port(c, get.get("port")) != port:
                    problems.append(f"{w.name}: {kind} port {get.get('port')} is not HERALD_OPS_PORT {port}")
            ports = [settings.http_port, port] if w.service in API_SERVICES else [port]
            if [p["containerPort"] for p in c.get("ports", [])] != ports:
                what = "HERALD_HTTP_PORT and HERALD_OPS_PORT" if w.service in API_SERVICES else "HERALD_OPS_PORT"
                problems.append(f"{w.name}: containerPorts should be {what} {ports}")
        elif w.service == "simulator":
            sim = settings_of(r, w)
            ready = (c.get("readinessProbe") or {}).get("httpGet") or {}
            if ready.get("path") != "/healthz" or _port(c, ready.get("port")) != sim.port:
                problems.append(f"{w.name}: readiness should GET /healthz on the API port {sim.port}")
            live = _exec_url(c.get("livenessProbe") or {})
            if live is None or live[1:] != (sim.control_port, "/healthz") or live[0] != sim.control_host:
                problems.append(
                    f"{w.name}: liveness should GET /healthz on the control port {sim.control_host}:{sim.control_port} "
                    "from inside the container (it stays up in refuse mode), got {live}"
                )
    return problems


def check_graceful_shutdown(r: Render) -> list[str]:
    """The kubelet waits longer than the service's own shutdown bound (plus any preStop sleep)."""
    problems = []
    for w in herald_workloads(r):
        settings = settings_of(r, w)
        pre_stop = (w.container.get("lifecycle") or {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        grace = w.pod.get("terminationGracePeriodSeconds", 30)
        if grace < sleep + settings.shutdown_timeout_s + 5:
            problems.append(
                f"{w.name}: terminationGracePeriodSeconds {grace} < preStop {sleep} s + "
                f"HERALD_SHUTDOWN_TIMEOUT_S {settings.shutdown_timeout_s} s + 5 s"
            )
    return problems


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_services_and_pdbs(r: Render) -> list[str]:
    problems = []
    deployments = r.of("Deployment")
    for svc in r.of("Service"):
        name = svc["metadata"]["name"]
        selected = [d for d in deployments if _selects(svc["spec"].get("selector", {}), d["spec"]["template"]["metadata"]["labels"])]
        if len(selected) != 1:
            problems.append(f"Service/{name} selects {len(selected)} Deployments")
            continue
        container = selected[0]["spec"]["template"]["spec"]["containers"][0]
        for port in svc["spec"]["ports"]:
            if _port(container, port.get("targetPort", port["port"])) is None:
                problems.append(f"Service/{name}: targetPort {port.get('targetPort')} is not a port of {selected[0]['metadata']['name']}")
    for d in deployments:
        labels = d["spec"]["template"]["metadata"]["labels"]
        if not _selects(d["spec"]["selector"]["matchLabels"], labels):
            problems.append(f"Deployment/{d['metadata']['name']}: its selector does not select its own pods")
        component = labels.get("app.kubernetes.io/component")
        has_api = component in API_SERVICES or component == "simulator"
        if has_api and not any(_selects(s["spec"].get("selector", {}), labels) for s in r.of("Service")):
            problems.append(f"Deployment/{d['metadata']['name']}: no Service")
        pdbs = [p for p in r.of("PodDisruptionBudget") if _selects(p["spec"]["selector"].get("matchLabels", {}), labels)]
        if len(pdbs) != 1:
            problems.append(f"Deployment/{d['metadata']['name']}: {len(pdbs)} PodDisruptionBudgets select it, not 1")
            continue
        spec = pdbs[0]["spec"]
        # never block a drain: at least one pod may always go
        if "minAvailable" in spec or int(str(spec.get("maxUnavailable", 0)).rstrip("%")) < 1:
            problems.append(f"PodDisruptionBudget/{pdbs[0]['metadata']['name']}: use maxUnavailable >= 1 (one replica must be evictable)")
    for p in r.of("PodDisruptionBudget"):
        if not any(_selects(p["spec"]["selector"].get("matchLabels", {}), d["spec"]["template"]["metadata"]["labels"]) for d in deployments):
            problems.append(f"PodDisruptionBudget/{p['metadata']['name']} selects no Deployment")
    for ing in r.of("Ingress"):
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                svc = r.get("Service", backend["name"])
                port = backend.get("port", {})
                if svc is None:
                    problems.append(f"Ingress/{ing['metadata']['name']}: {path['path']} goes to Service {backend['name']}, which is not in the render")
                elif not any(p.get("name") == port.get("name") if "name" in port else p["port"] == port.get("number") for p in svc["spec"]["ports"]):
                    problems.append(f"Ingress/{ing['metadata']['name']}: {path['path']} goes to a port {port} that Service {backend['name']} does not have")
    return problems


def ingress_service(r: Render, host: str, path: str) -> str | None:
    """The Service an Ingress of the render sends ``host`` + ``path`` to (networking.k8s.io/v1:
    an Exact match first, then the longest Prefix match, element by element)."""
    best: tuple[int, str] | None = None
    for ing in r.of("Ingress"):
        for rule in ing["spec"].get("rules", []):
            if rule.get("host", host) != host:
                continue
            for p in rule.get("http", {}).get("paths", []):
                target = p["backend"]["service"]["name"]
                if p["pathType"] == "Exact" and p["path"] == path:
                    return target
                parts = [x for x in p["path"].split("/") if x]
                if p["pathType"] == "Prefix" and [x for x in path.split("/") if x][: len(parts)] == parts:
                    if best is None or len(parts) > best[0]:
                        best = (len(parts), target)
    return best[1] if best else None


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?$")
_MEM_UNITS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}


def cpu(q: Any) -> float:
    found = _CPU.match(str(q))
    if not found:
        raise ValueError(f"cpu quantity {q!r}")
    return float(found.group(1)) / (1000 if found.group(2) else 1)


def mem_mi(q: Any) -> float:
    found = _MEM.match(str(q))
    if not found:
        raise ValueError(f"memory quantity {q!r}")
    return float(found.group(1)) * _MEM_UNITS[found.group(2)] / 1024**2


def check_resources_and_security(r: Render) -> list[str]:
    """Requests and limits sized for one Python process; the restricted Pod Security Standard."""
    problems = []
    for w in r.workloads():
        res = w.container.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        try:
            if {"cpu", "memory"} - set(req) or {"cpu", "memory"} - set(lim):
                problems.append(f"{w.name}: needs cpu and memory requests and limits")
            else:
                if not (0.05 <= cpu(req["cpu"]) <= cpu(lim["cpu"]) <= 2):
                    problems.append(f"{w.name}: cpu request {req['cpu']} / limit {lim['cpu']} outside 50m <= request <= limit <= 2")
                if not (128 <= mem_mi(req["memory"]) <= mem_mi(lim["memory"]) <= 512):
                    problems.append(f"{w.name}: memory {req['memory']} / {lim['memory']} outside 128Mi <= request <= limit <= 512Mi")
        except ValueError as error:
            problems.append(f"{w.name}: {error}")
        pod_sc, sc = w.pod.get("securityContext") or {}, w.container.get("securityContext") or {}
        if pod_sc.get("runAsNonRoot") is not True or pod_sc.get("runAsUser", 0) == 0:
            problems.append(f"{w.name}: must run as non-root (uid 10001, the image's user)")
        if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{w.name}: seccompProfile RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False or (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{w.name}: allowPrivilegeEscalation false and capabilities drop ALL")
        if w.pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{w.name}: Herald needs no API token: automountServiceAccountToken false")
    ns = r.of("Namespace")
    if [n["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") for n in ns] != ["restricted"]:
        problems.append("the herald Namespace should enforce the restricted Pod Security Standard")
    namespace = ns[0]["metadata"]["name"] if ns else None
    for doc in r.docs:
        if doc["kind"] not in CLUSTER_SCOPED and (namespace is None or doc["metadata"].get("namespace") != namespace):
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: not in the herald namespace")
    return problems


def check_images(r: Render) -> list[str]:
    images = {w.container.get("image") for w in r.workloads()}
    problems = []
    if len(images) != 1:
        problems.append(f"one image for every Herald process, got {sorted(map(str, images))}")
    for image in images:
        tag = str(image).rsplit(":", 1)[-1] if ":" in str(image).rsplit("/", 1)[-1] else "latest"
        if r.name in PRODUCTION and ("/" not in str(image) or tag in {"latest", "dev"}):
            problems.append(f"{r.name} runs {image}: a registry image with a release tag")
    return problems


def check_ops_surfaces(r: Render) -> list[str]:
    """/metrics (every tenant's volumes and revenue), health and the API docs stay off the public
    surface: no Service reaches a service's ops port, and production serves no API docs."""
    problems = []
    for w in herald_workloads(r):
        settings = settings_of(r, w)
        labels = w.doc["spec"]["template"]["metadata"].get("labels", {})
        for svc in r.of("Service"):
            if not _selects(svc["spec"].get("selector", {}), labels):
                continue
            for port in svc["spec"]["ports"]:
                if _port(w.container, port.get("targetPort", port["port"])) == settings.ops_port:
                    problems.append(f"Service/{svc['metadata']['name']}: exposes the ops port {settings.ops_port} of "
                                    f"{w.name}; probes and Prometheus reach it on the pod")
        if r.name in PRODUCTION and settings.api_docs:
            problems.append(f"{w.name}: HERALD_API_DOCS is on in production (/docs and /openapi.json map the API for anyone)")
    return problems


def check_prometheus(r: Render) -> list[str]:
    problems = []
    for w in r.workloads():
        if w.doc["kind"] != "Deployment":
            continue
        notes = w.doc["spec"]["template"]["metadata"].get("annotations") or {}
        settings = settings_of(r, w)
        port = settings.port if w.service == "simulator" else settings.ops_port
        want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
        for key, value in want.items():
            if notes.get(key) != value:
                problems.append(f"{w.name}: annotation {key} should be {value!r}, got {notes.get(key)!r}")
    cm = r.get("ConfigMap", "herald-prometheus-scrape")
    if cm is None:
        return [*problems, "no herald-prometheus-scrape ConfigMap"]
    config = yaml.safe_load(cm["data"]["herald-scrape.yml"])
    for job in config["scrape_configs"]:
        sd = job.get("kubernetes_sd_configs") or [{}]
        namespaces = {ns for s in sd for ns in s.get("namespaces", {}).get("names", [])}
        if [s.get("role") for s in sd] != ["pod"] or namespaces != {n["metadata"]["name"] for n in r.of("Namespace")}:
            problems.append(f"scrape job {job['job_name']}: pod discovery in the herald namespace")
        keep = [rc for rc in job.get("relabel_configs", []) if rc.get("action") == "keep"]
        if not any("__meta_kubernetes_pod_annotation_prometheus_io_scrape" in rc.get("source_labels", []) for rc in keep):
            problems.append(f"scrape job {job['job_name']}: must keep only pods annotated prometheus.io/scrape")
        sources = {s for rc in job.get("relabel_configs", []) for s in rc.get("source_labels", [])}
        for needed in ("__meta_kubernetes_pod_annotation_prometheus_io_port", "__meta_kubernetes_pod_annotation_prometheus_io_path"):
            if needed not in sources:
                problems.append(f"scrape job {job['job_name']}: does not use {needed}")
    return problems


def check_cross_service(r: Render) -> list[str]:
    """Shared Kafka, database and topics; the simulator, dispatcher and ingest agree."""
    problems = []
    every = [(w.service, settings_of(r, w)) for w in r.workloads() if w.service in SETTINGS]
    built = dict(every)  # one of each service (a split service's Deployments share its configuration)
    herald = [s for name, s in every if name != "simulator"]
    for attr in ("kafka_bootstrap", "kafka_security_protocol", "topic_prefix", "topic_partitions"):
        if len({getattr(s, attr) for s in herald}) != 1:
            problems.append(f"every Herald process must share {attr}: {sorted({str(getattr(s, attr)) for s in herald})}")
    if len({s.database_url.get_secret_value() for s in herald}) != 1:
        problems.append("every Herald process must share HERALD_DATABASE_URL")
    services = {s["metadata"]["name"]: s for s in r.of("Service")}

    def target(url: str) -> str | None:
        """The service a URL reaches in this namespace, by Service name and port."""
        parts = urlsplit(url)
        host = (parts.hostname or "").split(".")[0]
        svc = services.get(host)
        if svc is None:
            return None
        for port in svc["spec"]["ports"]:
            if port["port"] == parts.port:
                for w in r.workloads():
                    labels = w.doc["spec"]["template"]["metadata"].get("labels", {})
                    if w.doc["kind"] == "Deployment" and _selects(svc["spec"]["selector"], labels):
                        if _port(w.container, port.get("targetPort", port["port"])) is not None:
                            return w.service
        return None

    scheduler = built.get("scheduler")
    if built.get("ingest") is not None and scheduler is not None:
        keys = [json.dumps({v: k.get_secret_value() for v, k in s.erasure_keys.items()}, sort_keys=True)
                for name, s in every if name in ("ingest", "scheduler")]
        if len(set(keys)) != 1 or keys[0] == "{}":
            problems.append("ingest and scheduler need the same HERALD_ERASURE_KEYS (docs/data-map.md)")
    sim, dispatcher, ingest = built.get("simulator"), built.get("dispatcher"), built.get("ingest")
    if sim is not None and dispatcher is not None and ingest is not None:
        if target(sim.receipt_url) != "ingest":
            problems.append(f"simulator receipts go to {sim.receipt_url}: not ingest's Service and port")
        gateway = urlsplit(sim.receipt_url).path.rsplit("/", 1)[-1]
        for secret in (s.receipt_secrets.get(gateway) for name, s in every if name == "ingest"):
            if secret is None or secret.get_secret_value() != sim.receipt_secret.get_secret_value():
                problems.append(f"ingest's HERALD_RECEIPT_SECRETS[{gateway}] differs from the simulator's receipt secret")
        for gw in dispatcher.gateways:
            if gw.kind == "herald-http" and (urlsplit(gw.url).hostname or "").startswith("herald-"):
                if target(gw.url) != "simulator":
                    problems.append(f"gateway {gw.name}: {gw.url} does not reach the simulator's Service")
                if gw.api_token.get_secret_value() != sim.api_token.get_secret_value():
                    problems.append(f"gateway {gw.name}: api_token differs from the simulator's")
    for w in herald_workloads(r):
        if (w.container.get("lifecycle") or {}).get("preStop") is None and any(
            _selects(s["spec"]["selector"], w.doc["spec"]["template"]["metadata"]["labels"]) for s in services.values()
        ) and w.service in ("ingest", "reports"):
            problems.append(f"{w.name}: serves an API: give it a preStop sleep so the Service drops it before SIGTERM")
    return problems


# --- autoscaling ----------------------------------------------------------------------------


def consumer_offset_reset() -> str:
    """auto_offset_reset of Herald's BatchConsumer (shared/kafka.py)."""
    found = re.findall(r'auto_offset_reset="(\w+)"', (REPO / "shared" / "kafka.py").read_text())
    assert len(set(found)) == 1, found
    return found[0]


def consumed_by_lane(service: str, settings: Any) -> set[tuple[str, str, str]]:
    """(lane, consumer group, topic) a service reads, from shared/topics.py's table (the lane
    names are those of HERALD_LANES: shared/service.py and the services' app.py)."""
    group = settings.consumer_group or f"{settings.topic_prefix}{service}"
    out = set()
    for topic in topic_table.ALL:
        for consumer in topic.consumers:
            if consumer.split()[0] != service:
                continue
            lane, lane_group = MAIN_LANE, group
            if "bulk lane" in consumer:  # services/dispatcher/app.py: the bulk lane's own group
                lane, lane_group = "bulk", getattr(settings, "bulk_consumer_group", None) or f"{group}.bulk"
            if "results lane" in consumer:  # services/reports/app.py: clicks and conversions
                lane, lane_group = "results", f"{group}.results"
            if consumer.startswith("reports (replies lane"):  # services/reports/app.py: reply webhooks
                lane, lane_group = "replies", f"{group}.replies"
            if consumer.startswith("scheduler (journeys"):  # services/scheduler/app.py: the journeys lane
                lane, lane_group = "journeys", f"{group}.journeys"
            if consumer.startswith("scheduler (commands"):  # services/scheduler/app.py: clients' commands
                lane, lane_group = "commands", f"{group}.commands"
            if "(erasures lane)" in consumer:  # each service's app.py: the erasures lane (docs/data-map.md)
                lane, lane_group = "erasures", f"{group}.erasures"
            if "(subject-access lane)" in consumer:  # each service's app.py: subject-access exports (docs/data-map.md)
                lane, lane_group = "subject-access", f"{group}.subject-access"
            out.add((lane, lane_group, topic.name(settings.topic_prefix)))
    return out


def consumed(service: str, settings: Any) -> set[tuple[str, str]]:
    """(consumer group, topic) pairs a process of a service reads: those of the lanes it runs
    (HERALD_LANES; unset: every lane)."""
    return {(group, topic) for lane, group, topic in consumed_by_lane(service, settings)
            if settings.lanes is None or lane in settings.lanes}


def max_replicas(r: Render, deployment: str) -> int:
    so = next((s for s in r.of("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == deployment), None)
    if so is not None:
        return so["spec"].get("maxReplicaCount", 100)
    hpa = next((h for h in r.of("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == deployment), None)
    if hpa is not None:
        return hpa["spec"]["maxReplicas"]
    return r.get("Deployment", deployment)["spec"].get("replicas", 1)


def check_keda(r: Render) -> list[str]:
    problems = []
    partitions = {settings_of(r, w).topic_partitions for w in r.workloads() if w.service == "migrate"}
    if len(partitions) != 1:
        return ["exactly one migrate Job (it creates the topics with HERALD_TOPIC_PARTITIONS)"]
    (parts,) = partitions
    reset = consumer_offset_reset()
    for so in r.of("ScaledObject"):
        name = so["metadata"]["name"]
        spec = so["spec"]
        ref = spec["scaleTargetRef"]
        deployment = r.get(ref.get("kind", "Deployment"), ref["name"])
        if deployment is None or ref.get("kind", "Deployment") != "Deployment":
            problems.append(f"ScaledObject/{name}: scaleTargetRef {ref} is not a Deployment of this render")
            continue
        w = next(w for w in r.workloads() if w.doc is deployment)
        if w.service not in LAG_SCALED:
            problems.append(f"ScaledObject/{name}: scales {w.service}, which is not scaled on lag")
            continue
        settings = settings_of(r, w)
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not 1 <= lo <= hi:
            problems.append(f"ScaledObject/{name}: 1 <= minReplicaCount {lo} <= maxReplicaCount {hi} (no scale to zero: /metrics and the API stay up)")
        if hi > parts:
            problems.append(
                f"ScaledObject/{name}: maxReplicaCount {hi} > {parts} partitions (HERALD_TOPIC_PARTITIONS): "
                "the extra instances would get no partition"
            )
        seen = set()
        for trigger in spec["triggers"]:
            meta = trigger.get("metadata", {})
            if trigger["type"] != "kafka":
                problems.append(f"ScaledObject/{name}: trigger {trigger['type']}: scale consumers on Kafka lag")
                continue
            seen.add((meta.get("consumerGroup"), meta.get("topic")))
            if meta.get("bootstrapServers") != settings.kafka_bootstrap:
                problems.append(f"ScaledObject/{name}: bootstrapServers {meta.get('bootstrapServers')} != HERALD_KAFKA_BOOTSTRAP {settings.kafka_bootstrap}")
            if meta.get("offsetResetPolicy") != reset:
                problems.append(f"ScaledObject/{name}: offsetResetPolicy should be the consumers' {reset}")
            if str(meta.get("allowIdleConsumers", "false")).lower() == "true":
                problems.append(f"ScaledObject/{name}: allowIdleConsumers would scale past the partitions")
            if not str(meta.get("lagThreshold", "")).isdigit() or int(meta["lagThreshold"]) < 1:
                problems.append(f"ScaledObject/{name}: lagThreshold must be a positive integer string")
            problems += kafka_auth_problems(r, name, trigger, settings, w)
        want = consumed(w.service, settings)
        for group, topic in sorted(seen - want, key=str):
            problems.append(f"ScaledObject/{name}: ({group}, {topic}) is not a consumer group and topic of {w.service} ({sorted(want)})")
        for group, topic in sorted(want - seen):
            problems.append(f"ScaledObject/{name}: no trigger on {topic} for group {group}")
    return problems


def kafka_auth_problems(r: Render, name: str, trigger: dict[str, Any], settings: Any, w: Workload) -> list[str]:
    meta = trigger["metadata"]
    protocol = settings.kafka_security_protocol
    problems = []
    want_sasl = KEDA_SASL[settings.kafka_sasl_mechanism or "PLAIN"] if protocol.startswith("SASL") else "none"
    if meta.get("sasl", "none") != want_sasl:
        problems.append(f"ScaledObject/{name}: sasl {meta.get('sasl')!r} but the services use {protocol} {settings.kafka_sasl_mechanism}")
    if (meta.get("tls") == "enable") != protocol.endswith("SSL"):
        problems.append(f"ScaledObject/{name}: tls {meta.get('tls')!r} but the services use {protocol}")
    auth = trigger.get("authenticationRef")
    if want_sasl == "none":
        return problems
    ta = r.get(auth.get("kind", "TriggerAuthentication"), auth["name"]) if auth else None
    if ta is None:
        return [*problems, f"ScaledObject/{name}: SASL needs an authenticationRef to a TriggerAuthentication of this render"]
    env = container_env(r, w)
    params = set()
    for item in ta["spec"].get("env", []):
        params.add(item["parameter"])
        if item["name"] not in env:
            problems.append(f"TriggerAuthentication/{auth['name']}: {item['name']} is not in {w.name}'s environment")
    secrets = r.secrets()
    for item in ta["spec"].get("secretTargetRef", []):
        params.add(item["parameter"])
        if item["key"] not in secrets.get(item["name"], {}):
            problems.append(f"TriggerAuthentication/{auth['name']}: Secret {item['name']} key {item['key']} does not exist")
    needed = {"username", "password"} | ({"ca"} if settings.kafka_ssl_cafile else set())
    if needed - params:
        problems.append(f"TriggerAuthentication/{auth['name']}: missing {sorted(needed - params)}")
    return problems


def check_autoscaling(r: Render) -> list[str]:
    """KEDA for the lag-scaled services and an HPA on CPU for ingest, all or nothing; an
    autoscaled Deployment leaves spec.replicas to its autoscaler; budgets that scale with it."""
    problems = []
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in r.of("ScaledObject")}
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in r.of("HorizontalPodAutoscaler")}
    autoscaled = scaled | set(hpas)
    services = {w.doc["metadata"]["name"]: w.service for w in herald_workloads(r) if w.doc["kind"] == "Deployment"}
    want_keda = {name for name, service in services.items() if service in LAG_SCALED}
    want_hpa = {name for name, service in services.items() if service in CPU_SCALED}
    if autoscaled and (scaled != want_keda or set(hpas) != want_hpa):
        problems.append(f"autoscalers for {sorted(autoscaled)}: KEDA for {sorted(want_keda)} {LAG_SCALED}, "
                        f"an HPA for {sorted(want_hpa)} {CPU_SCALED}")
    if scaled & set(hpas):
        problems.append(f"{sorted(scaled & set(hpas))}: a ScaledObject and an HPA fight over the same Deployment")
    for name, hpa in hpas.items():
        metrics = hpa["spec"].get("metrics", [])
        if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in metrics):
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: scale ingest on CPU")
        d = r.get("Deployment", name)
        if d is None or "cpu" not in (d["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("requests") or {}):
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: its target needs a CPU request")
        if not 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]:
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: 1 <= minReplicas <= maxReplicas")
    for d in r.of("Deployment"):
        name = d["metadata"]["name"]
        if name in autoscaled and "replicas" in d["spec"]:
            problems.append(f"Deployment/{name}: autoscaled, so no spec.replicas (apply would reset the scale)")
        if name not in autoscaled and "replicas" not in d["spec"]:
            problems.append(f"Deployment/{name}: not autoscaled: give spec.replicas")
    budget = 0
    for w in herald_workloads(r):
        settings = settings_of(r, w)
        instances = max_replicas(r, w.doc["metadata"]["name"])
        budget += instances * settings.db_pool_max
        if w.service == "dispatcher" and instances > 1 and settings.throttle_backend != "postgres":
            problems.append("dispatcher: several instances need HERALD_THROTTLE_BACKEND=postgres (limits shared)")
    for w in r.workloads():
        if w.service == "migrate":
            budget += settings_of(r, w).db_pool_max
    if budget > PG_CONNECTION_BUDGET:
        problems.append(f"at most {budget} PostgreSQL connections (max replicas x HERALD_DB_POOL_MAX) > {PG_CONNECTION_BUDGET}")
    return problems


# --- lanes: transactional and campaign work ------------------------------------------------


@functools.cache
def service_lanes(service: str) -> tuple[str, ...]:
    """The consumer lanes of a service, as HERALD_LANES names them: main (shared/service.py) and
    each ``Lane("name", ...)`` of services/<service>/app.py."""
    import ast

    tree = ast.parse((REPO / "services" / service / "app.py").read_text())
    names = [node.args[0].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Lane"
             and node.args and isinstance(node.args[0], ast.Constant)]
    return (MAIN_LANE, *names)


def serves_without_lanes(service: str) -> bool:
    """run_service(..., ready_needs_assignment=False): an instance may run no lane (ingest)."""
    return "ready_needs_assignment=False" in (REPO / "services" / service / "app.py").read_text()


#: Built-in PriorityClasses every cluster has.
SYSTEM_PRIORITY_CLASSES = {"system-cluster-critical": 2000000000, "system-node-critical": 2000001000}


def lanes_of(settings: Any, service: str) -> set[str]:
    return set(service_lanes(service)) if settings.lanes is None else set(settings.lanes)


def campaign_work(settings: Any, service: str) -> bool:
    """The bulk lane, or ingest's campaign launcher."""
    return "bulk" in lanes_of(settings, service) or bool(getattr(settings, "campaign_launcher", False))


def check_lanes(r: Render) -> list[str]:
    """Each service's consumer lanes run in exactly one of its Deployments (HERALD_LANES, shared/
    service.py). Where a service is split over Deployments, transactional work (the main lane)
    and campaign work (the bulk lane, ingest's launcher) never share one; the transactional
    Deployments have a higher PriorityClass than the campaign ones, which never preempt, and
    Guaranteed resources; the campaign ones run at HERALD_NICE > 0. Every PriorityClass a pod
    names exists."""
    problems = []
    classes = {pc["metadata"]["name"]: pc for pc in r.of("PriorityClass")}
    by_service: dict[str, list[tuple[Workload, Any]]] = {}
    for w in herald_workloads(r):
        if w.doc["kind"] == "Deployment":
            by_service.setdefault(w.service, []).append((w, settings_of(r, w)))
    for w in r.workloads():
        name = w.pod.get("priorityClassName")
        if name is not None and name not in classes and name not in SYSTEM_PRIORITY_CLASSES:
            problems.append(f"{w.name}: priorityClassName {name} is no PriorityClass of this render")
    for service, deployments in sorted(by_service.items()):
        lanes = service_lanes(service)
        runs: dict[str, list[str]] = {}
        for w, settings in deployments:
            chosen = lanes_of(settings, service)
            for unknown in sorted(chosen - set(lanes)):
                problems.append(f"{w.name}: HERALD_LANES names {unknown}, which {service} does not have (its lanes: {', '.join(lanes)})")
            if not chosen and not serves_without_lanes(service):
                problems.append(f"{w.name}: HERALD_LANES is empty: {service} needs at least one consumer lane")
            for lane in chosen & set(lanes):
                runs.setdefault(lane, []).append(w.name)
        for lane in lanes:
            who = runs.get(lane, [])
            if len(who) != 1:
                problems.append(f"{service} lane {lane}: run by {len(who)} Deployments {who}, not exactly one")
        if service == "ingest" and sum(bool(s.campaign_launcher) for _, s in deployments) < 1:
            problems.append("no ingest Deployment runs the campaign launcher (HERALD_CAMPAIGN_LAUNCHER): campaigns would never start")
        if len(deployments) < 2:
            continue
        transactional = [(w, s) for w, s in deployments if MAIN_LANE in lanes_of(s, service) or not campaign_work(s, service)]
        campaign = [(w, s) for w, s in deployments if campaign_work(s, service)]
        for w, s in deployments:
            if MAIN_LANE in lanes_of(s, service) and campaign_work(s, service):
                problems.append(f"{w.name}: runs transactional and campaign work together; {service} is split: keep them apart")
        for w, s in campaign:
            pc = classes.get(w.pod.get("priorityClassName", ""))
            if pc is None or pc.get("preemptionPolicy") != "Never":
                problems.append(f"{w.name}: campaign work: a PriorityClass with preemptionPolicy Never")
            if s.nice < 1:
                problems.append(f"{w.name}: campaign work: HERALD_NICE > 0, as in the process layout")
        lowest = max((classes[w.pod["priorityClassName"]]["value"] for w, _ in campaign if w.pod.get("priorityClassName") in classes), default=0)
        for w, s in transactional:
            if (w, s) in campaign:
                continue
            pc = classes.get(w.pod.get("priorityClassName", ""))
            if pc is None or pc["value"] <= lowest:
                problems.append(f"{w.name}: transactional work: a PriorityClass above the campaign Deployments' ({lowest})")
            res = w.container.get("resources") or {}
            if res.get("requests") != res.get("limits"):
                problems.append(f"{w.name}: transactional work: requests = limits (Guaranteed QoS), got {res}")
            if s.nice:
                problems.append(f"{w.name}: transactional work at HERALD_NICE {s.nice}")
    return problems


CHECKS: dict[str, Callable[[Render], list[str]]] = {
    f.__name__.removeprefix("check_"): f
    for f in (
        check_schemas,
        check_commands,
        check_env_names,
        check_env_values,
        check_secrets_come_from_secrets,
        check_probes,
        check_graceful_shutdown,
        check_services_and_pdbs,
        check_resources_and_security,
        check_images,
        check_ops_surfaces,
        check_prometheus,
        check_cross_service,
        check_keda,
        check_autoscaling,
        check_lanes,
    )
}


# ============================================================================================
# Tests


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_manifests(overlay: str, check: str) -> None:
    problems = CHECKS[check](make_render(overlay))
    assert not problems, "\n".join(problems)


def test_overlays_render_what_they_should() -> None:
    base, dev, prod = make_render("base"), make_render("dev"), make_render("prod")
    for r in (base, dev, prod):
        assert {w.service for w in r.workloads()} >= {*HERALD_SERVICES, "migrate"}, r.name
    assert base.workload("simulator") and dev.workload("simulator") and not prod.workload("simulator")
    assert not dev.of("ScaledObject") and not dev.of("HorizontalPodAutoscaler"), "dev has fixed replicas"
    assert len(prod.of("ScaledObject")) == len(LAG_SCALED) and prod.of("HorizontalPodAutoscaler")
    assert not prod.of("Secret") and prod.of("TriggerAuthentication")
    assert settings_of(prod, prod.workload("ingest")).kafka_security_protocol == "SASL_SSL"
    for so in prod.of("ScaledObject"):
        assert so["spec"]["minReplicaCount"] >= 2, "prod keeps two instances of each consumer"


#: prod-split (docs/kubernetes.md): Deployment -> (HERALD_LANES, PriorityClass); None: every lane.
SPLIT = {
    "herald-ingest": (["main", "replies", "contact-events", "subject-access", "subject-access-parts", "links",
                       "campaign-winners", "journey-sends"], "herald-transactional"),
    "herald-ingest-bulk": ([], "herald-campaign"),
    "herald-scheduler": (["main", "journeys", "commands", "erasures", "subject-access"], "herald-transactional"),
    "herald-scheduler-bulk": (["bulk"], "herald-campaign"),
    "herald-dispatcher": (["main", "erasures", "subject-access"], "herald-transactional"),
    "herald-dispatcher-bulk": (["bulk"], "herald-campaign"),
    "herald-reports": (None, None),
}


def test_prod_split_runs_the_lanes_apart() -> None:
    split, prod = make_render("prod-split"), make_render("prod")
    deployments = {w.doc["metadata"]["name"]: w for w in herald_workloads(split) if w.doc["kind"] == "Deployment"}
    assert set(deployments) == set(SPLIT)
    for name, (lanes, priority_class) in SPLIT.items():
        w = deployments[name]
        settings = settings_of(split, w)
        assert settings.lanes == lanes, name
        assert w.pod.get("priorityClassName") == priority_class, name
        assert settings.nice == (10 if priority_class == "herald-campaign" else 0), name
    ingest = {name: settings_of(split, deployments[name]) for name in ("herald-ingest", "herald-ingest-bulk")}
    assert not ingest["herald-ingest"].campaign_launcher and ingest["herald-ingest-bulk"].campaign_launcher
    classes = {pc["metadata"]["name"]: pc for pc in split.of("PriorityClass")}
    assert classes["herald-transactional"]["value"] > classes["herald-campaign"]["value"]
    assert classes["herald-campaign"]["preemptionPolicy"] == "Never" and not any(pc.get("globalDefault") for pc in classes.values())
    # what prod has, prod-split has (the -bulk Deployments, their budgets, autoscalers and Service added)
    assert {res_id(d) for d in prod.docs} <= {res_id(d) for d in split.docs}
    assert not split.of("Secret") and split.of("TriggerAuthentication")
    for w in deployments.values():  # one PodDisruptionBudget each (check_services_and_pdbs: and only one)
        assert split.get("PodDisruptionBudget", w.doc["metadata"]["name"]) is not None
    for so in split.of("ScaledObject"):
        transactional = not so["metadata"]["name"].endswith("-bulk")
        assert so["spec"]["minReplicaCount"] >= (2 if transactional else 1)


def test_prod_split_scales_each_deployment_on_its_own_groups() -> None:
    """A campaign backlog (the bulk groups' lag) scales the -bulk Deployments, and only them."""
    split = make_render("prod-split")

    def watched(name: str) -> set[tuple[str, str]]:
        so = split.get("ScaledObject", name)
        assert so["spec"]["scaleTargetRef"]["name"] == name
        return {(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in so["spec"]["triggers"]}

    assert watched("herald-scheduler-bulk") == {("herald.scheduler.bulk", "herald.messages.accepted.bulk.v1")}
    assert watched("herald-dispatcher-bulk") == {("herald.dispatcher.bulk", "herald.messages.outbound.bulk.v1")}
    bulk_groups = {"herald.scheduler.bulk", "herald.dispatcher.bulk"}
    for name in ("herald-scheduler", "herald-dispatcher"):
        groups = {group for group, _ in watched(name)}
        assert groups and not groups & bulk_groups, name
    assert {g for g, _ in watched("herald-scheduler")} == {"herald.scheduler", "herald.scheduler.journeys", "herald.scheduler.commands", "herald.scheduler.erasures",
                                                              "herald.scheduler.subject-access"}
    assert {g for g, _ in watched("herald-dispatcher")} == {"herald.dispatcher", "herald.dispatcher.erasures", "herald.dispatcher.subject-access"}
    # ingest's two Deployments scale on CPU, each with its own HPA
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in split.of("HorizontalPodAutoscaler")}
    assert hpas == {"herald-ingest", "herald-ingest-bulk"}


def test_prod_split_routes_campaign_work_to_ingest_bulk() -> None:
    split = make_render("prod-split")
    host = urlsplit(settings_of(split, split.workload("ingest")).public_url).hostname

    def deployment(path: str) -> str | None:
        service = split.get("Service", ingress_service(split, host, path) or "")
        if service is None:
            return None
        chosen = [d["metadata"]["name"] for d in split.of("Deployment") if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(chosen) == 1, chosen
        return chosen[0]

    for path in ("/v1/messages/batch", "/v1/campaigns", "/v1/campaigns/c1/launch", "/v1/contacts/import"):
        assert deployment(path) == "herald-ingest-bulk", path
    for path in ("/v1/messages", "/v1/messages/m1", "/v1/messages/batchx", "/v1/campaignsx", "/v1/receipts/twilio",
                 "/v1/callbacks/twilio/twilio/status", "/v1/inbound", "/l/abc", "/v1/contacts"):
        assert deployment(path) == "herald-ingest", path
    assert ingress_service(split, "other.example.com", "/v1/messages") is None
    assert not make_render("prod").of("Ingress"), "the Ingress is prod-split's own (docs/kubernetes.md)"


def test_lane_names_are_the_services_lanes() -> None:
    """The lanes the KEDA checks know (consumed_by_lane, from shared/topics.py) are the lanes the
    services run (their app.py), so a new lane fails here until the manifests handle it."""
    assert service_lanes("scheduler") == ("main", "bulk", "journeys", "commands", "erasures", "subject-access")
    assert service_lanes("ingest") == ("main", "links", "replies", "contact-events", "subject-access", "subject-access-parts",
                                       "campaign-winners", "journey-sends") and serves_without_lanes("ingest")
    assert not serves_without_lanes("scheduler")
    for service in LAG_SCALED:
        with environ({}):
            settings = SETTINGS[service]()
        known = {lane for lane, _, _ in consumed_by_lane(service, settings)}
        assert known == set(service_lanes(service)), service


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_renderer_agrees_with_kustomize(overlay: str) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: only the Python rendering is checked")
    out = subprocess.run([*command, str(OVERLAYS[overlay])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=res_id)
    ours = sorted(render(overlay), key=res_id)
    assert [res_id(d) for d in ours] == [res_id(d) for d in theirs]
    for mine, real in zip(ours, theirs, strict=True):
        assert mine == real, f"{res_id(mine)} differs from {' '.join(command)}"


def test_renderer_strategic_merge_and_json6902() -> None:
    base = {"spec": {"containers": [{"name": "a", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}, {"name": "b"}], "x": {"y": 1, "z": 2}}}
    patch = {"spec": {"containers": [{"name": "c"}, {"name": "a", "env": [{"name": "C", "value": "3"}, {"name": "A", "value": "9"}]}], "x": {"z": None}}}
    merged = strategic_merge(base, patch)
    assert [c["name"] for c in merged["spec"]["containers"]] == ["c", "a", "b"]
    assert merged["spec"]["containers"][1]["env"] == [{"name": "C", "value": "3"}, {"name": "A", "value": "9"}, {"name": "B", "value": "2"}]
    assert merged["spec"]["x"] == {"y": 1}
    doc = {"a": {"l": [1, 2]}}
    json6902(doc, [{"op": "add", "path": "/a/l/-", "value": 3}, {"op": "replace", "path": "/a/l/0", "value": 0}, {"op": "add", "path": "/a/k~1x", "value": {}}])
    assert doc == {"a": {"l": [0, 2, 3], "k/x": {}}}
    with pytest.raises(KustomizeError):
        json6902(doc, [{"op": "replace", "path": "/a/missing", "value": 1}])


def test_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="commonLabels"):
        build(tmp_path)


def test_topic_table_matches_what_the_services_subscribe() -> None:
    """consumed() reads shared/topics.py; the services' app.py files are what actually runs."""
    import ast

    by_name = {name: t for name, t in vars(topic_table).items() if isinstance(t, topic_table.Topic)}
    for service in HERALD_SERVICES:
        tree = ast.parse((REPO / "services" / service / "app.py").read_text())
        subscribed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"run_service", "Lane"}:
                for arg in node.args:
                    if isinstance(arg, ast.List):
                        subscribed |= {by_name[e.id].suffix for e in arg.elts if isinstance(e, ast.Name)}
        table = {t.suffix for t in topic_table.ALL if any(c.split()[0] == service for c in t.consumers)}
        assert subscribed == table, f"{service}: app.py subscribes {sorted(subscribed)}, shared/topics.py says {sorted(table)}"


def test_keda_schema_is_the_vendored_crd() -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["scaleTargetRef", "triggers"]
    assert {"minReplicaCount", "maxReplicaCount", "triggers", "advanced"} <= set(spec["properties"])
    readme = (KEDA_SCHEMA.parent / "README.md").read_text()
    assert "2.16.1" in readme and "keda.sh_scaledobjects.yaml" in readme


def test_docs_name_every_secret_and_the_replica_limits() -> None:
    text = DOCS.read_text()
    base = make_render("base")
    for secret in [*base.of("Secret")]:
        name = secret["metadata"]["name"]
        assert f"`{name}`" in text, f"docs/kubernetes.md: describe Secret {name}"
        for key in secret_data(secret):
            assert f"`{key}`" in text, f"docs/kubernetes.md: describe {name} key {key}"
    for secret, keys in EXTERNAL_SECRETS.items():
        assert f"`{secret}`" in text and all(f"`{k}`" in text for k in keys)
    for topic in topic_table.ALL:
        if any(c.split()[0] in HERALD_SERVICES for c in topic.consumers):
            assert f"`{topic.name('herald.')}`" in text, f"docs/kubernetes.md: name {topic.name('herald.')}"


# --------------------------------------------------------------------------------------------
# Each check can fail: break the rendered manifests one way, and the check must say so.


def _dep(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def _c(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return _dep(docs, name)["spec"]["template"]["spec"]["containers"][0]


def _get(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _trigger(docs: list[dict[str, Any]], so: str, index: int) -> dict[str, Any]:
    return _get(docs, "ScaledObject", so)["spec"]["triggers"][index]


def _set(mapping: dict[str, Any], key: str, value: Any) -> None:
    mapping[key] = value


def _env(docs: list[dict[str, Any]], deployment: str, name: str, value: str | None) -> None:
    """Set (or, with None, remove) a literal variable of a Deployment's container."""
    env = _c(docs, deployment).setdefault("env", [])
    env[:] = [v for v in env if v["name"] != name]
    if value is not None:
        env.append({"name": name, "value": value})


MUTATIONS: list[tuple[str, str, str, Callable[[list[dict[str, Any]]], Any], str]] = [
    # (id, overlay, check, mutate the rendered docs, text expected in a problem)
    ("k8s-unknown-field", "base", "schemas", lambda d: _set(_c(d, "herald-ingest"), "imagePullPolice", "Always"), "imagePullPolice"),
    ("k8s-bad-type", "base", "schemas", lambda d: _set(_dep(d, "herald-reports")["spec"], "revisionHistoryLimit", "five"), "revisionHistoryLimit"),
    ("keda-unknown-field", "base", "schemas", lambda d: _set(_get(d, "ScaledObject", "herald-reports")["spec"], "maxReplicas", 6), "maxReplicas"),
    ("keda-bad-type", "prod", "schemas", lambda d: _set(_get(d, "ScaledObject", "herald-scheduler")["spec"], "maxReplicaCount", "6"), "maxReplicaCount"),
    ("keda-metadata-not-string", "base", "schemas", lambda d: _set(_trigger(d, "herald-scheduler", 0)["metadata"], "lagThreshold", 2000), "lagThreshold"),
    ("trigger-auth-param", "prod", "schemas", lambda d: _get(d, "TriggerAuthentication", "herald-kafka")["spec"]["env"][0].update(parameter="user"), "'user'"),
    ("command-module", "base", "commands", lambda d: _set(_c(d, "herald-ingest"), "command", ["python", "-m", "services.ingestt"]), "no module services.ingestt"),
    ("command-args", "dev", "commands", lambda d: _get(d, "Job", "herald-migrate")["spec"]["template"]["spec"]["containers"][0]["command"].append("--bogus"), "not a valid command line"),
    ("command-no-topics", "prod", "commands", lambda d: _get(d, "Job", "herald-migrate")["spec"]["template"]["spec"]["containers"][0]["command"].append("--no-topics"), "creates topics"),
    ("command-name", "base", "commands", lambda d: _set(_c(d, "herald-scheduler"), "command", ["python", "-m", "services.reports"]), "name it Deployment/herald-reports"),
    ("env-unknown-key", "base", "env_names", lambda d: _set(_get(d, "ConfigMap", "herald-common")["data"], "HERALD_KAFKA_BOOTSTRAPS", "x:9092"), "HERALD_KAFKA_BOOTSTRAPS"),
    ("env-other-service", "dev", "env_names", lambda d: _set(_get(d, "ConfigMap", "herald-simulator")["data"], "HERALD_HTTP_PORT", "28090"), "herald-simulator: HERALD_HTTP_PORT"),
    ("env-setting-of-another-service", "base", "env_names", lambda d: _set(_get(d, "ConfigMap", "herald-scheduler")["data"], "HERALD_GATEWAYS", "[]"), "HERALD_GATEWAYS"),
    ("env-missing-configmap", "prod", "env_names", lambda d: d.remove(_get(d, "ConfigMap", "herald-reports")), "herald-reports is not in the render"),
    ("env-orphan-configmap", "base", "env_names", lambda d: _set(_get(d, "ConfigMap", "herald-reports")["metadata"], "name", "herald-report"), "herald-report"),
    ("env-missing-secret-key", "prod", "env_values", lambda d: _c(d, "herald-ingest")["env"][0]["valueFrom"]["secretKeyRef"].update(key="RECEIPTS"), "key RECEIPTS"),
    ("env-bad-value", "base", "env_values", lambda d: _set(_get(d, "ConfigMap", "herald-common")["data"], "HERALD_TOPIC_PARTITIONS", "six"), "do not validate"),
    ("env-bad-json", "dev", "env_values", lambda d: _set(_get(d, "Secret", "herald-gateways")["stringData"], "HERALD_GATEWAYS", "[{"), "do not validate"),
    ("env-bad-literal", "prod", "env_values", lambda d: _set(_get(d, "ConfigMap", "herald-common")["data"], "HERALD_KAFKA_SECURITY_PROTOCOL", "TLS"), "do not validate"),
    ("secret-in-configmap", "dev", "secrets_come_from_secrets", lambda d: _set(_get(d, "ConfigMap", "herald-common")["data"], "HERALD_DATABASE_URL", "postgresql://x"), "HERALD_DATABASE_URL holds a secret: put it in a Secret"),
    ("secret-literal", "base", "secrets_come_from_secrets", lambda d: _c(d, "herald-dispatcher")["env"].append({"name": "HERALD_KAFKA_SASL_PASSWORD", "value": "x"}), "HERALD_KAFKA_SASL_PASSWORD holds a secret"),
    ("secret-real-value", "dev", "secrets_come_from_secrets", lambda d: _set(_get(d, "Secret", "herald-kafka")["stringData"], "HERALD_KAFKA_SASL_PASSWORD", "hunter2"), "not a REPLACE_ME placeholder"),
    ("secret-in-prod", "prod", "secrets_come_from_secrets", lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "herald"}, "stringData": {"a": "REPLACE_ME"}}), "secret manager owns them"),
    ("probe-port", "base", "probes", lambda d: _set(_c(d, "herald-ingest")["readinessProbe"]["httpGet"], "port", 28081), "readinessProbe port 28081"),
    ("probe-path", "prod", "probes", lambda d: _set(_c(d, "herald-dispatcher")["livenessProbe"]["httpGet"], "path", "/readyz"), "livenessProbe GETs /readyz"),
    ("probe-missing", "dev", "probes", lambda d: _c(d, "herald-reports").pop("readinessProbe"), "no readinessProbe"),
    ("probe-container-port", "base", "probes", lambda d: _set(_c(d, "herald-scheduler")["ports"][0], "containerPort", 8080), "HERALD_OPS_PORT [28181]"),
    ("probe-simulator-control", "dev", "probes", lambda d: _set(_c(d, "herald-simulator")["livenessProbe"]["exec"], "command", ["python", "-c", "urlopen('http://127.0.0.1:28090/healthz')"]), "control port"),
    ("grace-period", "prod", "graceful_shutdown", lambda d: _set(_dep(d, "herald-ingest")["spec"]["template"]["spec"], "terminationGracePeriodSeconds", 15), "terminationGracePeriodSeconds 15"),
    ("service-target-port", "base", "services_and_pdbs", lambda d: _set(_get(d, "Service", "herald-reports")["spec"]["ports"][0], "targetPort", "metrics"), "targetPort metrics"),
    ("service-selector", "dev", "services_and_pdbs", lambda d: _set(_get(d, "Service", "herald-ingest")["spec"]["selector"], "app.kubernetes.io/component", "ingress"), "selects 0 Deployments"),
    ("pdb-selector", "prod", "services_and_pdbs", lambda d: _set(_get(d, "PodDisruptionBudget", "herald-dispatcher")["spec"]["selector"]["matchLabels"], "app.kubernetes.io/component", "dispatch"), "0 PodDisruptionBudgets"),
    ("pdb-blocks-drain", "dev", "services_and_pdbs", lambda d: _get(d, "PodDisruptionBudget", "herald-scheduler").update(spec={"minAvailable": 1, "selector": _get(d, "PodDisruptionBudget", "herald-scheduler")["spec"]["selector"]}), "maxUnavailable >= 1"),
    ("resources-missing", "base", "resources_and_security", lambda d: _c(d, "herald-reports")["resources"].pop("limits"), "requests and limits"),
    ("resources-too-big", "prod", "resources_and_security", lambda d: _set(_c(d, "herald-reports")["resources"]["limits"], "memory", "2Gi"), "memory"),
    ("security-root", "dev", "resources_and_security", lambda d: _set(_dep(d, "herald-ingest")["spec"]["template"]["spec"]["securityContext"], "runAsUser", 0), "non-root"),
    ("namespace-missing", "prod", "resources_and_security", lambda d: _get(d, "Service", "herald-ingest")["metadata"].pop("namespace"), "not in the herald namespace"),
    ("image-mixed", "base", "images", lambda d: _set(_c(d, "herald-reports"), "image", "herald:old"), "one image"),
    ("image-prod-tag", "prod", "images", lambda d: [_set(w, "image", "registry.example.com/herald/herald:latest") for w in (c for doc in d for c in pod_containers(doc))], "release tag"),
    ("ops-port-in-service", "base", "ops_surfaces", lambda d: _get(d, "Service", "herald-ingest")["spec"]["ports"].append({"name": "ops", "port": 28180, "targetPort": "ops"}), "exposes the ops port 28180"),
    ("api-docs-in-prod", "prod", "ops_surfaces", lambda d: _set(_get(d, "ConfigMap", "herald-reports")["data"], "HERALD_API_DOCS", "true"), "HERALD_API_DOCS is on in production"),
    ("prometheus-port", "dev", "prometheus", lambda d: _set(_dep(d, "herald-dispatcher")["spec"]["template"]["metadata"]["annotations"], "prometheus.io/port", "28081"), "prometheus.io/port"),
    ("prometheus-keep", "base", "prometheus", lambda d: _set(_get(d, "ConfigMap", "herald-prometheus-scrape")["data"], "herald-scrape.yml", "scrape_configs: [{job_name: x, kubernetes_sd_configs: [{role: pod, namespaces: {names: [herald]}}]}]"), "keep only pods"),
    ("cross-receipt-secret", "dev", "cross_service", lambda d: _set(_get(d, "Secret", "herald-simulator")["stringData"], "HERALD_SIM_RECEIPT_SECRET", "REPLACE_ME-other"), "receipt secret"),
    ("cross-receipt-url", "base", "cross_service", lambda d: _set(_get(d, "ConfigMap", "herald-simulator")["data"], "HERALD_SIM_RECEIPT_URL", "http://herald-ingest:28083/v1/receipts/sim"), "not ingest's Service"),
    ("cross-gateway-url", "dev", "cross_service", lambda d: _set(_get(d, "Secret", "herald-gateways")["stringData"], "HERALD_GATEWAYS", _get(d, "Secret", "herald-gateways")["stringData"]["HERALD_GATEWAYS"].replace("herald-simulator", "herald-simulatorr")), "does not reach the simulator"),
    ("cross-shared-bootstrap", "prod", "cross_service", lambda d: _c(d, "herald-reports").setdefault("env", []).append({"name": "HERALD_KAFKA_BOOTSTRAP", "value": "other:9093"}), "kafka_bootstrap"),
    ("cross-prestop", "prod", "cross_service", lambda d: _c(d, "herald-ingest").pop("lifecycle"), "preStop"),
    ("keda-group", "base", "keda", lambda d: _set(_trigger(d, "herald-dispatcher", 0)["metadata"], "consumerGroup", "herald.dispatch"), "herald.dispatch"),
    ("keda-topic", "prod", "keda", lambda d: _set(_trigger(d, "herald-reports", 2)["metadata"], "topic", "herald.receipt.v1"), "herald.receipt.v1"),
    ("keda-missing-lane", "base", "keda", lambda d: _get(d, "ScaledObject", "herald-dispatcher")["spec"]["triggers"].pop(1), "no trigger on herald.messages.outbound.bulk.v1"),
    ("keda-max-replicas", "prod", "keda", lambda d: _set(_get(d, "ScaledObject", "herald-scheduler")["spec"], "maxReplicaCount", 7), "> 6 partitions"),
    ("keda-partitions", "base", "keda", lambda d: _set(_get(d, "ConfigMap", "herald-common")["data"], "HERALD_TOPIC_PARTITIONS", "4"), "> 4 partitions"),
    ("keda-bootstrap", "prod", "keda", lambda d: _set(_trigger(d, "herald-dispatcher", 1)["metadata"], "bootstrapServers", "herald-kafka-kafka-bootstrap.kafka.svc:9092"), "bootstrapServers"),
    ("erasure-keys", "dev", "cross_service", lambda d: _c(d, "herald-scheduler")["envFrom"].pop(), "HERALD_ERASURE_KEYS"),
    ("keda-sasl", "prod", "keda", lambda d: _trigger(d, "herald-scheduler", 0)["metadata"].pop("sasl"), "sasl"),
    ("keda-auth-env", "prod", "keda", lambda d: _set(_get(d, "TriggerAuthentication", "herald-kafka")["spec"]["env"][1], "name", "HERALD_KAFKA_PASSWORD"), "HERALD_KAFKA_PASSWORD is not in"),
    ("keda-auth-ref", "prod", "keda", lambda d: _trigger(d, "herald-reports", 0).pop("authenticationRef"), "authenticationRef"),
    ("keda-idle", "base", "keda", lambda d: _set(_trigger(d, "herald-reports", 1)["metadata"], "allowIdleConsumers", "true"), "allowIdleConsumers"),
    ("keda-reset", "base", "keda", lambda d: _set(_trigger(d, "herald-scheduler", 0)["metadata"], "offsetResetPolicy", "latest"), "offsetResetPolicy"),
    ("keda-wrong-target", "base", "keda", lambda d: _set(_get(d, "ScaledObject", "herald-reports")["spec"]["scaleTargetRef"], "name", "herald-ingest"), "not scaled on lag"),
    ("autoscaled-replicas", "prod", "autoscaling", lambda d: _set(_dep(d, "herald-reports")["spec"], "replicas", 2), "no spec.replicas"),
    ("autoscaler-missing", "prod", "autoscaling", lambda d: d.remove(_get(d, "HorizontalPodAutoscaler", "herald-ingest")), "an HPA for"),
    ("hpa-metric", "base", "autoscaling", lambda d: _set(_get(d, "HorizontalPodAutoscaler", "herald-ingest")["spec"]["metrics"][0]["resource"], "name", "memory"), "on CPU"),
    ("connection-budget", "prod", "autoscaling", lambda d: _set(_get(d, "ConfigMap", "herald-common")["data"], "HERALD_DB_POOL_MAX", "10"), "PostgreSQL connections"),
    ("throttle-local", "prod", "autoscaling", lambda d: _set(_get(d, "ConfigMap", "herald-dispatcher")["data"], "HERALD_THROTTLE_BACKEND", "local"), "HERALD_THROTTLE_BACKEND=postgres"),
    # prod-split: the lanes apart
    ("split-autoscaler-missing", "prod-split", "autoscaling", lambda d: d.remove(_get(d, "ScaledObject", "herald-scheduler-bulk")), "KEDA for"),
    ("split-lane-left-out", "prod-split", "lanes", lambda d: _env(d, "herald-scheduler", "HERALD_LANES", '["main", "journeys", "commands"]'), "scheduler lane erasures: run by 0 Deployments"),
    ("split-lane-run-twice", "prod-split", "lanes", lambda d: _env(d, "herald-dispatcher", "HERALD_LANES", '["main", "erasures", "bulk"]'), "dispatcher lane bulk: run by 2 Deployments"),
    ("split-lane-unknown", "prod-split", "lanes", lambda d: _env(d, "herald-dispatcher-bulk", "HERALD_LANES", '["campaign"]'), "HERALD_LANES names campaign"),
    ("split-lane-every", "prod-split", "lanes", lambda d: _env(d, "herald-scheduler-bulk", "HERALD_LANES", None), "scheduler lane main: run by 2 Deployments"),
    ("split-consumer-no-lane", "prod-split", "lanes", lambda d: _env(d, "herald-scheduler-bulk", "HERALD_LANES", "[]"), "scheduler needs at least one consumer lane"),
    ("split-launcher-transactional", "prod-split", "lanes", lambda d: _env(d, "herald-ingest", "HERALD_CAMPAIGN_LAUNCHER", "true"), "runs transactional and campaign work together"),
    ("split-no-launcher", "prod-split", "lanes", lambda d: _env(d, "herald-ingest-bulk", "HERALD_CAMPAIGN_LAUNCHER", "false"), "campaigns would never start"),
    ("split-priority-class-missing", "prod-split", "lanes", lambda d: d.remove(_get(d, "PriorityClass", "herald-transactional")), "herald-transactional is no PriorityClass"),
    ("split-priority-order", "prod-split", "lanes", lambda d: _set(_get(d, "PriorityClass", "herald-transactional"), "value", 0), "a PriorityClass above the campaign"),
    ("split-campaign-preempts", "prod-split", "lanes", lambda d: _get(d, "PriorityClass", "herald-campaign").pop("preemptionPolicy"), "preemptionPolicy Never"),
    ("split-not-guaranteed", "prod-split", "lanes", lambda d: _set(_c(d, "herald-dispatcher")["resources"]["requests"], "cpu", "250m"), "requests = limits"),
    ("split-campaign-nice", "prod-split", "lanes", lambda d: _env(d, "herald-dispatcher-bulk", "HERALD_NICE", None), "HERALD_NICE > 0"),
    ("split-keda-bulk-group", "prod-split", "keda", lambda d: _set(_trigger(d, "herald-scheduler-bulk", 0)["metadata"], "consumerGroup", "herald.scheduler"), "(herald.scheduler, herald.messages.accepted.bulk.v1) is not a consumer group"),
    ("split-keda-bulk-in-transactional", "prod-split", "keda", lambda d: _get(d, "ScaledObject", "herald-dispatcher")["spec"]["triggers"].append(copy.deepcopy(_trigger(d, "herald-dispatcher-bulk", 0))), "(herald.dispatcher.bulk, herald.messages.outbound.bulk.v1) is not a consumer group"),
    ("split-ingress-backend", "prod-split", "services_and_pdbs", lambda d: _set(_get(d, "Ingress", "herald-api")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"], "name", "herald-ingest-bulkk"), "herald-ingest-bulkk, which is not in the render"),
    ("split-ingress-port", "prod-split", "services_and_pdbs", lambda d: _set(_get(d, "Ingress", "herald-api")["spec"]["rules"][0]["http"]["paths"][1]["backend"]["service"], "port", {"name": "ops"}), "does not have"),
    ("split-pdb-both", "prod-split", "services_and_pdbs", lambda d: _get(d, "PodDisruptionBudget", "herald-scheduler")["spec"]["selector"]["matchLabels"].pop("herald/lanes"), "2 PodDisruptionBudgets select it"),
    ("split-budget", "prod-split", "autoscaling", lambda d: _set(_get(d, "ScaledObject", "herald-dispatcher-bulk")["spec"], "maxReplicaCount", 6), "PostgreSQL connections"),
]


@pytest.mark.parametrize(("overlay", "check", "mutate", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_each_check_can_fail(overlay: str, check: str, mutate: Callable[[list[dict[str, Any]]], Any], expected: str) -> None:
    docs = render(overlay)
    assert not CHECKS[check](make_render(overlay, copy.deepcopy(docs))), "the unbroken render must pass"
    mutate(docs)
    problems = CHECKS[check](make_render(overlay, docs))
    assert any(expected in p for p in problems), f"{check} did not catch it; it said: {problems}"


def test_every_check_has_a_mutation() -> None:
    assert {m[2] for m in MUTATIONS} == set(CHECKS)
