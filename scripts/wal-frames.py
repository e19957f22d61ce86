#!/usr/bin/env python3
"""WAL frames per commit, by table or index, of a running `duet serve`'s SQLite store.

usage: wal-frames.py DATA_DIR

Copies duet.sqlite and its WAL (the copy competes with the server for the disk: expect the
run's tail to suffer), reads the frames of the WAL's current generation, and maps each page
to its table or index with the `dbstat` virtual table of the sqlite3 shell.
"""
import collections, os, shutil, struct, subprocess, sys, tempfile

data = sys.argv[1]
tmp = tempfile.mkdtemp()
try:
    wal = os.path.join(tmp, 'copy.wal')
    shutil.copy(os.path.join(data, 'duet.sqlite-wal'), wal)
    shutil.copy(os.path.join(data, 'duet.sqlite'), os.path.join(tmp, 'duet.sqlite'))
    shutil.copy(wal, os.path.join(tmp, 'duet.sqlite-wal'))
    out = subprocess.run(['sqlite3', os.path.join(tmp, 'duet.sqlite'),
                          'SELECT pageno, name FROM dbstat'],
                         capture_output=True, text=True, check=True).stdout
    owner = {int(p): n for p, n in (line.split('|', 1) for line in out.splitlines())}
    w = open(wal, 'rb').read()
    _magic, _version, page_size, _seq, salt1, salt2 = struct.unpack('>IIIIII', w[:24])
    off, frames, commits = 32, 0, 0
    per_table, pending = collections.Counter(), collections.Counter()
    while off + 24 + page_size <= len(w):
        page, db_size, s1, s2 = struct.unpack('>IIII', w[off:off + 16])
        if (s1, s2) != (salt1, salt2):
            break  # a frame of an earlier generation: the WAL started over before it
        pending[owner.get(page, '?')] += 1
        frames += 1
        if db_size:  # a commit frame
            commits += 1
            per_table.update(pending)
            pending.clear()
        off += 24 + page_size
    n = max(commits, 1)
    print(f"commits {commits}  frames {frames}  frames per commit {frames / n:.2f}")
    for name, count in per_table.most_common(12):
        print(f"  {name:28} {count / n:6.2f}")
finally:
    shutil.rmtree(tmp)
