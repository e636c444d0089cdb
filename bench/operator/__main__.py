"""Operator scale: ParallelDeployments against simulated 8 × H100 nodes on the local control plane.

What is measured (docs/benchmark.md): the operator is started and made ready first — its kopf ``/healthz``
answers and one warm-up ParallelDeployment is Planned (imports done, indexes filled) — so no figure includes
its start-up. Then two phases, each reported on its own:

* burst: N ParallelDeployments created at once;
* steady: N2 ParallelDeployments arriving at R per second.

Per phase: apply→Planned latency p50/p99, throughput, reconciles per second (the operator's
``autoparallel_reconciles_total``), the operator's CPU seconds per reconcile, and the CPU use of the operator,
of every local control-plane component and of the whole machine over the phase, from which the limiting
component is named. At the end the operator's peak RSS (VmHWM), and with ``--image-install`` the peak RSS of
the operator as the Dockerfile installs it (``pip install .``: no torch), measured on a second, smaller burst.

Needs the local control plane (started through hack/cluster-up.sh, which honours AUTOPARALLEL_CLUSTER_DIR and
the AUTOPARALLEL_*_PORT variables). Everything the run creates — its nodes (labelled and tainted
``autoparallel.io/bench=<run>``) and its namespaces — is deleted at the end, and the run waits until it is gone.

Usage: python -m bench.operator [--burst N] [--nodes M] [--steady N2 --rate R] [--image-install]
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config

from bench.operator.base import CLUSTER_DIR, BenchError
from bench.operator.cluster import WORKERS, Cluster, apply_crds, start_cluster
from bench.operator.phases import Bench, limiting
from bench.operator.probes import CPUS, maps_torch, peak_rss_mib
from bench.operator.process import Operator, image_venv
from bench.operator.watch import PlannedWatch


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.operator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=200, help="ParallelDeployments created at once (200)")
    parser.add_argument("--nodes", type=int, default=200, help="simulated 8 × H100 nodes (200)")
    parser.add_argument("--steady", type=int, default=60, help="ParallelDeployments arriving at --rate (60; 0: skip)")
    parser.add_argument("--rate", type=float, default=2.0, help="arrivals per second of the steady phase (2)")
    parser.add_argument(
        "--image-install",
        action="store_true",
        help="also measure the peak RSS of the operator as the Dockerfile installs it (a cached venv without torch)",
    )
    parser.add_argument("--image-burst", type=int, default=50, help="burst size of that measurement (50)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds each wait may take (600)")
    args = parser.parse_args(argv)
    if args.burst < 1 or args.nodes < 1 or args.steady < 0 or args.rate <= 0:
        parser.error("--burst and --nodes must be ≥ 1, --steady ≥ 0, --rate > 0")
    gpus_needed = args.burst + args.steady + (args.image_burst if args.image_install else 0) + 2
    if gpus_needed > 8 * args.nodes:
        parser.error(f"{gpus_needed} one-GPU plans do not fit on {args.nodes} nodes of 8 GPUs: add --nodes")
    return args


def describe_rss(operator: Operator, warm: float, what: str) -> str:
    torch = "torch loaded" if maps_torch(operator.pid) else "torch not loaded"
    return f"{warm:.0f} MiB after warm-up, {peak_rss_mib(operator.pid):.0f} MiB after {what} ({torch})"


def measure_development(cluster: Cluster, args: argparse.Namespace, pool: ThreadPoolExecutor) -> list[str]:
    """The two phases with the repo's own operator (the development install); the report lines."""
    namespace = f"bench-{cluster.run}"
    cluster.create_namespace(namespace)
    executable = Path(sys.executable).parent / "autoparallel"
    log = CLUSTER_DIR / "logs" / f"bench-operator-{cluster.run}.log"
    print(f"operator log: {log}", flush=True)
    results: list[str] = []
    with (
        Operator(executable, namespace, cluster.kubeconfig, log) as operator,
        PlannedWatch(cluster.custom, namespace) as watcher,
    ):
        bench = Bench(cluster, watcher, operator, namespace, pool, args.timeout)
        ready = bench.warm_up()
        warm_rss = peak_rss_mib(operator.pid)
        print(f"operator ready and warm (/healthz, a warm-up plan) {ready:.1f} s after its start", flush=True)
        burst = bench.phase(f"burst of {args.burst}", [f"burst-{i:04d}" for i in range(args.burst)])
        results += [*burst.report(), burst.cpu_report(), f"  {limiting(burst)}"]
        print("\n".join(results), flush=True)
        if args.steady:
            print(bench.settle(), flush=True)
            names = [f"steady-{i:04d}" for i in range(args.steady)]
            steady = bench.phase(f"steady {args.steady} at {args.rate:g}/s", names, rate=args.rate)
            lines = [*steady.report(), steady.cpu_report(), f"  {limiting(steady)}"]
            print("\n".join(lines), flush=True)
            results += lines
        done = f"{args.burst} burst" + (f" + {args.steady} steady" if args.steady else "")
        rss = f"operator peak RSS, development install (.venv): {describe_rss(operator, warm_rss, done)}"
    print(rss, flush=True)
    return [*results, rss]


