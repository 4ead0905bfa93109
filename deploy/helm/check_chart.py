"""Renders the Quarry Helm chart with several sets of values and checks what comes out.

Every manifest must pass the Kubernetes schema of KUBE_VERSION (kubernetes-validate, strict:
unknown fields are errors), and the layout must be what the values ask for: one retriever
StatefulSet per shard with one pod per replica, each told its shard; every role started with
`quarry serve <role>` pointed at the same etcd and cluster, advertising its pod IP, serving
/metrics; the bundled etcd only when asked for; and the two hook Jobs that resize a live
cluster on `helm upgrade --set cluster.shards=M`, `quarry cluster scale --shards M --wait`
with --if-shrinking before the upgrade and --if-growing after it, rendered at several shard
counts. Run by `make helm-check` (part of `make test`).

Usage: python check_chart.py HELM_BINARY CHART_DIR
"""

import subprocess
import sys

import kubernetes_validate
import yaml

KUBE_VERSION = "1.30.0"
ROLES = ["gateway", "analyzer", "generator", "evaluator", "scheduler"]
# The resize hooks: Job name suffix -> (helm.sh/hook, the direction flag of `quarry cluster scale`).
SCALE_HOOKS = {
    "scale-shrink": ("pre-upgrade", "--if-shrinking"),
    "scale-grow": ("post-install,post-upgrade", "--if-growing"),
}
# Every set of values rendered, for the summary line.
RENDERED = set()


def render(helm, chart, settings):
    RENDERED.add(tuple(settings))
    command = [helm, "template", "rel", chart, "--kube-version", KUBE_VERSION]
    for setting in settings:
        command += ["--set", setting]
    result = subprocess.run(command, capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


def manifests(text):
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs, kind):
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def quarry_container(workload):
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(container for container in containers if container["name"] == "quarry")


def flag(args, name):
    """The value after `name` in a container's args."""
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def check(helm, chart, settings, shards, replicas, etcd_endpoints, bundled_etcd, gateway_probe=7702,
          role_probe=7700, scale=True, scale_timeout=3600):
    code, text, error = render(helm, chart, settings)
    assert code == 0, f"helm template {settings} failed: {error}"
    docs = manifests(text)
    for doc in docs:
        # cert-manager's Certificate is a custom resource the Kubernetes schema does not know.
        if not doc["apiVersion"].startswith("cert-manager.io/"):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)

    statefulsets = by_kind(docs, "StatefulSet")
    deployments = by_kind(docs, "Deployment")
    retrievers = {
        name: workload
        for name, workload in statefulsets.items()
        if workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        == "retriever"
    }
    assert len(retrievers) == shards, f"{len(retrievers)} retriever StatefulSets, {shards} shards"
    seen_shards = set()
    for workload in retrievers.values():
        assert workload["spec"]["replicas"] == replicas
        args = quarry_container(workload)["args"]
        assert args[:2] == ["serve", "retriever"], args
        seen_shards.add(int(flag(args, "--shard")))
        assert flag(args, "--replica") == "$(POD_INDEX)"
        assert flag(args, "--data-dir") == "/data"
        claims = workload["spec"]["volumeClaimTemplates"]
        assert [claim["metadata"]["name"] for claim in claims] == ["data"]
    assert seen_shards == set(range(shards)), seen_shards

    workloads = list(retrievers.values())
    for role in ROLES:
        matching = [
            workload
            for workload in deployments.values()
            if workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            == role
        ]
        assert len(matching) == 1, f"{role}: {len(matching)} Deployments"
        assert quarry_container(matching[0])["args"][:2] == ["serve", role]
        workloads += matching
    for workload in workloads:
        container = quarry_container(workload)
        args = container["args"]
        assert flag(args, "--etcd") == etcd_endpoints, args
        assert flag(args, "--cluster") == "quarry"
        assert flag(args, "--advertise") == "$(POD_IP):7700"
        assert flag(args, "--metrics-addr") == "0.0.0.0:9464"
        env = {entry["name"] for entry in container["env"]}
        assert "POD_IP" in env
        role = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        probe = gateway_probe if role == "gateway" else role_probe
        assert container["readinessProbe"]["grpc"]["port"] == probe, (role, container["readinessProbe"])
        assert container["livenessProbe"]["grpc"]["port"] == probe
        init = workload["spec"]["template"]["spec"]["initContainers"][0]["args"]
        assert init[:2] == ["cluster", "create"] and flag(init, "--shards") == str(shards)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9464"

    etcd_sets = [name for name in statefulsets if name.endswith("-etcd")]
    assert bool(etcd_sets) == bundled_etcd, etcd_sets
    assert "rel-quarry-gateway" in by_kind(docs, "Service")
    check_scale_jobs(docs, shards, etcd_endpoints, scale, scale_timeout)
    return docs


