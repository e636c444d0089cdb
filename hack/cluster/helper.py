#!/usr/bin/env python3
"""Small helpers for the local control plane scripts (hack/cluster-up.sh, hack/cluster-down.sh).

Subcommands:
  render-nodes POOLS.yaml [--kubelet-version V]  print the simulated GPU Nodes as a JSON v1 List
  status-patches NODES.json                      print `name merge-patch` of each node's capacity etc.
  node-names POOLS.yaml                          print the node names, one per line
  rss [NAME=]PID...                              print the resident memory of the processes (from /proc)
  rsa-key PATH                                   write a new RSA private key (PKCS#1 PEM) without openssl
  server-version                                 print gitVersion of the API server's /version JSON on stdin
  lws-manifests DIR --user U --url URL --ca-file F  print LWS's RBAC and webhook configurations (JSON v1 List)

Only the standard library is used, except PyYAML for reading the node pools file.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

SIMULATED_LABEL = "autoparallel.io/simulated-node"
POOL_LABEL = "autoparallel.io/node-pool"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------------------------------------
# Node pools -> Node objects


def load_pools(path: Path) -> list[dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        sys.exit("helper.py: reading the node pools needs PyYAML (pip install pyyaml, or use the repo .venv)")
    data = yaml.safe_load(path.read_text()) or {}
    pools = data.get("pools")
    if not isinstance(pools, list) or not pools:
        sys.exit(f"{path}: expected a non-empty list under 'pools'")
    seen: set[str] = set()
    for pool in pools:
        name = pool.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            sys.exit(f"{path}: pool name {name!r} must be a DNS label (lowercase letters, digits, '-')")
        if name in seen:
            sys.exit(f"{path}: duplicate pool name {name!r}")
        seen.add(name)
        if not isinstance(pool.get("count"), int) or pool["count"] < 0:
            sys.exit(f"{path}: pool {name}: 'count' must be a non-negative integer")
        gpu = pool.get("gpu")
        required = ("product", "count", "memoryMiB", "family", "computeMajor", "computeMinor")
        if not isinstance(gpu, dict) or any(k not in gpu for k in required):
            sys.exit(f"{path}: pool {name}: 'gpu' needs the keys {', '.join(required)}")
        if not isinstance(pool.get("capacity"), dict):
            sys.exit(f"{path}: pool {name}: 'capacity' (cpu, memory, pods, ...) is required")
    return pools


def node_name(pool: dict[str, Any], index: int) -> str:
    return f"gpu-{pool['name']}-{index}"


def render_node(pool: dict[str, Any], pool_index: int, index: int, kubelet_version: str) -> dict[str, Any]:
    gpu = pool["gpu"]
    name = node_name(pool, index)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        SIMULATED_LABEL: "true",
        POOL_LABEL: pool["name"],
        # The labels NVIDIA's GPU feature discovery puts on real GPU nodes.
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": str(gpu["product"]),
        "nvidia.com/gpu.count": str(gpu["count"]),
        "nvidia.com/gpu.memory": str(gpu["memoryMiB"]),
        "nvidia.com/gpu.family": str(gpu["family"]),
        "nvidia.com/gpu.compute.major": str(gpu["computeMajor"]),
        "nvidia.com/gpu.compute.minor": str(gpu["computeMinor"]),
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
    }
    if pool.get("instanceType"):
        labels["node.kubernetes.io/instance-type"] = str(pool["instanceType"])
        labels["nvidia.com/gpu.machine"] = str(pool["instanceType"])
    labels.update({str(k): str(v) for k, v in (pool.get("labels") or {}).items()})

    capacity = {str(k): str(v) for k, v in pool["capacity"].items()}
    allocatable = {str(k): str(v) for k, v in (pool.get("allocatable") or pool["capacity"]).items()}
    capacity["nvidia.com/gpu"] = allocatable["nvidia.com/gpu"] = str(gpu["count"])

    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                # kwok is started with --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"taints": list(pool.get("taints") or [])},
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            # A made-up but stable address per node (nothing listens there).
            "addresses": [
                {"type": "InternalIP", "address": f"10.128.{pool_index}.{index + 1}"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": kubelet_version,
                "containerRuntimeVersion": "kwok",
                "kernelVersion": "kwok",
                "osImage": "kwok simulated GPU node",
                # Required fields; deterministic so that re-registering a node changes nothing.
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.machine").hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.system")),
                "bootID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.boot")),
            },
        },
    }


def cmd_render_nodes(args: argparse.Namespace) -> None:
    pools = load_pools(Path(args.pools))
    items = [
        render_node(pool, p, i, args.kubelet_version) for p, pool in enumerate(pools) for i in range(pool["count"])
    ]
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout, indent=1)
    sys.stdout.write("\n")


def cmd_status_patches(args: argparse.Namespace) -> None:
    """`name json-merge-patch` per rendered node: capacity, allocatable, addresses (status subresource)."""
    for item in json.loads(Path(args.rendered).read_text())["items"]:
        status = {key: item["status"][key] for key in ("capacity", "allocatable", "addresses")}
        print(item["metadata"]["name"], json.dumps({"status": status}, separators=(",", ":")))


def cmd_node_names(args: argparse.Namespace) -> None:
    for pool in load_pools(Path(args.pools)):
        for i in range(pool["count"]):
            print(node_name(pool, i))


# --------------------------------------------------------------------------------------------------
# Resident memory


def cmd_rss(args: argparse.Namespace) -> None:
    total_kib = 0
    parts = []
    for entry in args.processes:
        name, _, pid = entry.rpartition("=")
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        rss = re.search(r"^VmRSS:\s*(\d+) kB", text, re.M)
        if not rss:
            continue
        kib = int(rss.group(1))
        total_kib += kib
        parts.append(f"{name or pid} {kib // 1024}")
    print(f"{total_kib / 1024:.0f} MiB ({', '.join(parts)} MiB)")


# --------------------------------------------------------------------------------------------------
# RSA key without openssl (fallback for the service-account signing key)


def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        a = secrets.randbelow(n - 3) + 2
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int, e: int) -> int:
    while True:
        # Top two bits set so that p*q has exactly 2*bits bits; odd.
        candidate = secrets.randbits(bits) | (0b11 << (bits - 2)) | 1
        if math.gcd(candidate - 1, e) == 1 and _is_probable_prime(candidate):
            return candidate


def _der_int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading 0 keeps it positive
    return b"\x02" + _der_len(len(body)) + body


def _der_len(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def cmd_rsa_key(args: argparse.Namespace) -> None:
    e = 65537
    while True:
        p, q = _random_prime(args.bits // 2, e), _random_prime(args.bits // 2, e)
        if p != q:
            break
    n = p * q
    d = pow(e, -1, (p - 1) * (q - 1))
    fields = [0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)]
    body = b"".join(_der_int(v) for v in fields)
    der = b"\x30" + _der_len(len(body)) + body
    b64 = base64.b64encode(der).decode()
    pem = "-----BEGIN RSA PRIVATE KEY-----\n"
    pem += "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
    pem += "-----END RSA PRIVATE KEY-----\n"
    path = Path(args.path)
    path.touch(mode=0o600)
    path.write_text(pem)


# --------------------------------------------------------------------------------------------------
# Server version (hack/kind-up.sh: the kubelet version the simulated nodes report)


def cmd_server_version(args: argparse.Namespace) -> None:
    """``kubectl get --raw /version`` on stdin -> its gitVersion (e.g. v1.34.0)."""
    try:
        version = json.load(sys.stdin)["gitVersion"]
    except (ValueError, KeyError, TypeError) as error:
        sys.exit(f"helper.py server-version: expected the API server's /version JSON on stdin ({error})")
    print(version)


# --------------------------------------------------------------------------------------------------
# The LeaderWorkerSet controller as a loopback component

LWS_NAME_PREFIX = "lws-"
"""The namePrefix of LWS's own config/default kustomization (its release manifests' names)."""


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        sys.exit("helper.py: reading LWS's manifests needs PyYAML (pip install pyyaml, or use the repo .venv)")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def lws_manifests(
    role: list[dict[str, Any]], webhooks: list[dict[str, Any]], user: str, url: str, ca: bytes
) -> list[dict[str, Any]]:
    """LWS's ClusterRole bound to ``user`` (the controller's identity here), and its webhook configurations
    calling ``url`` + each webhook's path (instead of the in-cluster Service), trusting ``ca``."""
    [cluster_role] = [doc for doc in role if doc.get("kind") == "ClusterRole"]
    name = LWS_NAME_PREFIX + cluster_role["metadata"]["name"]
    items: list[dict[str, Any]] = [
        {**cluster_role, "metadata": {"name": name}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]
    bundle = base64.b64encode(ca).decode()
    for doc in webhooks:
        if not doc.get("kind", "").endswith("WebhookConfiguration"):
            continue  # the webhook Service: nothing runs in-cluster here
        hooks = []
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hooks.append({**hook, "clientConfig": {"url": url.rstrip("/") + path, "caBundle": bundle}})
        items.append({**doc, "metadata": {"name": LWS_NAME_PREFIX + doc["metadata"]["name"]}, "webhooks": hooks})
    return items


def cmd_lws_manifests(args: argparse.Namespace) -> None:
    """hack/build-control-plane.sh copied lws-role.yaml and lws-webhooks.yaml from LWS's module into DIR."""
    directory = Path(args.dir)
    role = _yaml_documents(directory / "lws-role.yaml")
    webhooks = _yaml_documents(directory / "lws-webhooks.yaml")
    items = lws_manifests(role, webhooks, args.user, args.url, Path(args.ca_file).read_bytes())
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout, indent=1)
    sys.stdout.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("render-nodes")
    p.add_argument("pools")
    p.add_argument("--kubelet-version", default="v0.0.0-kwok")
    p.set_defaults(func=cmd_render_nodes)
    p = sub.add_parser("status-patches")
    p.add_argument("rendered")
    p.set_defaults(func=cmd_status_patches)
    p = sub.add_parser("node-names")
    p.add_argument("pools")
    p.set_defaults(func=cmd_node_names)
    p = sub.add_parser("rss")
    p.add_argument("processes", nargs="*", metavar="[NAME=]PID")
    p.set_defaults(func=cmd_rss)
    p = sub.add_parser("rsa-key")
    p.add_argument("path")
    p.add_argument("--bits", type=int, default=2048)
    p.set_defaults(func=cmd_rsa_key)
    p = sub.add_parser("server-version")
    p.set_defaults(func=cmd_server_version)
    p = sub.add_parser("lws-manifests")
    p.add_argument("dir")
    p.add_argument("--user", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--ca-file", required=True)
    p.set_defaults(func=cmd_lws_manifests)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