def measure_image_install(cluster: Cluster, args: argparse.Namespace, pool: ThreadPoolExecutor) -> list[str]:
    """Peak RSS of the operator installed as in the image, over a warm-up and a smaller burst."""
    venv = image_venv()
    namespace = f"bench-{cluster.run}-image"
    cluster.create_namespace(namespace)
    log = CLUSTER_DIR / "logs" / f"bench-operator-{cluster.run}-image.log"
    print(f"image-install operator log: {log}", flush=True)
    with (
        Operator(venv / "bin" / "autoparallel", namespace, cluster.kubeconfig, log) as operator,
        PlannedWatch(cluster.custom, namespace) as watcher,
    ):
        bench = Bench(cluster, watcher, operator, namespace, pool, args.timeout)
        bench.warm_up()
        warm_rss = peak_rss_mib(operator.pid)
        names = [f"burst-{i:04d}" for i in range(args.image_burst)]
        small = bench.phase(f"image-install burst of {args.image_burst}", names)
        print("\n".join([*small.report(), small.cpu_report()]), flush=True)
        what = f"a burst of {args.image_burst}"
        rss = f"operator peak RSS, image install (pip install ., no torch): {describe_rss(operator, warm_rss, what)}"
    print(rss, flush=True)
    return [rss, f"  (venv {venv})"]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so that the clean-up below still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    kubeconfig = start_cluster()
    apply_crds(kubeconfig)
    api = config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = WORKERS * 2
    run = secrets.token_hex(3)
    cluster = Cluster(kubeconfig, client.CoreV1Api(api), client.CustomObjectsApi(api), run)
    print(f"run {run}: cluster state {CLUSTER_DIR}, kubeconfig {kubeconfig}", flush=True)
    pool = ThreadPoolExecutor(WORKERS)
    try:
        started = time.monotonic()
        cluster.create_nodes(args.nodes, pool)
        print(f"{args.nodes} simulated 8 × H100 nodes Ready in {time.monotonic() - started:.1f} s", flush=True)
        results = measure_development(cluster, args, pool)
        if args.image_install:
            results += measure_image_install(cluster, args, pool)
        else:
            results.append("operator peak RSS, image install: not measured (pass --image-install)")
    finally:
        print(
            f"cleaning up run {run}: namespaces {', '.join(cluster.namespaces)}, {len(cluster.nodes)} nodes", flush=True
        )
        started = time.monotonic()
        cluster.clean_up()
        pool.shutdown()
        print(f"cleaned up in {time.monotonic() - started:.1f} s", flush=True)
    print(f"\n== operator bench, run {run}: {args.nodes} simulated nodes, {CPUS} CPUs ==")
    print("\n".join(results))


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        sys.exit(f"bench.operator: {error}")
