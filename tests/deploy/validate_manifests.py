#!/usr/bin/env python3
"""Validates what `kubectl apply -k deploy/` would send to the API server.

Renders deploy/ exactly as checked in (no generated files: the control plane
creates the mesh CA Secret and the trust-anchor ConfigMap itself), then checks every rendered object in strict mode against the Kubernetes
OpenAPI v2 definitions that Debian ships in golang-k8s-kube-openapi-dev
(Kubernetes v1.14, or v1.13 if v1.14 lacks a kind we render):

  * the object's apiVersion/kind must map to a definition through
    x-kubernetes-group-version-kind (a kind without a schema fails);
  * unknown fields fail (additionalProperties: false wherever a definition has
    properties and says nothing about additional ones), wrong types fail,
    missing required fields fail; IntOrString and Quantity take strings and
    integers.

It also checks a few properties of the install that no schema can express
(the CA key stays off the nodes, the agent's capabilities and API access, an
agent rollout that surges without host ports and drains within the grace period),
and proves the validator can fail: mutated copies (a typo'd field, a wrong
type, a missing required field, an unknown kind) must be rejected.

Usage: validate_manifests.py [--repo DIR] [--kubectl PATH] [--schema FILE]
"""
import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import jsonschema
    import yaml
    from crd_schema import crd_errors, is_crd_v1
except ImportError as e:  # pragma: no cover - environment problem, said plainly
    sys.exit(f"validate_manifests: {e}; run `bash tools/deps.sh` (python3-jsonschema python3-yaml)")

OPENAPI_ROOT = "/usr/share/gocode/src/k8s.io/kube-openapi"
SCHEMAS = [  # newest first
    f"{OPENAPI_ROOT}/test/integration/testdata/aggregator/openapi.json",
    f"{OPENAPI_ROOT}/pkg/schemaconv/testdata/swagger.json",
]
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
AGENT_CAPABILITIES = {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"}


def gvk_key(api_version, kind):
    group, _, version = api_version.rpartition("/")
    return (group, version, kind)


class Schema:
    """The definitions of one swagger file, made strict, indexed by GVK."""

    def __init__(self, path):
        with open(path) as f:
            doc = json.load(f)
        self.path = path
        self.version = doc.get("info", {}).get("version", "unknown")
        self.definitions = doc["definitions"]
        self.by_gvk = {}
        for name, definition in self.definitions.items():
            for gvk in definition.get("x-kubernetes-group-version-kind", []):
                self.by_gvk[(gvk["group"], gvk["version"], gvk["kind"])] = name
        for name in (INT_OR_STRING, QUANTITY):
            if name in self.definitions:
                self.definitions[name] = {
                    "description": self.definitions[name].get("description", ""),
                    "type": ["string", "integer"],
                }
        # Fields newer than the schema Debian ships, as Kubernetes defines them:
        # a DaemonSet's rollingUpdate.maxSurge (v1.21, GA in v1.25), which the
        # agent's upgrade rollout needs.
        rolling = self.definitions.get("io.k8s.api.apps.v1.RollingUpdateDaemonSet")
        if rolling is not None:
            rolling.setdefault("properties", {}).setdefault(
                "maxSurge", {"$ref": f"#/definitions/{INT_OR_STRING}"})
        for definition in self.definitions.values():
            _make_strict(definition)
        self._validators = {}

    def definition_for(self, obj):
        return self.by_gvk.get(gvk_key(obj.get("apiVersion", ""), obj.get("kind", "")))

    def errors(self, obj):
        """Every violation of obj, as 'path: message' strings; [] when valid."""
        if not isinstance(obj, dict):
            return ["<root>: not an object"]
        name = self.definition_for(obj)
        if name is None:
            return [
                f"<root>: no schema for apiVersion {obj.get('apiVersion')!r} kind {obj.get('kind')!r} "
                f"in Kubernetes {self.version} ({self.path})"
            ]
        validator = self._validators.get(name)
        if validator is None:
            root = {"$ref": f"#/definitions/{name}", "definitions": self.definitions}
            validator = jsonschema.Draft4Validator(root)
            self._validators[name] = validator
        out = []
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in err.absolute_path) or "<root>"
            out.append(f"{path}: {err.message}")
        return out


