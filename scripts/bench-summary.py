"""Medians per scenario of a series written by scripts/bench-series.sh.

usage: bench-summary.py [TAG] [RESULTS]   (RESULTS default /tmp/series/results.jsonl)
"""
import json, statistics, sys
tag = sys.argv[1] if len(sys.argv) > 1 else None
path = sys.argv[2] if len(sys.argv) > 2 else '/tmp/series/results.jsonl'
rows = {}
for l in open(path):
    d = json.loads(l)
    if tag and d['tag'] != tag: continue
    rows.setdefault((d['tag'], d['label']), []).append(d['result'])
def med(v): return statistics.median(v)
def fmt(vals, f="%.0f"): return (f % med(vals)) + " (" + ", ".join(f % v for v in vals) + ")"
for (t, lab), rs in rows.items():
    r0 = rs[0]; sc = r0.get('scenario')
    if sc == 'connections':
        print(t, lab, "logins/s", fmt([r['logins_per_sec'] for r in rs]), "| rss/conn", fmt([r['rss_per_conn_kib'] for r in rs], "%.2f"), "| p50", fmt([r['login_latency_ms']['p50'] for r in rs], "%.1f"), "p99", fmt([r['login_latency_ms']['p99'] for r in rs], "%.1f"), "| fail", sum(r['failures'] for r in rs), "| srv", fmt([r['server_cpu_pct'] for r in rs]), "gen", fmt([r['client_cpu_pct'] for r in rs]))
    elif sc == 'online':
        print(t, lab, "acked/s", fmt([r['acked_per_sec'] for r in rs]), "| e2e p50", fmt([r['latency_ms']['p50'] for r in rs], "%.1f"), "p99", fmt([r['latency_ms']['p99'] for r in rs], "%.1f"), "max", fmt([r['latency_ms']['max'] for r in rs]), "| lost", [r['lost'] for r in rs], "found", [r.get('lost_found_in_history') for r in rs], "dup", sum(r['duplicated'] for r in rs), "ooo", [r['out_of_order'] for r in rs], "ooc", [r.get('out_of_commit_order') for r in rs], "| srv", fmt([r['server_cpu_pct'] for r in rs]), "gen", fmt([r['client_cpu_pct'] for r in rs]), "| us/msg srv", fmt([r.get('server_cpu_us_per_msg') or 0 for r in rs], "%.1f"), "gen", fmt([r.get('client_cpu_us_per_msg') or 0 for r in rs], "%.1f"), "| unacked", [r['unacked'] for r in rs])
    elif sc == 'offline':
        fin = [r['login_to_sync_finished_ms'] for r in rs if 'login_to_sync_finished_ms' in r]
        extra = ("| +conversation list: login->sync finished ms " + fmt(fin, "%.1f")) if fin else ""
        print(t, lab, "login->synced ms", fmt([r['login_to_synced_ms'] for r in rs], "%.1f"), "| msgs/s", fmt([r['messages_per_sec'] for r in rs]), extra)
    elif sc == 'history':
        print(t, lab, "bg acked/s", fmt([r['acked_per_sec'] for r in rs]), "| hist p50", fmt([r['history_ms']['p50'] for r in rs], "%.2f"), "p90", fmt([r['history_ms']['p90'] for r in rs], "%.2f"), "p99", fmt([r['history_ms']['p99'] for r in rs], "%.2f"), "max", fmt([r['history_ms']['max'] for r in rs], "%.1f"), "| e2e p99", fmt([r['latency_ms']['p99'] for r in rs]), "| srv", fmt([r['server_cpu_pct'] for r in rs]))