def check_scale_jobs(docs, shards, etcd_endpoints, enabled, timeout):
    """The resize hooks: shrink before an upgrade (drain the highest shards while their
    StatefulSets still run), grow after install and upgrade (the new StatefulSets exist by
    then); each `quarry cluster scale --shards <cluster.shards> --wait`, with the create
    step's etcd and cluster flags, run like the roles' pods; none when disabled."""
    jobs = by_kind(docs, "Job")
    if not enabled:
        assert not jobs, list(jobs)
        return
    assert set(jobs) == {f"rel-quarry-{suffix}" for suffix in SCALE_HOOKS}, list(jobs)
    retriever = next(
        workload
        for workload in by_kind(docs, "StatefulSet").values()
        if workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "retriever"
    )
    create = retriever["spec"]["template"]["spec"]["initContainers"][0]
    for suffix, (hook, direction) in SCALE_HOOKS.items():
        job = jobs[f"rel-quarry-{suffix}"]
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == hook, (suffix, annotations)
        assert int(annotations["helm.sh/hook-weight"]) == 0, annotations
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert job["spec"]["backoffLimit"] >= 1
        assert job["spec"]["activeDeadlineSeconds"] == timeout, job["spec"]
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"] == retriever["spec"]["template"]["spec"]["securityContext"]
        assert "serviceAccountName" not in pod and "initContainers" not in pod
        container = quarry_container(job)
        assert container["image"] == create["image"]
        assert container["imagePullPolicy"] == create["imagePullPolicy"]
        args = container["args"]
        assert args[:2] == ["cluster", "scale"], args
        assert flag(args, "--shards") == str(shards), args
        assert "--wait" in args and direction in args, args
        other = {hook_flag for _, hook_flag in SCALE_HOOKS.values()} - {direction}
        assert not other & set(args), args
        # The same etcd and cluster as `quarry cluster create`, flag for flag.
        for name in ["--etcd", "--cluster"]:
            assert flag(args, name) == flag(create["args"], name), (name, args, create["args"])
        assert flag(args, "--etcd") == etcd_endpoints
        env = {entry["name"]: entry.get("value") for entry in container["env"]}
        assert env["QUARRY_LOG_FORMAT"] == "json", env


def main():
    helm, chart = sys.argv[1], sys.argv[2]
    check(helm, chart, [], 2, 2, "http://rel-quarry-etcd:2379", True)

    docs = check(
        helm,
        chart,
        [
            "cluster.shards=3",
            "retriever.replicasPerShard=3",
            "etcd.enabled=false",
            "etcd.endpoints={http://etcd-a:2379,http://etcd-b:2379}",
            "generator.backend=openai",
            "generator.openai.baseUrl=http://vllm:8000/v1",
            "generator.openai.model=llama",
            "generator.openai.apiKeySecret.name=llm-key",
            "otlpEndpoint=http://otel-collector:4317",
        ],
        3,
        3,
        "http://etcd-a:2379,http://etcd-b:2379",
        False,
    )
    generator = quarry_container(by_kind(docs, "Deployment")["rel-quarry-generator"])
    env = {entry["name"]: entry for entry in generator["env"]}
    assert env["QUARRY_GENERATOR__BACKEND"]["value"] == "openai"
    assert env["QUARRY_GENERATOR__OPENAI__BASE_URLS"]["value"] == '["http://vllm:8000/v1"]'
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "llm-key"
    assert "value" not in env["OPENAI_API_KEY"], "the key itself never sits in a manifest"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector:4317"

    check_gateway_security(helm, chart, docs)
    check_internal_tls(helm, chart)
    check_cache_and_rerank(helm, chart)
    check_resize(helm, chart)

    # Refusals with a clear message rather than a broken release.
    code, _, error = render(helm, chart, ["etcd.enabled=false"])
    assert code != 0 and "etcd.endpoints" in error, error
    code, _, error = render(helm, chart, ["generator.backend=openai"])
    assert code != 0 and "generator.openai.baseUrl" in error, error
    code, _, error = render(helm, chart, ["gateway.tls.mode=none"])
    assert code != 0 and "gateway.insecure" in error, error
    code, _, error = render(helm, chart, ["gateway.tls.mode=existingSecret"])
    assert code != 0 and "gateway.tls.existingSecret" in error, error
    code, _, error = render(helm, chart, ["gateway.tls.mode=certManager"])
    assert code != 0 and "issuerRef.name" in error, error
    code, _, error = render(helm, chart, ["internalTls.mode=on"])
    assert code != 0 and "internalTls.mode" in error, error
    code, _, error = render(helm, chart, ["internalTls.mode=required", "internalTls.certificates=existingSecret"])
    assert code != 0 and "internalTls.existingSecret" in error, error
    print("helm chart:", len(RENDERED), "value sets render, validate against Kubernetes", KUBE_VERSION, "and match")


