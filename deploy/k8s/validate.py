#!/usr/bin/env python3
"""Checks the objects a Freshet kustomization renders.

    kubectl kustomize deploy/k8s | python3 deploy/k8s/validate.py

Reads a stream of YAML documents on stdin (or from the files given) and
checks, without a cluster:

- every object: apiVersion, kind, metadata.name; a namespace on namespaced
  kinds (one of the rendered Namespaces, when any is rendered); no two
  objects with the same kind, namespace and name;
- Deployments and StatefulSets: the selector matches the pod template's
  labels; every container has a name and an image, named ports, readiness
  and liveness probes whose ports exist, and CPU and memory requests and a
  memory limit (limits not below requests); every Secret, ConfigMap,
  volume, volume mount and service account it names exists (and every
  secret or config key); every $(VAR) in a command or argument is defined;
- Services select the pods of some workload, and their target ports exist
  in those pods; a StatefulSet's serviceName is a headless Service that
  selects its pods; volumeClaimTemplates request storage and are mounted;
- role bindings name roles and service accounts that exist; disruption
  budgets select pods; pods in a namespace that enforces the "restricted"
  Pod Security Standard meet it;
- the six Freshet components exist (Deployments timer, membership, cache,
  control-plane, frontend; StatefulSet storage-worker), each running its
  binary; every flag a Freshet container passes, and every environment
  variable it sets, is one the binary reads (taken from the clap `Config`
  structs in services/ and libs/, so a renamed flag fails here); no flag
  is left at a loopback default (unreachable from other pods); the metrics
  port is named `metrics`, matches FRESHET_METRICS_LISTEN and the
  prometheus.io annotations; in secure mode (FRESHET_AUTH=sigv4) every
  service has the tokens and keys docs/security.md says it needs.

Exits 0 and prints a one-line summary when everything holds; otherwise
prints one line per problem, naming the object, and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import pathlib
import re
import shlex
import sys
from collections import defaultdict

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("validate.py needs PyYAML: pip install pyyaml (or apt-get install python3-yaml)")

REPO = pathlib.Path(__file__).resolve().parents[2]

CLUSTER_SCOPED = {
    "Namespace", "Node", "PersistentVolume", "StorageClass", "ClusterRole",
    "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
    "IngressClass", "RuntimeClass", "CSIDriver", "APIService",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}

# The components the base must have: name -> (kind, binary).
EXPECTED = {
    "timer": ("Deployment", "freshet-timer"),
    "membership": ("Deployment", "freshet-membership"),
    "cache": ("Deployment", "freshet-cache"),
    "control-plane": ("Deployment", "freshet-control-plane"),
    "frontend": ("Deployment", "freshet-frontend"),
    "storage-worker": ("StatefulSet", "freshet-storage-worker"),
}
BINARIES = {binary for _, binary in EXPECTED.values()}

# Flags a binary cannot start without, or that a pod cannot do without.
REQUIRED_FLAGS = {
    "freshet-storage-worker": ["--worker-id", "--availability-zone", "--advertise", "--data-dir"],
}

# docs/security.md: what each service needs in secure mode.
SECURE_ENV = {
    binary: ["FRESHET_INTERNAL_TOKEN"] for binary in BINARIES
}
SECURE_ENV["freshet-control-plane"] += ["FRESHET_ADMIN_TOKEN", ("FRESHET_MASTER_KEY", "FRESHET_MASTER_KEY_FILE")]
SECURE_ENV["freshet-frontend"] += ["FRESHET_ITERATOR_SECRET"]

# Environment variables read by libraries rather than clap flags.
OTHER_ENV = {"RUST_LOG"}
OTHER_ENV_PREFIXES = ("OTEL_",)

# ConfigMaps every namespace has.
CLUSTER_PROVIDED_CONFIGMAPS = {"kube-root-ca.crt"}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SHELL_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "dash", "/bin/dash"}
LOOPBACK = re.compile(r"(^|[/@])(127\.0\.0\.1|localhost|\[::1\])(:|/|$)")


# --------------------------------------------------------------------------
# The binaries' flags, from the Rust sources


class Flag:
    def __init__(self, long, env, default):
        self.long, self.env, self.default = long, env, default


class Cli:
    """The flags and environment variables of each Freshet binary."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.problems: list[str] = []
        self.flags: dict[str, dict[str, Flag]] = {}
        self.known_env: set[str] = set(OTHER_ENV)
        structs: dict[tuple[str, str], list] = {}
        parsers: dict[str, tuple[str, str]] = {}
        files = sorted(root.glob("services/*/src/**/*.rs")) + sorted(root.glob("libs/*/src/**/*.rs"))
        if not files:
            self.problems.append(f"no Rust sources under {root}/services and {root}/libs: cannot check flags")
            return
        for path in files:
            crate = "/".join(path.relative_to(root).parts[:2])
            text = path.read_text(encoding="utf-8", errors="replace")
            self.known_env.update(re.findall(r"env::var(?:_os)?\(\s*\"([A-Z0-9_]+)\"", text))
            for name, command, fields in parse_clap_structs(text):
                structs[(crate, name)] = fields
                if command:
                    parsers[command] = (crate, name)
        for binary in sorted(BINARIES):
            if binary not in parsers:
                self.problems.append(f"no clap Config with #[command(name = \"{binary}\")] in the sources")
                continue
            flags: dict[str, Flag] = {}
            self._collect(parsers[binary], structs, flags, set())
            self.flags[binary] = flags
            self.known_env.update(f.env for f in flags.values() if f.env)

    def _collect(self, key, structs, flags, seen):
        if key in seen:
            return
        seen.add(key)
        for field in structs[key]:
            if field[0] == "flatten":
                target = self._resolve(key[0], field[1], structs)
                if target is None:
                    self.problems.append(f"cannot find the clap Args struct {field[1]} flattened into {key[1]} ({key[0]})")
                else:
                    self._collect(target, structs, flags, seen)
            else:
                _, long, env, default = field
                flags["--" + long] = Flag("--" + long, env, default)

    @staticmethod
    def _resolve(crate, type_name, structs):
        if (crate, type_name) in structs:
            return (crate, type_name)
        found = [key for key in structs if key[1] == type_name and key[0].startswith("libs/")]
        found = found or [key for key in structs if key[1] == type_name]
        return found[0] if len(found) == 1 else None