def _make_strict(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _make_strict(value)
    elif isinstance(node, list):
        for value in node:
            _make_strict(value)


def render(repo, kubectl, workdir):
    """kubectl kustomize on a copy of deploy/ without any CA files; returns the objects."""
    deploy = os.path.join(workdir, "deploy")
    shutil.copytree(os.path.join(repo, "deploy"), deploy,
                    ignore=lambda d, names: [n for n in names if n.endswith(".pem")])
    out = subprocess.run([kubectl, "kustomize", deploy], check=True, capture_output=True, text=True)
    return [o for o in yaml.safe_load_all(out.stdout) if o is not None]


def describe(obj):
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('apiVersion')} {obj.get('kind')} {where}{meta.get('name')}"


def pod_spec(obj):
    return obj.get("spec", {}).get("template", {}).get("spec", {})


def find(objects, kind, name_prefix):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} named {name_prefix}*, found {len(found)}")
    return found[0]


def invariants(objects):
    """Properties of the install that a schema cannot check; returns failures."""
    failures = []

    def expect(cond, message):
        if not cond:
            failures.append(message)

    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    agent = find(objects, "DaemonSet", "sluice-agent")
    cp = find(objects, "Deployment", "sluice-controlplane")
    cp_args = pod_spec(cp)["containers"][0].get("args", [])

    def arg(flag):
        return cp_args[cp_args.index(flag) + 1] if flag in cp_args else None

    # The control plane keeps the CA in a Secret and publishes the trust
    # anchor in a ConfigMap, both through the API: nothing is generated first.
    ca_secret = (arg("--ca-secret") or "/").split("/")[1]
    anchor_cm = (arg("--trust-anchor-configmap") or "/").split("/")[1]
    expect(ca_secret == "sluice-ca", f"the control plane must keep the CA in Secret sluice-ca, got {arg('--ca-secret')}")
    expect(anchor_cm == "sluice-ca-root",
           f"the control plane must publish the trust anchor in sluice-ca-root, got {arg('--trust-anchor-configmap')}")

    # Every Secret/ConfigMap a pod mounts exists, or is the one the control plane writes.
    for workload in (agent, cp):
        for vol in pod_spec(workload).get("volumes", []):
            if "secret" in vol:
                expect(("Secret", vol["secret"]["secretName"]) in names,
                       f"{describe(workload)} mounts missing Secret {vol['secret']['secretName']}")
            if "configMap" in vol:
                expect(("ConfigMap", vol["configMap"]["name"]) in names or vol["configMap"]["name"] == anchor_cm,
                       f"{describe(workload)} mounts missing ConfigMap {vol['configMap']['name']}")

    # The CA key never reaches a node: no pod mounts the CA Secret (the control
    # plane reads it through the API), the agent mounts no Secret at all, and
    # only the control plane may read it, by name.
    for o in objects:
        spec = pod_spec(o)
        for vol in spec.get("volumes", []):
            secret = vol.get("secret", {}).get("secretName")
            expect(secret != ca_secret, f"{describe(o)} mounts the CA Secret {ca_secret}")
    expect(not any("secret" in v for v in pod_spec(agent).get("volumes", [])),
           "the agent DaemonSet mounts a Secret")
    for o in objects:
        if o["kind"] in ("Role", "ClusterRole"):
            for rule in o.get("rules", []):
                if "secrets" in rule.get("resources", []) and set(rule.get("verbs", [])) & {"get", "list", "watch"}:
                    expect(o["kind"] == "Role" and rule.get("resourceNames") == [ca_secret]
                           and "list" not in rule["verbs"] and "watch" not in rule["verbs"],
                           f"{describe(o)} may read Secrets beyond {ca_secret}")

    # The agent has no API access: no token mounted, no binding names it.
    expect(pod_spec(agent).get("automountServiceAccountToken") is False,
           "the agent pod must set automountServiceAccountToken: false")
    for o in objects:
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for s in o.get("subjects", []):
                expect(s.get("name") != "sluice-agent", f"{describe(o)} grants the agent API access")

    # The agent container: drop ALL, add exactly the four, never privileged.
    containers = {c["name"]: c for c in pod_spec(agent)["containers"]}
    sc = containers.get("agent", {}).get("securityContext", {})
    caps = sc.get("capabilities", {})
    expect(caps.get("drop") == ["ALL"], "the agent container must drop ALL capabilities")
    expect(set(caps.get("add", [])) == AGENT_CAPABILITIES,
           f"the agent container adds {caps.get('add')}, expected {sorted(AGENT_CAPABILITIES)}")
    expect(not sc.get("privileged"), "the agent container must not be privileged")
    installer = containers.get("cni-installer", {})
    expect(installer.get("command", [])[1:2] == ["install"],
           "the DaemonSet must run `sluice-cni install` as its cni-installer container")
    expect(pod_spec(agent).get("hostNetwork") is True, "the agent must use the host network")

    # Upgrades (docs/install.md): the new agent pod starts beside the old one
    # (no host port may keep it off the node), and the old one's drain ends
    # before kubelet's grace period does.
    rolling = agent["spec"].get("updateStrategy", {}).get("rollingUpdate", {})
    expect(rolling.get("maxSurge") == 1 and rolling.get("maxUnavailable") == 0,
           f"the agent DaemonSet must roll with maxSurge 1, maxUnavailable 0, got {rolling}")
    for c in pod_spec(agent)["containers"]:
        ports = [p for p in c.get("ports", []) if p.get("hostPort") or pod_spec(agent).get("hostNetwork")]
        expect(not ports, f"container {c['name']} declares host ports {ports}: a surge pod cannot start beside the old one")
    agent_args = containers.get("agent", {}).get("args", [])
    drain = int(agent_args[agent_args.index("--drain-seconds") + 1]) if "--drain-seconds" in agent_args else 25
    grace = pod_spec(agent).get("terminationGracePeriodSeconds", 30)
    expect(drain < grace, f"--drain-seconds {drain} must stay below terminationGracePeriodSeconds {grace}")
    return failures