def check_resize(helm, chart):
    """`helm upgrade --set cluster.shards=M` in both directions: whatever M, one retriever
    StatefulSet per shard and both hooks asking for M shards (2 -> 5 grows after the upgrade,
    5 -> 3 shrinks before it); the partition count only on creation and only when set."""
    for shards in [2, 5, 3]:
        docs = check(helm, chart, [f"cluster.shards={shards}"], shards, 2, "http://rel-quarry-etcd:2379", True)
        create = [workload["spec"]["template"]["spec"]["initContainers"][0]["args"]
                  for workload in list(by_kind(docs, "StatefulSet").values()) + list(by_kind(docs, "Deployment").values())
                  if workload["spec"]["template"]["spec"].get("initContainers")]
        assert create and all("--partitions" not in args for args in create), create
    docs = check(helm, chart, ["cluster.shards=5", "cluster.partitions=64"], 5, 2, "http://rel-quarry-etcd:2379", True)
    retriever = by_kind(docs, "StatefulSet")["rel-quarry-shard-0"]
    assert flag(retriever["spec"]["template"]["spec"]["initContainers"][0]["args"], "--partitions") == "64"
    for job in by_kind(docs, "Job").values():
        assert "--partitions" not in quarry_container(job)["args"], "partitions are fixed at creation"
    check(helm, chart, ["cluster.shards=4", "cluster.scale.enabled=false"], 4, 2, "http://rel-quarry-etcd:2379", True,
          scale=False)
    check(helm, chart, ["cluster.shards=6", "cluster.scale.timeoutSeconds=7200"], 6, 2, "http://rel-quarry-etcd:2379",
          True, scale_timeout=7200)
    code, _, error = render(helm, chart, ["cluster.shards=17", "cluster.partitions=16"])
    assert code != 0 and "cluster.partitions" in error, error
    code, _, error = render(helm, chart, ["cluster.shards=0"])
    assert code != 0 and "cluster.shards" in error, error


def check_internal_tls(helm, chart):
    """Mutual TLS between the roles: off by default; permissive and required render a kept
    CA and one certificate per role, each role mounting its own, probes on the health port."""
    for mode in ["permissive", "required"]:
        docs = check(helm, chart, [f"internalTls.mode={mode}"], 2, 2, "http://rel-quarry-etcd:2379", True,
                     role_probe=7702)
        secret = by_kind(docs, "Secret")["rel-quarry-internal-tls"]
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        expected = {"ca.crt"} | {f"{role}.{part}" for role in ROLES + ["retriever"] for part in ["crt", "key"]}
        assert set(secret["data"]) == expected, set(secret["data"])
        workloads = list(by_kind(docs, "Deployment").values()) + [
            workload for name, workload in by_kind(docs, "StatefulSet").items() if "-shard-" in name
        ]
        for workload in workloads:
            role = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            container = quarry_container(workload)
            env = {entry["name"]: entry.get("value") for entry in container["env"]}
            assert env["QUARRY_INTERNAL_TLS__MODE"] == mode, (role, env)
            assert env["QUARRY_INTERNAL_TLS__CERT"] == "/etc/quarry/internal-tls/tls.crt"
            volumes = {volume["name"]: volume for volume in workload["spec"]["template"]["spec"]["volumes"]}
            items = {item["key"]: item["path"] for item in volumes["internal-tls"]["secret"]["items"]}
            assert items == {"ca.crt": "ca.crt", f"{role}.crt": "tls.crt", f"{role}.key": "tls.key"}, items
    # Off (the default): nothing of it.
    code, text, _ = render(helm, chart, [])
    assert "QUARRY_INTERNAL_TLS" not in text and "internal-tls" not in text