def parse_clap_structs(text):
    """(name, command name or None, fields) of each clap-derived struct.

    A field is ("flatten", TypeName) or ("flag", long, env, default), where
    default is the literal default_value ("" if none, None if not literal).
    """
    for match in re.finditer(r"((?:#\[[^\]]*\]\s*|///[^\n]*\n\s*)+)pub struct (\w+)\s*\{", text):
        attrs = match.group(1)
        if not re.search(r"derive\([^)]*\b(?:clap::)?(?:Parser|Args)\b", attrs):
            continue
        command = re.search(r"#\[command\([^\]]*\bname\s*=\s*\"([^\"]+)\"", attrs)
        body = balanced_body(text, match.end() - 1)
        yield match.group(2), command.group(1) if command else None, list(parse_fields(body))


def balanced_body(text, open_brace):
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1:i]
    return text[open_brace + 1:]


def parse_fields(body):
    attrs: list[str] = []
    i = 0
    while i < len(body):
        if body.startswith("//", i):
            i = body.find("\n", i) + 1 or len(body)
        elif body.startswith("#[", i):
            depth, j = 0, i + 1
            while j < len(body):
                depth += {"[": 1, "]": -1}.get(body[j], 0)
                if depth == 0:
                    break
                j += 1
            attrs.append(body[i + 2:j])
            i = j + 1
        elif body[i].isspace():
            i += 1
        else:
            field = re.match(r"(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*([^,]+?)\s*(?:,|$)", body[i:], re.S)
            if not field:
                break
            name, ty = field.group(1), field.group(2)
            yield from field_flag(name, ty, attrs)
            attrs = []
            i += field.end()


def field_flag(name, ty, attrs):
    text = " ".join(attrs)
    if re.search(r"\b(?:command|clap)\(\s*flatten\s*\)", text):
        type_name = re.sub(r"<.*", "", ty).split("::")[-1].strip()
        yield ("flatten", type_name)
        return
    arg = next((a for a in attrs if re.match(r"\s*(?:arg|clap)\(", a)), None)
    if arg is None:
        return
    explicit = re.search(r"\blong\s*=\s*\"([^\"]+)\"", arg)
    if explicit:
        long = explicit.group(1)
    elif re.search(r"\blong\b(?!\s*=)", arg):
        long = name.replace("_", "-")
    else:
        return  # positional
    env = re.search(r"\benv\s*=\s*\"([^\"]+)\"", arg)
    literal = re.search(r"\bdefault_value\s*=\s*\"([^\"]*)\"", arg)
    if literal:
        default = literal.group(1)
    elif re.search(r"\bdefault_value(?:_t)?\b", arg):
        default = None
    else:
        default = ""
    yield ("flag", long, env.group(1) if env else None, default)


# --------------------------------------------------------------------------
# Helpers


