#!/usr/bin/env python3
"""Small /proc readers for the benchmarks (stdlib only).

  proc.py descendants PID          all descendant pids of PID, one per line
  proc.py mem PID...               "rss_kib pss_kib" summed over the pids
                                   (pss is "na" when smaps_rollup is unreadable)
  proc.py count-desc PID COMM      how many descendants of PID have this comm
  proc.py cputicks PID             utime+stime of PID, in seconds (float)
  proc.py children PID COMM        pids of descendants of PID with this comm
"""
import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # comm may hold spaces and parens: split after the last ')'.
    lpar, rpar = data.index("("), data.rindex(")")
    return data[lpar + 1 : rpar], data[rpar + 2 :].split()


def all_ppids():
    """pid -> (ppid, comm) for every process visible now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            comm, rest = stat_fields(name)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        out[int(name)] = (int(rest[1]), comm)
    return out


def descendants(root):
    table = all_ppids()
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            found.append(c)
            todo.append(c)
    return found, table


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv):
    cmd = argv[1]
    if cmd == "descendants":
        found, _ = descendants(int(argv[2]))
        print("\n".join(map(str, found)))
    elif cmd in ("count-desc", "children"):
        found, table = descendants(int(argv[2]))
        match = [p for p in found if table[p][1] == argv[3]]
        print(len(match) if cmd == "count-desc" else "\n".join(map(str, match)))
    elif cmd == "mem":
        rss, pss = 0, 0
        for pid in argv[2:]:
            rss += status_kib(pid, "VmRSS")
            p = pss_kib(pid)
            pss = None if (p is None or pss is None) else pss + p
        print(rss, "na" if pss is None else pss)
    elif cmd == "cputicks":
        _, rest = stat_fields(argv[2])
        # fields after comm: state=0 ... utime=11 stime=12
        print((int(rest[11]) + int(rest[12])) / CLK_TCK)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