def check_cache_and_rerank(helm, chart):
    """The answer cache in Redis and a rerank endpoint, as the gateways' environment."""
    docs = check(
        helm,
        chart,
        [
            "gateway.cache.redisUrl=redis://redis:6379/0",
            "gateway.rerank.backend=endpoint",
            "gateway.rerank.baseUrl=http://tei:8080/v1",
            "gateway.rerank.model=bge-reranker-base",
        ],
        2, 2, "http://rel-quarry-etcd:2379", True,
    )
    env = {entry["name"]: entry.get("value") for entry in gateway(docs)["env"]}
    assert env["QUARRY_CACHE__REDIS_URL"] == "redis://redis:6379/0"
    assert env["QUARRY_CACHE__ENABLED"] == "true"
    assert env["QUARRY_RERANK__BACKEND"] == "endpoint"
    assert env["QUARRY_RERANK__ENDPOINT__BASE_URLS"] == '["http://tei:8080/v1"]'
    assert env["QUARRY_RERANK__ENDPOINT__MODEL"] == "bge-reranker-base"
    default_env = {entry["name"] for entry in gateway(check(helm, chart, [], 2, 2, "http://rel-quarry-etcd:2379", True))["env"]}
    assert "QUARRY_CACHE__REDIS_URL" not in default_env and "QUARRY_RERANK__BACKEND" not in default_env
    code, _, error = render(helm, chart, ["gateway.rerank.backend=chat"])
    assert code != 0 and "gateway.rerank.baseUrl" in error, error


def gateway(docs):
    return quarry_container(by_kind(docs, "Deployment")["rel-quarry-gateway"])


def check_gateway_security(helm, chart, default_docs):
    """TLS modes, API keys and the refusal of an open gateway, as rendered."""
    # generate (the default): a CA and certificate in a kept Secret, mounted; probes on the
    # plaintext health port; the scheduler trusts the CA for the Service's name.
    secret = by_kind(default_docs, "Secret")["rel-quarry-gateway-tls"]
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    args = gateway(default_docs)["args"]
    assert flag(args, "--tls-cert") == "/etc/quarry/tls/tls.crt"
    assert flag(args, "--health-listen") == "0.0.0.0:7702"
    assert "--insecure" not in args
    scheduler = quarry_container(by_kind(default_docs, "Deployment")["rel-quarry-scheduler"])
    env = {entry["name"]: entry.get("value") for entry in scheduler["env"]}
    assert env["QUARRY_TLS__CA"] == "/etc/quarry/gateway-ca/ca.crt"
    assert env["QUARRY_TLS__SERVER_NAME"] == "rel-quarry-gateway"

    # An existing Secret, keys from a Secret and from etcd, the agents' key.
    docs = check(
        helm,
        chart,
        [
            "gateway.tls.mode=existingSecret",
            "gateway.tls.existingSecret=my-tls",
            "gateway.apiKeys.existingSecret=quarry-keys",
            "gateway.apiKeys.etcd=true",
            "gateway.agentKeySecret.name=agent-key",
        ],
        2, 2, "http://rel-quarry-etcd:2379", True,
    )
    assert "rel-quarry-gateway-tls" not in by_kind(docs, "Secret")
    workload = by_kind(docs, "Deployment")["rel-quarry-gateway"]
    volumes = {volume["name"]: volume["secret"]["secretName"] for volume in workload["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {"tls": "my-tls", "keys": "quarry-keys"}, volumes
    args = gateway(docs)["args"]
    assert flag(args, "--keys-file") == "/etc/quarry/keys/keys.jsonl"
    env = {entry["name"]: entry for entry in gateway(docs)["env"]}
    assert env["QUARRY_AUTH__ETCD_KEYS"]["value"] == "true"
    scheduler = quarry_container(by_kind(docs, "Deployment")["rel-quarry-scheduler"])
    env = {entry["name"]: entry for entry in scheduler["env"]}
    assert env["QUARRY_SCHEDULER__GATEWAY_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "agent-key"

    # cert-manager: a Certificate filling the same Secret name.
    docs = check(
        helm,
        chart,
        ["gateway.tls.mode=certManager", "gateway.tls.certManager.issuerRef.name=letsencrypt"],
        2, 2, "http://rel-quarry-etcd:2379", True,
    )
    certificate = by_kind(docs, "Certificate")["rel-quarry-gateway-tls"]
    assert certificate["spec"]["secretName"] == "rel-quarry-gateway-tls"
    assert "rel-quarry-gateway.default.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"]["name"] == "letsencrypt"

    # Plaintext, only when told so: no TLS flags, probes on the gRPC port.
    docs = check(helm, chart, ["gateway.tls.mode=none", "gateway.insecure=true"], 2, 2,
                 "http://rel-quarry-etcd:2379", True, gateway_probe=7700)
    args = gateway(docs)["args"]
    assert "--insecure" in args and "--tls-cert" not in args
    docs = check(helm, chart, ["gateway.tls.mode=none", "gateway.apiKeys.existingSecret=k"], 2, 2,
                 "http://rel-quarry-etcd:2379", True, gateway_probe=7700)
    assert "--insecure" not in gateway(docs)["args"]


if __name__ == "__main__":
    main()