def parse_quantity(value):
    """A Kubernetes quantity as a float (cores or bytes); None if unreadable."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", text)
    if not match:
        return None
    factor = {
        None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    }[match.group(2)]
    return float(match.group(1)) * factor


def selector_matches(selector, labels):
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def dig(obj, *path, default=None):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


class Objects:
    def __init__(self, docs):
        self.docs = docs
        self.by_key = {}
        for doc in docs:
            meta = doc.get("metadata") or {}
            self.by_key.setdefault((doc.get("kind"), meta.get("namespace"), meta.get("name")), doc)

    def get(self, kind, namespace, name):
        return self.by_key.get((kind, namespace, name))

    def of(self, *kinds):
        return [d for d in self.docs if d.get("kind") in kinds]


def ref(doc):
    meta = doc.get("metadata") or {}
    where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
    return f"{doc.get('kind', '?')} {where}{meta.get('name', '?')}"


# --------------------------------------------------------------------------
# The checks


class Validator:
    def __init__(self, docs, cli: Cli | None, external_secrets=()):
        self.objects = Objects(docs)
        self.cli = cli
        # Secrets created outside the kustomization (a secret manager):
        # present, with whatever keys are asked for.
        self.external_secrets = set(external_secrets)
        self.errors: list[str] = []
        self.namespaces = {dig(d, "metadata", "name") for d in self.objects.of("Namespace")}
        # Names the manifests themselves read: $(VAR) and shell $VAR references.
        self.referenced_env: set[str] = set()
        for workload in self.objects.of(*WORKLOADS):
            for container in self.all_containers(workload):
                for word in (container.get("command") or []) + (container.get("args") or []):
                    self.referenced_env.update(VAR_REF.findall(str(word)))
                    self.referenced_env.update(SHELL_VAR.findall(str(word)))

    def error(self, doc, message):
        self.errors.append(f"{ref(doc)}: {message}" if doc is not None else message)

    @staticmethod
    def all_containers(workload):
        spec = dig(workload, "spec", "template", "spec", default={}) or {}
        return (spec.get("initContainers") or []) + (spec.get("containers") or [])

    def run(self):
        seen = set()
        for doc in self.objects.docs:
            self.check_object(doc)
            key = (doc.get("kind"), dig(doc, "metadata", "namespace"), dig(doc, "metadata", "name"))
            if key in seen:
                self.error(doc, "defined twice")
            seen.add(key)
        for doc in self.objects.docs:
            kind = doc.get("kind")
            if kind in WORKLOADS:
                self.check_workload(doc)
            if kind == "Service":
                self.check_service(doc)
            if kind == "StatefulSet":
                self.check_statefulset(doc)
            if kind == "PersistentVolumeClaim":
                if not dig(doc, "spec", "resources", "requests", "storage"):
                    self.error(doc, "no spec.resources.requests.storage")
            if kind in ("RoleBinding", "ClusterRoleBinding"):
                self.check_binding(doc)
            if kind == "PodDisruptionBudget":
                self.check_budget(doc)
            if kind == "Secret":
                for key, value in (doc.get("data") or {}).items():
                    try:
                        base64.b64decode("".join(str(value).split()), validate=True)
                    except ValueError:
                        self.error(doc, f"data.{key} is not base64")
        self.check_expected()
        return self.errors

    # -- every object

    def check_object(self, doc):
        if not isinstance(doc, dict):
            self.errors.append(f"a document is not a mapping: {str(doc)[:60]!r}")
            return
        for field in ("apiVersion", "kind"):
            if not isinstance(doc.get(field), str) or not doc.get(field):
                self.error(doc, f"no {field}")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            self.error(doc, "no metadata.name")
            return
        name = str(meta["name"])
        if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            self.error(doc, f"metadata.name {name!r} is not a valid name")
        if doc.get("kind") in ("Service", "Namespace") and (not DNS1123_LABEL.match(name) or len(name) > 63):
            self.error(doc, f"metadata.name {name!r} must be a DNS label (63 characters, a-z 0-9 -)")
        kind = doc.get("kind")
        if kind in CLUSTER_SCOPED:
            if meta.get("namespace"):
                self.error(doc, "cluster-scoped, yet has a namespace")
        elif not meta.get("namespace"):
            self.error(doc, "namespaced kind without metadata.namespace")
        elif self.namespaces and meta["namespace"] not in self.namespaces:
            self.error(doc, f"namespace {meta['namespace']!r} is not among the rendered Namespaces {sorted(self.namespaces)}")

    # -- Deployments and StatefulSets

    def check_workload(self, doc):
        ns = dig(doc, "metadata", "namespace")
        selector = dig(doc, "spec", "selector")
        template = dig(doc, "spec", "template", default={}) or {}
        labels = dig(template, "metadata", "labels", default={}) or {}
        annotations = dig(template, "metadata", "annotations", default={}) or {}
        pod = template.get("spec") or {}
        if not selector:
            self.error(doc, "no spec.selector")
        elif not selector_matches(selector, labels):
            self.error(doc, f"spec.selector {selector} does not match the pod template's labels {labels}")
        containers = pod.get("containers") or []
        if not containers:
            self.error(doc, "no containers")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        claim_templates = {dig(t, "metadata", "name") for t in dig(doc, "spec", "volumeClaimTemplates", default=[]) or []}
        for volume in volumes.values():
            self.check_volume(doc, ns, volume)
        self.check_pod_security(doc, ns, pod)
        account = pod.get("serviceAccountName")
        if account and account != "default" and not self.objects.get("ServiceAccount", ns, account):
            self.error(doc, f"serviceAccountName {account!r}: no such ServiceAccount")
        port_names = set()
        names = set()
        for container in self.all_containers(doc):
            cname = container.get("name")
            if not cname:
                self.error(doc, "a container without a name")
                continue
            if cname in names:
                self.error(doc, f"two containers named {cname!r}")
            names.add(cname)
            init = container in (pod.get("initContainers") or [])
            self.check_container(doc, ns, container, init, volumes, claim_templates, annotations, port_names)

    def check_pod_security(self, doc, ns, pod):
        """The "restricted" Pod Security Standard, where the namespace enforces it."""
        namespace = self.objects.get("Namespace", None, ns)
        if dig(namespace, "metadata", "labels", "pod-security.kubernetes.io/enforce") != "restricted":
            return
        pod_context = pod.get("securityContext") or {}
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            self.error(doc, "restricted namespace: host namespaces are not allowed")
        for volume in pod.get("volumes") or []:
            if "hostPath" in volume:
                self.error(doc, f"restricted namespace: volume {volume.get('name')} is a hostPath")
        for container in self.all_containers(doc):
            context = container.get("securityContext") or {}
            where = f"container {container.get('name')}"
            def setting(key):
                return context.get(key, pod_context.get(key))
            if setting("runAsNonRoot") is not True:
                self.error(doc, f"{where}: restricted namespace needs runAsNonRoot: true")
            if setting("runAsUser") == 0:
                self.error(doc, f"{where}: restricted namespace forbids runAsUser: 0")
            if context.get("allowPrivilegeEscalation") is not False:
                self.error(doc, f"{where}: restricted namespace needs allowPrivilegeEscalation: false")
            if context.get("privileged"):
                self.error(doc, f"{where}: restricted namespace forbids privileged containers")
            if "ALL" not in (dig(context, "capabilities", "drop", default=[]) or []):
                self.error(doc, f"{where}: restricted namespace needs capabilities.drop: [ALL]")
            if set(dig(context, "capabilities", "add", default=[]) or []) - {"NET_BIND_SERVICE"}:
                self.error(doc, f"{where}: restricted namespace allows adding only NET_BIND_SERVICE")
            seccomp = dig(context, "seccompProfile", "type") or dig(pod_context, "seccompProfile", "type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                self.error(doc, f"{where}: restricted namespace needs seccompProfile RuntimeDefault or Localhost")

    def check_volume(self, doc, ns, volume):
        name = volume.get("name")
        if volume.get("secret"):
            secret = volume["secret"].get("secretName")
            if not volume["secret"].get("optional") and not self.has_secret(ns, secret):
                self.error(doc, f"volume {name}: Secret {secret!r} is not rendered")
        if volume.get("configMap"):
            self.check_configmap_ref(doc, ns, volume["configMap"], f"volume {name}")
        if volume.get("persistentVolumeClaim"):
            claim = volume["persistentVolumeClaim"].get("claimName")
            if not self.objects.get("PersistentVolumeClaim", ns, claim):
                self.error(doc, f"volume {name}: PersistentVolumeClaim {claim!r} is not rendered")
        for source in dig(volume, "projected", "sources", default=[]) or []:
            if source.get("configMap"):
                self.check_configmap_ref(doc, ns, source["configMap"], f"volume {name}")
            if source.get("secret"):
                secret = source["secret"].get("name")
                if not source["secret"].get("optional") and not self.has_secret(ns, secret):
                    self.error(doc, f"volume {name}: Secret {secret!r} is not rendered")

    def has_secret(self, ns, name):
        return name in self.external_secrets or self.objects.get("Secret", ns, name) is not None

    def check_configmap_ref(self, doc, ns, source, where):
        name = source.get("name")
        if name in CLUSTER_PROVIDED_CONFIGMAPS or source.get("optional"):
            return
        config = self.objects.get("ConfigMap", ns, name)
        if not config:
            self.error(doc, f"{where}: ConfigMap {name!r} is not rendered")
            return
        for item in source.get("items") or []:
            if item.get("key") not in (config.get("data") or {}):
                self.error(doc, f"{where}: ConfigMap {name!r} has no key {item.get('key')!r}")

    def container_env(self, doc, ns, container, where):
        """The container's environment as far as the manifests say: name -> value or None."""
        env = {}
        for source in container.get("envFrom") or []:
            if source.get("configMapRef"):
                name = source["configMapRef"].get("name")
                config = self.objects.get("ConfigMap", ns, name)
                if config:
                    env.update({k: str(v) for k, v in (config.get("data") or {}).items()})
                elif not source["configMapRef"].get("optional"):
                    self.error(doc, f"{where}: envFrom ConfigMap {name!r} is not rendered")
            if source.get("secretRef"):
                name = source["secretRef"].get("name")
                secret = self.objects.get("Secret", ns, name)
                if name in self.external_secrets:
                    pass
                elif secret:
                    env.update({k: None for k in list(secret.get("data") or {}) + list(secret.get("stringData") or {})})
                elif not source["secretRef"].get("optional"):
                    self.error(doc, f"{where}: envFrom Secret {name!r} is not rendered")
        for var in container.get("env") or []:
            name = var.get("name")
            if not name:
                self.error(doc, f"{where}: an env entry without a name")
                continue
            value_from = var.get("valueFrom")
            if value_from is None:
                env[name] = str(var.get("value", ""))
                continue
            env[name] = None
            key_ref = value_from.get("secretKeyRef")
            if key_ref and key_ref.get("name") in self.external_secrets:
                key_ref = None
            if key_ref:
                secret = self.objects.get("Secret", ns, key_ref.get("name"))
                keys = set((secret or {}).get("data") or {}) | set((secret or {}).get("stringData") or {})
                if key_ref.get("optional"):
                    pass
                elif not secret:
                    self.error(doc, f"{where}: env {name} takes Secret {key_ref.get('name')!r}, which the kustomization does not generate")
                elif key_ref.get("key") not in keys:
                    self.error(doc, f"{where}: env {name} takes key {key_ref.get('key')!r} of Secret {key_ref.get('name')!r}, which has only {sorted(keys)}")
            key_ref = value_from.get("configMapKeyRef")
            if key_ref:
                config = self.objects.get("ConfigMap", ns, key_ref.get("name"))
                if key_ref.get("optional"):
                    pass
                elif not config:
                    self.error(doc, f"{where}: env {name} takes ConfigMap {key_ref.get('name')!r}, which is not rendered")
                elif key_ref.get("key") not in (config.get("data") or {}):
                    self.error(doc, f"{where}: env {name} takes key {key_ref.get('key')!r} of ConfigMap {key_ref.get('name')!r}, which has no such key")
                else:
                    env[name] = str(config["data"][key_ref["key"]])
        return env

    def check_container(self, doc, ns, container, init, volumes, claim_templates, annotations, pod_port_names):
        cname = container["name"]
        where = f"{'init container' if init else 'container'} {cname}"
        if not container.get("image"):
            self.error(doc, f"{where}: no image")
        ports = container.get("ports") or []
        declared = {}
        for port in ports:
            pname, number = port.get("name"), port.get("containerPort")
            if not pname:
                self.error(doc, f"{where}: port {number} has no name")
            elif not PORT_NAME.match(pname) or len(pname) > 15 or "--" in pname:
                self.error(doc, f"{where}: port name {pname!r} is not a valid port name (15 characters, a-z 0-9 -)")
            elif pname in pod_port_names:
                self.error(doc, f"{where}: port name {pname!r} is used twice in the pod")
            if not isinstance(number, int) or not 0 < number < 65536:
                self.error(doc, f"{where}: containerPort {number!r} is not a port number")
            if pname:
                pod_port_names.add(pname)
                declared[pname] = number
        if not init:
            for probe_name in ("readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                if not probe:
                    self.error(doc, f"{where}: no {probe_name}")
                else:
                    self.check_probe(doc, where, probe_name, probe, declared)
            if container.get("startupProbe"):
                self.check_probe(doc, where, "startupProbe", container["startupProbe"], declared)
        resources = container.get("resources") or {}
        for section, fields in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            for field in fields:
                if dig(resources, section, field) is None:
                    self.error(doc, f"{where}: no resources.{section}.{field}")
        for field in ("cpu", "memory"):
            request, limit = dig(resources, "requests", field), dig(resources, "limits", field)
            if request is not None and parse_quantity(request) is None:
                self.error(doc, f"{where}: resources.requests.{field} {request!r} is not a quantity")
            if limit is not None and parse_quantity(limit) is None:
                self.error(doc, f"{where}: resources.limits.{field} {limit!r} is not a quantity")
            if request is not None and limit is not None and None not in (parse_quantity(request), parse_quantity(limit)):
                if parse_quantity(limit) < parse_quantity(request):
                    self.error(doc, f"{where}: resources.limits.{field} ({limit}) is below its request ({request})")
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes and mount.get("name") not in claim_templates:
                self.error(doc, f"{where}: volumeMount {mount.get('name')!r} names no volume or volumeClaimTemplate")
        env = self.container_env(doc, ns, container, where)
        for word in (container.get("command") or []) + (container.get("args") or []):
            for var in VAR_REF.findall(str(word)):
                if var not in env:
                    self.error(doc, f"{where}: $({var}) in its command or args is not defined in its environment")
        binary = freshet_binary(container)
        if binary in BINARIES:
            self.check_freshet(doc, where, container, binary, env, declared, annotations, init)

    def check_probe(self, doc, where, name, probe, declared):
        handlers = [h for h in ("httpGet", "tcpSocket", "grpc", "exec") if probe.get(h) is not None]
        if len(handlers) != 1:
            self.error(doc, f"{where}: {name} needs exactly one of httpGet, tcpSocket, grpc, exec (has {handlers or 'none'})")
            return
        handler = handlers[0]
        if handler == "exec":
            return
        port = probe[handler].get("port")
        if handler == "grpc" and not isinstance(port, int):
            self.error(doc, f"{where}: {name}.grpc.port must be a number, not {port!r}")
        if isinstance(port, str) and port not in declared:
            self.error(doc, f"{where}: {name} port {port!r} is not one of its named ports {sorted(declared)}")
        if isinstance(port, int) and port not in declared.values():
            self.error(doc, f"{where}: {name} port {port} is not one of its container ports {sorted(declared.values())}")

    def check_freshet(self, doc, where, container, binary, env, declared, annotations, init):
        if init:
            return
        words = freshet_words(container, binary)
        flags = None if self.cli is None else self.cli.flags.get(binary)
        given = set()
        for word in words:
            if not word.startswith("--"):
                continue
            flag = word.split("=", 1)[0]
            given.add(flag)
            if flags is not None and flag not in flags:
                self.error(doc, f"{where}: {binary} has no flag {flag} (known: {' '.join(sorted(flags))})")
        if self.cli is not None:
            for name in env:
                if name in self.cli.known_env or name in self.referenced_env or name.startswith(OTHER_ENV_PREFIXES):
                    continue
                self.error(doc, f"{where}: env {name} is read by no Freshet binary and referred to by nothing in the manifests (a typo?)")
        flag_values = flag_arguments(words)
        if flags is not None:
            for flag in flags.values():
                # Its value: the argument, else the environment (None: from
                # a Secret, unknown here), else the default.
                if flag.long in flag_values:
                    value, source = flag_values[flag.long], "as given"
                elif flag.env and flag.env in env:
                    value, source = env[flag.env], f"from {flag.env}"
                else:
                    value, source = flag.default, "its default"
                if value and LOOPBACK.search(value):
                    self.error(doc, f"{where}: {flag.long} is {value!r} ({source}), a loopback address no other pod reaches; set {flag.env or flag.long}")
            for required in REQUIRED_FLAGS.get(binary, []):
                env_name = flags[required].env if required in flags else None
                if required not in given and not (env_name and env_name in env):
                    self.error(doc, f"{where}: {binary} needs {required}" + (f" (or {env_name})" if env_name else ""))
            self.check_addresses(doc, where, flags, flag_values, env)
            listen = flag_values.get("--listen")
            if listen is None and "--listen" in flags and flags["--listen"].env:
                listen = env.get(flags["--listen"].env)
            if listen:
                port = listen.rsplit(":", 1)[-1]
                if port.isdigit() and int(port) not in declared.values():
                    self.error(doc, f"{where}: listens on {listen} but declares no containerPort {port}")
        # Metrics: a port named `metrics`, the one the service listens on and
        # the annotations announce.
        metrics = flag_values.get("--metrics-listen") or env.get("FRESHET_METRICS_LISTEN")
        if not metrics or metrics.strip() in ("off", ""):
            self.error(doc, f"{where}: metrics are not on: set FRESHET_METRICS_LISTEN (e.g. 0.0.0.0:9100)")
        else:
            port = metrics.rsplit(":", 1)[-1]
            if LOOPBACK.search(metrics):
                self.error(doc, f"{where}: metrics listen on {metrics}, which Prometheus cannot reach")
            if "metrics" not in declared:
                self.error(doc, f"{where}: no container port named 'metrics'")
            elif str(declared["metrics"]) != port:
                self.error(doc, f"{where}: port 'metrics' is {declared['metrics']} but FRESHET_METRICS_LISTEN is {metrics}")
            if annotations.get("prometheus.io/scrape") != "true":
                self.error(doc, "pod template lacks the annotation prometheus.io/scrape: \"true\"")
            if str(annotations.get("prometheus.io/port")) != port:
                self.error(doc, f"pod template's prometheus.io/port annotation ({annotations.get('prometheus.io/port')!r}) is not the metrics port {port}")
        # Secure mode: the tokens and keys each service needs.
        if env.get("FRESHET_AUTH") == "sigv4":
            for need in SECURE_ENV.get(binary, []):
                options = need if isinstance(need, tuple) else (need,)
                if not any(option in env for option in options):
                    self.error(doc, f"{where}: secure mode (FRESHET_AUTH=sigv4) needs {' or '.join(options)}")

    def check_addresses(self, doc, where, flags, flag_values, env):
        """Addresses of other services name rendered Services and their ports."""
        ns = dig(doc, "metadata", "namespace")
        for flag in flags.values():
            if not flag.long.endswith("-addr"):
                continue
            value = flag_values.get(flag.long)
            if value is None and flag.env:
                value = env.get(flag.env)
            if not value or ":" not in value:
                continue
            host, port = value.rsplit(":", 1)
            match = re.fullmatch(r"([a-z0-9-]+)(?:\.([a-z0-9-]+)(?:\.svc(?:\..+)?)?)?", host)
            if not match:
                continue  # outside the cluster, or an address: not ours to check
            service_ns = match.group(2) or ns
            if match.group(2) and match.group(2) not in self.namespaces:
                continue  # another namespace, or an external name
            service = self.objects.get("Service", service_ns, match.group(1))
            if not service:
                self.error(doc, f"{where}: {flag.long} is {value}, but there is no Service {service_ns}/{match.group(1)}")
            elif port.isdigit() and int(port) not in [p.get("port") for p in dig(service, "spec", "ports", default=[]) or []]:
                self.error(doc, f"{where}: {flag.long} is {value}, but Service {match.group(1)} has no port {port}")
        advertise = flag_values.get("--advertise")
        if advertise and doc.get("kind") == "StatefulSet":
            match = re.match(r"\$\(POD_NAME\)\.([a-z0-9-]+)\.", advertise)
            if match and match.group(1) != dig(doc, "spec", "serviceName"):
                self.error(doc, f"{where}: --advertise {advertise} names Service {match.group(1)!r}, not the StatefulSet's serviceName {dig(doc, 'spec', 'serviceName')!r}")

    # -- Services

    def pods_selected(self, service):
        ns = dig(service, "metadata", "namespace")
        selector = dig(service, "spec", "selector") or {}
        selected = []
        for workload in self.objects.of(*WORKLOADS):
            if dig(workload, "metadata", "namespace") != ns:
                continue
            labels = dig(workload, "spec", "template", "metadata", "labels", default={}) or {}
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                selected.append(workload)
        return selected

    def check_service(self, doc):
        selector = dig(doc, "spec", "selector")
        if not selector:
            if dig(doc, "spec", "type") != "ExternalName":
                self.error(doc, "no spec.selector")
            return
        selected = self.pods_selected(doc)
        if not selected:
            self.error(doc, f"selector {selector} matches the pods of no Deployment or StatefulSet")
            return
        ports = dig(doc, "spec", "ports", default=[]) or []
        if not ports:
            self.error(doc, "no ports")
        container_ports = {}
        for workload in selected:
            for container in dig(workload, "spec", "template", "spec", "containers", default=[]) or []:
                for port in container.get("ports") or []:
                    container_ports[port.get("name")] = port.get("containerPort")
        for port in ports:
            if len(ports) > 1 and not port.get("name"):
                self.error(doc, f"port {port.get('port')} has no name (needed when a Service has several)")
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str) and target not in container_ports:
                self.error(doc, f"targetPort {target!r} is no named port of the pods it selects ({sorted(k for k in container_ports if k)})")
            if isinstance(target, int) and target not in container_ports.values():
                self.error(doc, f"targetPort {target} is no container port of the pods it selects")
        if "metrics" in container_ports and not any(p.get("name") == "metrics" for p in ports):
            self.error(doc, "its pods have a 'metrics' port but the Service has no port named 'metrics' (a ServiceMonitor selects it by name)")

    def check_statefulset(self, doc):
        ns = dig(doc, "metadata", "namespace")
        service_name = dig(doc, "spec", "serviceName")
        service = self.objects.get("Service", ns, service_name)
        if not service_name:
            self.error(doc, "no spec.serviceName")
        elif not service:
            self.error(doc, f"serviceName {service_name!r}: no such Service")
        else:
            if dig(service, "spec", "clusterIP") != "None":
                self.error(doc, f"serviceName {service_name!r} is not headless (clusterIP: None)")
            if doc not in self.pods_selected(service):
                self.error(doc, f"its Service {service_name!r} does not select its pods")
        mounted = {m.get("name") for c in self.all_containers(doc) for m in c.get("volumeMounts") or []}
        for claim in dig(doc, "spec", "volumeClaimTemplates", default=[]) or []:
            name = dig(claim, "metadata", "name")
            if not name:
                self.error(doc, "a volumeClaimTemplate without metadata.name")
            if not dig(claim, "spec", "resources", "requests", "storage"):
                self.error(doc, f"volumeClaimTemplate {name}: no spec.resources.requests.storage")
            elif parse_quantity(dig(claim, "spec", "resources", "requests", "storage")) is None:
                self.error(doc, f"volumeClaimTemplate {name}: storage request is not a quantity")
            if not dig(claim, "spec", "accessModes"):
                self.error(doc, f"volumeClaimTemplate {name}: no spec.accessModes")
            if name and name not in mounted:
                self.error(doc, f"volumeClaimTemplate {name} is mounted by no container")

    def check_budget(self, doc):
        ns = dig(doc, "metadata", "namespace")
        selector = dig(doc, "spec", "selector")
        if not selector:
            self.error(doc, "no spec.selector")
            return
        if dig(doc, "spec", "minAvailable") is None and dig(doc, "spec", "maxUnavailable") is None:
            self.error(doc, "needs minAvailable or maxUnavailable")
        matched = [
            w for w in self.objects.of(*WORKLOADS)
            if dig(w, "metadata", "namespace") == ns
            and selector_matches(selector, dig(w, "spec", "template", "metadata", "labels", default={}) or {})
        ]
        if not matched:
            self.error(doc, f"selector {selector} matches the pods of no Deployment or StatefulSet")

    def check_binding(self, doc):
        ns = dig(doc, "metadata", "namespace")
        role = doc.get("roleRef") or {}
        role_ns = None if role.get("kind") == "ClusterRole" else ns
        if not self.objects.get(role.get("kind"), role_ns, role.get("name")):
            self.error(doc, f"roleRef {role.get('kind')} {role.get('name')!r} is not rendered")
        for subject in doc.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject_ns = subject.get("namespace") or ns
                if not self.objects.get("ServiceAccount", subject_ns, subject.get("name")):
                    self.error(doc, f"subject ServiceAccount {subject_ns}/{subject.get('name')} is not rendered")

    # -- the six components

    def check_expected(self):
        for name, (kind, binary) in EXPECTED.items():
            # By name, or by component label (an overlay may add a prefix).
            found = [d for d in self.objects.of(kind) if dig(d, "metadata", "name") == name]
            found = found or [
                d for d in self.objects.of(kind)
                if dig(d, "spec", "template", "metadata", "labels", "app.kubernetes.io/component") == name
            ]
            if not found:
                self.errors.append(f"missing {kind} {name!r} (the {binary} component)")
                continue
            containers = dig(found[0], "spec", "template", "spec", "containers", default=[]) or []
            if not any(freshet_binary(c) == binary for c in containers):
                self.error(found[0], f"no container runs {binary}")


