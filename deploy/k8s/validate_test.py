#!/usr/bin/env python3
"""Tests of validate.py: the base passes, and each kind of mistake fails.

    python3 deploy/k8s/validate_test.py      (needs kubectl and PyYAML)

Each test breaks one thing in the rendered base and expects the validator
to name it.
"""

import copy
import pathlib
import subprocess
import sys
import unittest

import yaml

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
import validate  # noqa: E402

RENDERED = None
CLI = None


def setUpModule():
    global RENDERED, CLI
    text = subprocess.run(["kubectl", "kustomize", str(HERE)], check=True, capture_output=True, text=True).stdout
    RENDERED = [d for d in yaml.safe_load_all(text) if d]
    CLI = validate.Cli(validate.REPO)


def find(docs, kind, name):
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"].startswith(name):
            return doc
    raise AssertionError(f"no {kind} {name}")


def container(docs, kind, name):
    return find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


class Validation(unittest.TestCase):
    def errors(self, docs):
        return validate.Validator(docs, CLI).run()

    def assertFails(self, docs, *fragments):
        errors = self.errors(docs)
        text = "\n".join(errors)
        for fragment in fragments:
            self.assertIn(fragment, text, f"expected a problem mentioning {fragment!r}; got:\n{text or '(none)'}")

    def broken(self):
        return copy.deepcopy(RENDERED)

    def test_the_base_is_valid(self):
        self.assertEqual(CLI.problems, [])
        self.assertEqual(self.errors(self.broken()), [])

    def test_missing_probe(self):
        docs = self.broken()
        del container(docs, "Deployment", "timer")["readinessProbe"]
        self.assertFails(docs, "Deployment freshet/timer: container timer: no readinessProbe")

    def test_probe_on_an_undeclared_port(self):
        docs = self.broken()
        container(docs, "Deployment", "cache")["livenessProbe"]["grpc"]["port"] = 7999
        self.assertFails(docs, "livenessProbe port 7999 is not one of its container ports")

    def test_secret_key_that_is_not_generated(self):
        docs = self.broken()
        env = container(docs, "Deployment", "frontend")["env"]
        next(e for e in env if e["name"] == "FRESHET_ITERATOR_SECRET")["valueFrom"]["secretKeyRef"]["key"] = "NOPE"
        self.assertFails(docs, "takes key 'NOPE' of Secret")

    def test_secret_that_is_not_generated(self):
        docs = self.broken()
        env = container(docs, "Deployment", "membership")["env"]
        next(e for e in env if e["name"] == "DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"] = "other"
        self.assertFails(docs, "takes Secret 'other', which the kustomization does not generate")

    def test_selector_that_misses_the_template(self):
        docs = self.broken()
        find(docs, "Deployment", "membership")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "x"
        self.assertFails(docs, "Deployment freshet/membership: spec.selector")

    def test_service_selecting_nothing(self):
        docs = self.broken()
        find(docs, "Service", "cache")["spec"]["selector"] = {"app": "nothing"}
        self.assertFails(docs, "Service freshet/cache: selector {'app': 'nothing'} matches the pods of no")

    def test_service_target_port_missing(self):
        docs = self.broken()
        find(docs, "Service", "frontend")["spec"]["ports"][0]["targetPort"] = "web"
        self.assertFails(docs, "targetPort 'web' is no named port")

    def test_statefulset_service_not_headless(self):
        docs = self.broken()
        find(docs, "Service", "storage-worker")["spec"]["clusterIP"] = "10.0.0.9"
        self.assertFails(docs, "serviceName 'storage-worker' is not headless")

    def test_claim_template_without_storage(self):
        docs = self.broken()
        del find(docs, "StatefulSet", "storage-worker")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]
        self.assertFails(docs, "volumeClaimTemplate data: no spec.resources.requests.storage")

    def test_unknown_flag(self):
        docs = self.broken()
        container(docs, "Deployment", "timer")["args"] = ["--listn", "0.0.0.0:7051"]
        self.assertFails(docs, "freshet-timer has no flag --listn")

    def test_listen_left_on_loopback(self):
        docs = self.broken()
        container(docs, "Deployment", "timer")["args"] = []
        self.assertFails(docs, "--listen is '127.0.0.1:7051' (its default), a loopback address")

    def test_address_left_at_its_loopback_default(self):
        docs = self.broken()
        del find(docs, "ConfigMap", "freshet-config")["data"]["FRESHET_TIMER_ADDR"]
        self.assertFails(docs, "--timer-addr is '127.0.0.1:7051' (its default)")

    def test_address_naming_no_service(self):
        docs = self.broken()
        find(docs, "ConfigMap", "freshet-config")["data"]["FRESHET_CACHE_ADDR"] = "shard-cache:7053"
        self.assertFails(docs, "--cache-addr is shard-cache:7053, but there is no Service freshet/shard-cache")

    def test_address_with_a_port_the_service_lacks(self):
        docs = self.broken()
        find(docs, "ConfigMap", "freshet-config")["data"]["FRESHET_CACHE_ADDR"] = "cache:7000"
        self.assertFails(docs, "Service cache has no port 7000")

    def test_advertised_name_not_the_headless_service(self):
        docs = self.broken()
        worker = container(docs, "StatefulSet", "storage-worker")
        index = worker["args"].index("--advertise")
        worker["args"][index + 1] = worker["args"][index + 1].replace(".storage-worker.", ".workers.")
        self.assertFails(docs, "names Service 'workers', not the StatefulSet's serviceName 'storage-worker'")

    def test_misspelt_environment_variable(self):
        docs = self.broken()
        find(docs, "ConfigMap", "freshet-config")["data"]["FRESHET_MEMBRSHIP_ADDR"] = "membership:7052"
        self.assertFails(docs, "env FRESHET_MEMBRSHIP_ADDR is read by no Freshet binary")

    def test_metrics_off(self):
        docs = self.broken()
        find(docs, "ConfigMap", "freshet-config")["data"]["FRESHET_METRICS_LISTEN"] = "off"
        self.assertFails(docs, "metrics are not on")

    def test_metrics_port_mismatch(self):
        docs = self.broken()
        find(docs, "ConfigMap", "freshet-config")["data"]["FRESHET_METRICS_LISTEN"] = "0.0.0.0:9200"
        self.assertFails(docs, "port 'metrics' is 9100 but FRESHET_METRICS_LISTEN is 0.0.0.0:9200")

    def test_unnamed_port(self):
        docs = self.broken()
        del container(docs, "Deployment", "control-plane")["ports"][0]["name"]
        self.assertFails(docs, "port 7054 has no name")

    def test_missing_component(self):
        docs = [d for d in self.broken() if not (d["kind"] == "Deployment" and d["metadata"]["name"] == "frontend")]
        self.assertFails(docs, "missing Deployment 'frontend'")

    def test_missing_namespace(self):
        docs = self.broken()
        del find(docs, "Deployment", "cache")["metadata"]["namespace"]
        self.assertFails(docs, "namespaced kind without metadata.namespace")

    def test_undefined_variable_in_args(self):
        docs = self.broken()
        worker = container(docs, "StatefulSet", "storage-worker")
        index = worker["args"].index("--advertise")
        worker["args"][index + 1] = worker["args"][index + 1].replace("$(POD_NAMESPACE)", "$(POD_NAMEZ)")
        self.assertFails(docs, "$(POD_NAMEZ) in its command or args is not defined")

    def test_worker_without_data_dir(self):
        docs = self.broken()
        worker = container(docs, "StatefulSet", "storage-worker")
        index = worker["args"].index("--data-dir")
        del worker["args"][index:index + 2]
        self.assertFails(docs, "freshet-storage-worker needs --data-dir")

    def test_worker_without_its_id(self):
        docs = self.broken()
        worker = container(docs, "StatefulSet", "storage-worker")
        worker["command"][2] = worker["command"][2].replace('--worker-id "$id" ', "")
        self.assertFails(docs, "freshet-storage-worker needs --worker-id")

    def test_grpc_probe_port_by_name(self):
        docs = self.broken()
        container(docs, "Deployment", "membership")["readinessProbe"]["grpc"]["port"] = "grpc"
        self.assertFails(docs, "readinessProbe.grpc.port must be a number")

    def test_secure_mode_without_the_admin_token(self):
        docs = self.broken()
        plane = container(docs, "Deployment", "control-plane")
        plane["env"] = [e for e in plane["env"] if e["name"] != "FRESHET_ADMIN_TOKEN"]
        self.assertFails(docs, "secure mode (FRESHET_AUTH=sigv4) needs FRESHET_ADMIN_TOKEN")

    def test_limit_below_request(self):
        docs = self.broken()
        container(docs, "Deployment", "timer")["resources"]["limits"]["memory"] = "32Mi"
        self.assertFails(docs, "resources.limits.memory (32Mi) is below its request (64Mi)")

    def test_missing_resources(self):
        docs = self.broken()
        del container(docs, "Deployment", "timer")["resources"]["requests"]
        self.assertFails(docs, "no resources.requests.cpu", "no resources.requests.memory")

    def test_restricted_namespace_and_a_root_container(self):
        docs = self.broken()
        context = container(docs, "Deployment", "cache")["securityContext"]
        context["allowPrivilegeEscalation"] = True
        find(docs, "Deployment", "cache")["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
        self.assertFails(docs, "container cache: restricted namespace needs runAsNonRoot: true",
                         "container cache: restricted namespace needs allowPrivilegeEscalation: false")

    def test_disruption_budget_selecting_nothing(self):
        docs = self.broken()
        find(docs, "PodDisruptionBudget", "storage-worker")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "workers"
        self.assertFails(docs, "PodDisruptionBudget freshet/storage-worker: selector")

    def test_binding_to_a_missing_service_account(self):
        docs = [d for d in self.broken() if d["kind"] != "ServiceAccount"]
        self.assertFails(docs, "serviceAccountName 'freshet-storage-worker': no such ServiceAccount",
                         "subject ServiceAccount freshet/freshet-storage-worker is not rendered")


if __name__ == "__main__":
    unittest.main()
