#!/usr/bin/env python3
"""Turns a bench/run.sh output directory into summary.md and throughput.png.

    bench/report.py OUT_DIR [--cache DIR] [--latest DIR]

Reads OUT_DIR/runs.jsonl (one JSON object per wrk run: wrk's WRKJSON summary plus target, RSS and
store round trips), OUT_DIR/machine.txt and OUT_DIR/command.txt. Per workload and target:
req/s = median over rounds; p50/p99/p99.9 = medians over rounds; ratio vs direct (vs nginx) =
median over rounds of (target req/s / direct (nginx) req/s of the same round); RSS = median of the
samples taken right after each run; store ops/req and server cmds/req = medians (see run.sh).
matplotlib is imported from the running Python, else from a venv in CACHE/venv (created with pip
when missing). With --latest, summary.md and throughput.png are also copied into that directory.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

LABELS = {
    "direct": "upstream direct",
    "nginx": "nginx proxy_pass",
    "memory": "idemgate, memory",
    "embedded": "idemgate, embedded (log)",
    "redis": "idemgate, Redis",
    "postgres": "idemgate, PostgreSQL",
    "express": "express + express-idempotency",
    "axum_idempotent": "axum + axum-idempotent",
    "axum_idemgate": "axum + idemgate-tower (in-process)",
}
WORKLOAD_TEXT = {
    "new": "new keys (every request executes)",
    "replay": "replays (one key)",
    "mix": "mix: 80 % new keys, 20 % retries",
    "bypass": "no key (bypass)",
    "body4k": "new keys, 4 KiB request body",
    "body256k": "new keys, 256 KiB request body",
}


def ensure_matplotlib(cache):
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        pass
    if os.environ.get("_BENCH_REPORT_REEXEC"):
        return False
    venv = os.path.join(cache, "venv")
    py = os.path.join(venv, "bin", "python")
    try:
        if not os.path.exists(py):
            print("report: installing matplotlib into %s" % venv, file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        env = dict(os.environ, _BENCH_REPORT_REEXEC="1")
        os.execve(py, [py] + sys.argv, env)
    except (OSError, subprocess.CalledProcessError) as e:
        print("report: no matplotlib (%s): no plot" % e, file=sys.stderr)
        return False


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec, dash="—"):
    return dash if x is None else format(x, spec)


def summarize(runs):
    """{workload: {target: row}} in order of first appearance."""
    out = {}
    for w in dict.fromkeys(d["workload"] for d in runs):
        rw = [d for d in runs if d["workload"] == w]
        by = {}
        for d in rw:
            by.setdefault(d["target"], {})[d["round"]] = d
        rows = {}
        for t, rs in by.items():
            rounds = sorted(rs)
            ratio = lambda base: round_ratio(rw, w, t, base)
            rows[t] = {
                "rps": med([rs[r]["rps"] for r in rounds]),
                "per_round": [rs[r]["rps"] for r in rounds],
                "p50": med([rs[r]["p50_ms"] for r in rounds]),
                "p99": med([rs[r]["p99_ms"] for r in rounds]),
                "p999": med([rs[r]["p999_ms"] for r in rounds]),
                "vs_direct": ratio("direct"),
                "vs_nginx": ratio("nginx"),
                "rss": med([rs[r]["rss_kib"] / 1024 for r in rounds]),
                "store_rss": med([rs[r]["store_rss_kib"] / 1024 for r in rounds if rs[r].get("store_rss_kib")]),
                "ops": med([rs[r].get("store_ops_per_req") for r in rounds]),
                "cmds": med([rs[r].get("server_cmds_per_req") for r in rounds]),
                "non2xx": sum(rs[r]["non2xx3xx"] for r in rounds),
                "errors": sum(rs[r]["socket_errors"] for r in rounds),
                "rounds": len(rounds),
                "rate": med([rs[r].get("rate") for r in rounds]),
            }
        out[w] = rows
    return out


def round_ratios(runs, workload, a, b):
    """Target a's req/s over target b's in each round of `workload` that ran both, by round."""
    by = {}
    for d in runs:
        if d["workload"] == workload and d["target"] in (a, b):
            by.setdefault(d["target"], {})[d["round"]] = d["rps"]
    ra, rb = by.get(a, {}), by.get(b, {})
    return [ra[r] / rb[r] for r in sorted(ra) if r in rb and rb[r] > 0]


def round_ratio(runs, workload, a, b):
    """Median over rounds of target a's req/s over target b's in the same round of `workload`."""
    return med(round_ratios(runs, workload, a, b))


# Issue 7's targets that one run of this harness measures: (what, goal text, value, passes).
def targets(runs, closed, opened=None):
    """Rows of the targets table; a row whose targets did not run is left out. `opened`: the
    open-loop pass (corrected for coordinated omission), whose p99s get a row of their own."""
    def get(w, t, key):
        return closed.get(w, {}).get(t, {}).get(key)
    rows = []
    def add(what, goal, value, spec, ok, rounds=()):
        if value is not None:
            spread = "–".join(format(v, spec) for v in (min(rounds), max(rounds))) if len(rounds) > 1 else "—"
            rows.append((what, goal, format(value, spec), spread, "met" if ok(value) else "**missed**"))
    def ratio(what, goal, w, t, base, ok):
        add(what, goal, get(w, t, "vs_" + base), ".3f", ok, round_ratios(runs, w, t, base))
    ratio("memory, new keys, vs nginx", "≥ 0.9", "new", "memory", "nginx", lambda v: v >= 0.9)
    for how, summary in (("closed loop", closed),
                         ("open loop at 50 % of each one's req/s, corrected for coordinated omission", opened or {})):
        new = summary.get("new", {})
        p99, p99n = new.get("memory", {}).get("p99"), new.get("nginx", {}).get("p99")
        if p99 is not None and p99n:
            add("memory, new keys, p99 vs nginx's p99 (%s)" % how, "≤ 1.5", p99 / p99n, ".3f", lambda v: v <= 1.5)
    ratio("memory, replays, vs direct", "≥ 1.0", "replay", "memory", "direct", lambda v: v >= 1.0)
    ratio("embedded, replays, vs direct", "≥ 0.9", "replay", "embedded", "direct", lambda v: v >= 0.9)
    ratio("embedded, new keys, vs nginx", "≥ 0.6", "new", "embedded", "nginx", lambda v: v >= 0.6)
    ratio("Redis, new keys, vs nginx", "≥ 0.5", "new", "redis", "nginx", lambda v: v >= 0.5)
    # Per request of the run: a replay run's first request executes (2 round trips), hence the 1 %.
    add("Redis, server round trips per new key", "≤ 2", get("new", "redis", "cmds"), ".3f", lambda v: v <= 2.02)
    add("Redis, server round trips per replay", "≤ 1", get("replay", "redis", "cmds"), ".3f", lambda v: v <= 1.01)
    ratio("PostgreSQL, new keys, vs nginx", "≥ 0.15", "new", "postgres", "nginx", lambda v: v >= 0.15)
    for ours, how in (("axum_idemgate", "in-process layer (like for like)"), ("memory", "through the gateway (memory; a proxy hop more)")):
        per = round_ratios(runs, "new", ours, "axum_idempotent")
        add("%s vs axum-idempotent, new keys" % how, "≥ 3.5", med(per), ".3f", lambda v: v >= 3.5, per)
        per = round_ratios(runs, "new", ours, "express")
        add("%s vs express-idempotency, new keys" % how, "≥ 20", med(per), ".1f", lambda v: v >= 20, per)
    return rows


def order(targets):
    known = [t for t in LABELS if t in targets]
    return known + sorted(t for t in targets if t not in LABELS)


def table(rows, corrected=False):
    lines = []
    if corrected:
        lines.append("| target | rate asked (req/s) | achieved | p50 ms | p99 ms | p99.9 ms | non-2xx | socket errs |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t in order(rows):
            x = rows[t]
            lines.append("| %s | %s | %s | %s | %s | %s | %d | %d |" % (
                LABELS.get(t, t), fmt(x["rate"], ".0f"), fmt(x["rps"], ".0f"), fmt(x["p50"], ".2f"),
                fmt(x["p99"], ".2f"), fmt(x["p999"], ".2f"), x["non2xx"], x["errors"]))
        return lines
    lines.append("| target | req/s (median) | p50 ms | p99 ms | p99.9 ms | vs direct | vs nginx | RSS MiB | store ops/req | server cmds/req | non-2xx | socket errs | req/s per round |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for t in order(rows):
        x = rows[t]
        rss = fmt(x["rss"], ".0f")
        if x["store_rss"]:
            rss += " (+%.0f server)" % x["store_rss"]
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s |" % (
            LABELS.get(t, t), fmt(x["rps"], ",.0f").replace(",", " "), fmt(x["p50"], ".2f"), fmt(x["p99"], ".2f"),
            fmt(x["p999"], ".2f"), fmt(x["vs_direct"], ".3f"), fmt(x["vs_nginx"], ".2f"), rss,
            fmt(x["ops"], ".2f"), fmt(x["cmds"], ".2f"), x["non2xx"], x["errors"],
            " / ".join("%.0f" % v for v in x["per_round"])))
    return lines


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(summary)
    targets = order({t for rows in summary.values() for t in rows})
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(workloads) + 4), 8), sharex=True)
    width = 0.8 / max(1, len(targets))
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(targets):
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(workloads))]
        rps = [summary[w].get(t, {}).get("rps") or 0 for w in workloads]
        p99 = [summary[w].get(t, {}).get("p99") or 0 for w in workloads]
        axes[0].bar(xs, rps, width, label=LABELS.get(t, t), color=cmap(i % 10))
        axes[1].bar(xs, p99, width, color=cmap(i % 10))
    axes[0].set_ylabel("throughput, req/s (median of rounds)")
    axes[1].set_ylabel("p99 latency, ms (log)")
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(workloads)))
    axes[1].set_xticklabels(workloads)
    axes[0].legend(fontsize=8, ncol=2)
    axes[0].set_title("idemgate vs upstream direct, nginx and peers (wrk, loopback)")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--latest", default=None)
    a = ap.parse_args()
    cache = a.cache or os.path.join(a.out, ".cache")
    runs = [json.loads(l) for l in open(os.path.join(a.out, "runs.jsonl")) if l.strip()]
    read = lambda name: open(os.path.join(a.out, name)).read().strip() if os.path.exists(os.path.join(a.out, name)) else ""
    closed = summarize([d for d in runs if not d.get("corrected")])
    opened = summarize([d for d in runs if d.get("corrected")])
    have_plot = ensure_matplotlib(cache)

    md = ["# idemgate benchmark summary", "", "Generated by `bench/run.sh` + `bench/report.py`.", "",
          "```", read("machine.txt"), "```", "", "Command:", "", "```bash", read("command.txt"), "```", "",
          "req/s: median over the alternating rounds; p50/p99/p99.9: medians over rounds (wrk, "
          + ("closed loop: **not corrected for coordinated omission**; the corrected pass, if any, is below"
             if not opened else "closed loop; corrected values in the last section")
          + "); vs direct / vs nginx: median of the per-round ratios (same round's direct / nginx run); "
          "RSS: resident set of the target process (nginx and PostgreSQL: with their workers/backends) right "
          "after each run, median; `(+N server)`: the store server's RSS; store ops/req: store calls "
          "(claim + complete + release) per request from the gateway's `/metrics`; server cmds/req: "
          "round trips the store server counted per gateway request: Redis script invocations (EVALSHA/EVAL) plus "
          "commands its scripts never call (`INFO commandstats`), PostgreSQL statements (`pg_stat_statements`, "
          "the harness's own queries excluded). Stateful targets restart with an empty store before "
          "each run unless RESTART=0.", ""]
    if have_plot:
        md += ["![throughput and p99 per target and workload](throughput.png)", ""]
    goals = targets([d for d in runs if not d.get("corrected")], closed, opened)
    if goals:
        md += ["## Issue 7's targets in this run", "",
               "Ratios as in the tables below (peers: the median of the per-round ratios), with the lowest and "
               "highest single round beside them; round trips are "
               "per request of the whole run, whose first request of a key executes (a 1 % allowance). The "
               "soak's targets are `bench/soak.sh`'s.", "",
               "| target | goal | this run | rounds (lowest–highest) | |", "|---|---|---:|---:|---|"]
        md += ["| %s | %s | %s | %s | %s |" % r for r in goals] + [""]
    for w, rows in closed.items():
        md += ["## %s: %s" % (w, WORKLOAD_TEXT.get(w, w)), ""] + table(rows) + [""]
    for w, rows in opened.items():
        md += ["## %s, open loop at a fixed rate (corrected for coordinated omission: latency from each request's due time)" % w, ""] + table(rows, True) + [""]
    summary_path = os.path.join(a.out, "summary.md")
    with open(summary_path, "w") as f:
        f.write("\n".join(md))
    png = os.path.join(a.out, "throughput.png")
    if have_plot:
        plot(closed, png)
    print("\n".join(md))
    if a.latest:
        os.makedirs(a.latest, exist_ok=True)
        if os.path.abspath(a.latest) != os.path.abspath(a.out):
            shutil.copy(summary_path, os.path.join(a.latest, "summary.md"))
            if have_plot:
                shutil.copy(png, os.path.join(a.latest, "throughput.png"))


if __name__ == "__main__":
    main()