def freshet_binary(container):
    """The Freshet binary a container runs, if any."""
    words, _ = command_words(container)
    for word in words:
        base = word.rsplit("/", 1)[-1]
        if base in BINARIES or base == "freshet-admin":
            return base
    return None


def command_words(container):
    """The container's command and args as words, a shell script's split."""
    command = [str(w) for w in container.get("command") or []]
    args = [str(w) for w in container.get("args") or []]
    if command and command[0] in SHELLS and "-c" in command[1:3]:
        index = command.index("-c")
        script = command[index + 1] if index + 1 < len(command) else ""
        try:
            words = shlex.split(script, comments=True)
        except ValueError:
            words = script.split()
        # Words after the script are $0 (a name) and then "$@".
        return words + command[index + 3:] + args, True
    return command + args, False


def freshet_words(container, binary):
    """The words after the binary's name: its flags and their values."""
    words, _ = command_words(container)
    for i, word in enumerate(words):
        if word.rsplit("/", 1)[-1] == binary:
            return words[i + 1:]
    return words


def flag_arguments(words):
    values = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            if "=" in word:
                flag, value = word.split("=", 1)
            else:
                flag = word
                value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else ""
            values[flag] = value
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="rendered YAML (default: stdin)")
    parser.add_argument("--external-secret", action="append", default=[], metavar="NAME",
                        help="a Secret created outside the kustomization (by a secret manager): taken as present")
    parser.add_argument("--source-root", default=str(REPO),
                        help="the Freshet checkout whose services' flags to check against (default: %(default)s)")
    options = parser.parse_args()
    texts = [pathlib.Path(f).read_text() for f in options.files] or [sys.stdin.read()]
    docs = []
    for text in texts:
        try:
            docs += [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as problem:
            print(f"validate.py: the input is not YAML: {problem}", file=sys.stderr)
            return 1
    if not docs:
        print("validate.py: no objects on the input (did kubectl kustomize fail?)", file=sys.stderr)
        return 1
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            docs += doc.get("items") or []
    docs = [d for d in docs if not (isinstance(d, dict) and d.get("kind") == "List")]
    cli = Cli(pathlib.Path(options.source_root))
    errors = list(cli.problems)
    errors += Validator(docs, cli if not cli.problems else None, options.external_secret).run()
    if errors:
        for line in errors:
            print(f"k8s: {line}", file=sys.stderr)
        print(f"validate.py: {len(errors)} problem(s) in {len(docs)} objects", file=sys.stderr)
        return 1
    kinds = defaultdict(int)
    for doc in docs:
        kinds[doc["kind"]] += 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    flags = sum(len(f) for f in cli.flags.values())
    print(f"validate.py: {len(docs)} objects valid ({summary}); flags checked against {flags} in {len(cli.flags)} binaries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