def self_checks(schema, objects):
    """Proves the validator rejects what it must and accepts what it should."""
    agent = find(objects, "DaemonSet", "sluice-agent")
    failures = []

    def mutated(fn):
        obj = copy.deepcopy(agent)
        fn(obj)
        return obj

    def typo(o):
        o["spec"]["template"]["spec"]["hostNetwrok"] = True

    def nested_typo(o):
        o["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPropogation"] = "None"

    def wrong_type(o):
        o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"

    def wrong_type_list(o):
        o["spec"]["template"]["spec"]["containers"][0]["args"] = "--node-name x"

    def missing_required(o):
        del o["spec"]["template"]["spec"]["containers"][0]["name"]

    def missing_selector(o):
        del o["spec"]["selector"]

    must_fail = {
        "a typo'd pod spec field (hostNetwrok)": (mutated(typo), "hostNetwrok"),
        "a typo'd nested field (mountPropogation)": (mutated(nested_typo), "mountPropogation"),
        "a string where an integer belongs": (mutated(wrong_type), "terminationGracePeriodSeconds"),
        "a string where a list belongs": (mutated(wrong_type_list), "args"),
        "a container without its required name": (mutated(missing_required), "name"),
        "a DaemonSet without its required selector": (mutated(missing_selector), "selector"),
        "a kind with no schema": ({"apiVersion": "example.com/v1", "kind": "Widget",
                                   "metadata": {"name": "w"}}, "no schema"),
        "a known kind under a wrong apiVersion": (dict(mutated(lambda o: None), apiVersion="apps/v9"),
                                                  "no schema"),
    }
    for what, (obj, needle) in must_fail.items():
        errs = schema.errors(obj)
        if not errs:
            failures.append(f"self-check: {what} was accepted")
        elif not any(needle in e for e in errs):
            failures.append(f"self-check: {what} was rejected for another reason: {errs}")
        else:
            print(f"rejected (as it must) {what}: {errs[0]}")

    crd = find(objects, "CustomResourceDefinition", "authorizationpolicies.")

    def crd_mutated(fn):
        obj = copy.deepcopy(crd)
        fn(obj)
        return obj

    def untyped(o):
        del o["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["action"]["type"]

    def crd_typo(o):
        o["spec"]["versions"][0]["subresource"] = {"status": {}}

    for what, obj, needle in [
            ("a CRD schema node without a type", crd_mutated(untyped), "type is required"),
            ("a typo'd CRD field (subresource)", crd_mutated(crd_typo), "subresource")]:
        errs = crd_errors(obj)
        if any(needle in e for e in errs):
            print(f"rejected (as it must) {what}: {errs[0]}")
        else:
            failures.append(f"self-check: {what} was not rejected as it must be: {errs}")

    # The invariants must be able to fail too.
    def leak_ca_key(objs):
        pod_spec(find(objs, "DaemonSet", "sluice-agent"))["volumes"].append(
            {"name": "leak", "secret": {"secretName": "sluice-ca"}})

    def read_all_secrets(objs):
        find(objs, "ClusterRole", "sluice-controlplane")["rules"].append(
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]})

    def extra_capability(objs):
        agent_pod = pod_spec(find(objs, "DaemonSet", "sluice-agent"))
        agent_pod["containers"][0]["securityContext"]["capabilities"]["add"].append("SYS_PTRACE")

    def agent_binding(objs):
        find(objs, "ClusterRoleBinding", "sluice-controlplane")["subjects"].append(
            {"kind": "ServiceAccount", "name": "sluice-agent", "namespace": "sluice-system"})

    def host_port(objs):
        pod_spec(find(objs, "DaemonSet", "sluice-agent"))["containers"][0]["ports"] = [{"containerPort": 15020}]

    def long_drain(objs):
        pod_spec(find(objs, "DaemonSet", "sluice-agent"))["terminationGracePeriodSeconds"] = 20

    for what, fn, needle in [
            ("a host port on the agent", host_port, "declares host ports"),
            ("a drain longer than the grace period", long_drain, "must stay below"),
            ("the agent mounting the CA Secret", leak_ca_key, "CA Secret"),
            ("an extra agent capability", extra_capability, "SYS_PTRACE"),
            ("a binding granting the agent API access", agent_binding, "grants the agent"),
            ("a role reading every Secret", read_all_secrets, "may read Secrets")]:
        objs = copy.deepcopy(objects)
        fn(objs)
        found = [f for f in invariants(objs) if needle in f]
        if found:
            print(f"rejected (as it must) {what}: {found[0]}")
        else:
            failures.append(f"self-check: invariants accepted {what}")

    def port_name(o):
        o["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "admin"

    def int_quantity(o):
        o["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = 1073741824

    must_pass = {
        "IntOrString as a string (port: admin)": mutated(port_name),
        "Quantity as an integer (memory: 1073741824)": mutated(int_quantity),
    }
    for what, obj in must_pass.items():
        errs = schema.errors(obj)
        if errs:
            failures.append(f"self-check: {what} was rejected: {errs}")
        else:
            print(f"accepted (as it must) {what}")
    return failures


def pick_schema(objects, override):
    candidates = [override] if override else SCHEMAS
    last = None
    for path in candidates:
        if not os.path.exists(path):
            continue
        schema = Schema(path)
        last = schema
        if all(schema.definition_for(o) for o in objects if not is_crd_v1(o)):
            return schema
    if last is None:
        sys.exit(f"validate_manifests: no OpenAPI schema at {', '.join(candidates)}; "
                 "run `bash tools/deps.sh` (golang-k8s-kube-openapi-dev)")
    return last  # validation then reports the kinds it lacks


def canonical(objs):
    return sorted(json.dumps(o, sort_keys=True) for o in objs)


def sluicectl_manifests(sluicectl, repo, objects, schema):
    """`sluicectl install` prints what `kubectl apply -k deploy/` applies; with --ca-dir
    the CA Secret besides; `sluicectl uninstall` a valid DaemonSet running a real
    `sluice-cni uninstall` command line. Returns failures."""
    failures = []

    def objs_of(*args):
        out = subprocess.run([sluicectl, *args], check=True, capture_output=True, text=True).stdout
        return [o for o in yaml.safe_load_all(out) if o is not None]

    plain = objs_of("install")
    if canonical(plain) != canonical(objects):
        failures.append("`sluicectl install` differs from `kubectl kustomize deploy/`: "
                        f"{sorted(describe(o) for o in plain)} vs {sorted(describe(o) for o in objects)}")
    else:
        print(f"ok   sluicectl install: the same {len(plain)} objects as kubectl kustomize deploy/")
    workdir = tempfile.mkdtemp(prefix="sluice-ca-")
    try:
        subprocess.run(["bash", os.path.join(repo, "tools", "gen-ca.sh"), workdir], check=True,
                       stdout=subprocess.DEVNULL)
        with_ca = objs_of("install", "--ca-dir", workdir)
        secrets = [o for o in with_ca if o["kind"] == "Secret"]
        if len(secrets) != 1 or secrets[0]["metadata"] != {
                "name": "sluice-ca", "namespace": "sluice-system",
                "labels": {"app.kubernetes.io/part-of": "sluice"}}:
            failures.append(f"`sluicectl install --ca-dir` must add the Secret sluice-system/sluice-ca: {secrets}")
        else:
            import base64
            for key in ("root-cert.pem", "ca-cert.pem", "ca-key.pem"):
                with open(os.path.join(workdir, key)) as f:
                    if base64.b64decode(secrets[0]["data"][key]).decode() != f.read():
                        failures.append(f"`sluicectl install --ca-dir`: {key} is not the file's content")
            errs = schema.errors(secrets[0])
            failures += [f"the --ca-dir Secret: {e}" for e in errs]
            if [o["kind"] for o in with_ca][:2] != ["Namespace", "Secret"]:
                failures.append("`sluicectl install --ca-dir`: the Secret must follow the Namespace")
            if canonical([o for o in with_ca if o["kind"] != "Secret"]) != canonical(objects):
                failures.append("`sluicectl install --ca-dir` changed more than the Secret")
            if not failures:
                print("ok   sluicectl install --ca-dir: the Secret sluice-ca with the CA's three files")
        bad = subprocess.run([sluicectl, "install", "--ca-dir", os.path.join(workdir, "absent")],
                             capture_output=True, text=True)
        if bad.returncode == 0 or "gen-ca.sh" not in bad.stderr:
            failures.append(f"`sluicectl install --ca-dir <missing>` must fail with a hint: {bad.stderr}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    uninstall = objs_of("uninstall")
    for o in uninstall:
        errs = schema.errors(o)
        failures += [f"sluicectl uninstall {describe(o)}: {e}" for e in errs]
    ds = [o for o in uninstall if o["kind"] == "DaemonSet"]
    if len(ds) != 1:
        failures.append("`sluicectl uninstall` must print one DaemonSet")
    else:
        cmd = pod_spec(ds[0])["containers"][0]["command"]
        if cmd[1:2] != ["uninstall"] or "--wait" not in cmd:
            failures.append(f"`sluicectl uninstall` must run `sluice-cni uninstall ... --wait`: {cmd}")
        else:
            print("ok   sluicectl uninstall: a DaemonSet running sluice-cni uninstall --wait")
    return failures


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=os.path.normpath(os.path.join(here, "..", "..")))
    ap.add_argument("--kubectl", default=os.environ.get("KUBECTL") or shutil.which("kubectl"))
    ap.add_argument("--schema", help="a Kubernetes OpenAPI v2 (swagger) JSON file")
    ap.add_argument("--sluicectl", help="also check `sluicectl install` / `uninstall` of this binary")
    args = ap.parse_args()
    if not args.kubectl:
        sys.exit("validate_manifests: kubectl not found; run `bash tools/deps.sh` (kubernetes-client)")

    workdir = tempfile.mkdtemp(prefix="sluice-deploy-test-")
    try:
        objects = render(args.repo, args.kubectl, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    version = subprocess.run([args.kubectl, "version", "--client"], capture_output=True,
                             text=True).stdout.strip().replace("\n", "; ")
    schema = pick_schema(objects, args.schema)
    print(f"rendered {len(objects)} objects with {args.kubectl} ({version})")
    print(f"schema: Kubernetes {schema.version} ({schema.path}), strict")

    failures = []
    if not objects:
        failures.append("kubectl kustomize rendered nothing")
    for obj in objects:
        if is_crd_v1(obj):  # newer than the schema Debian ships: crd_schema.py
            errs, name = crd_errors(obj), "apiextensions.k8s.io/v1 CRD, structural"
        else:
            errs, name = schema.errors(obj), schema.definition_for(obj) or "no schema"
        if errs:
            print(f"FAIL {describe(obj)} ({name})")
            for e in errs:
                print(f"     {e}")
            failures.append(f"{describe(obj)}: {len(errs)} schema error(s)")
        else:
            print(f"ok   {describe(obj)} ({name})")

    try:
        inv = invariants(objects)
    except (AssertionError, KeyError, TypeError) as e:
        inv = [f"cannot check the install's invariants: {e!r}"]
    for f in inv:
        print(f"FAIL invariant: {f}")
    if not inv:
        print("ok   invariants: CA key only in the control plane, agent without API access, "
              "agent capabilities, CNI installer")
    failures += inv
    if args.sluicectl:
        failures += sluicectl_manifests(args.sluicectl, args.repo, objects, schema)
    try:
        failures += self_checks(schema, objects)
    except (AssertionError, KeyError, IndexError) as e:
        failures.append(f"self-checks could not run: {e!r}")

    if failures:
        print(f"\n{len(failures)} problem(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"\nall {len(objects)} objects valid against Kubernetes {schema.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
