import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors='replace')))
# find header row
hi = next(i for i, r in enumerate(rows) if any('Address' in c for c in r) and any('Source' in c for c in r))
h = rows[hi]
print('columns:', h[:40])
def col(name):
    for i, c in enumerate(h):
        if name in c:
            return i
    return None
ci = col('Warp Stall Sampling (All')
si = col('Source')
ai = col('Address')
ei = col('Instructions Executed')
stall_cols = [(i, c) for i, c in enumerate(h) if c.startswith('stall_') or 'Stall' in c and i != ci]
data = []
for r in rows[hi + 1:]:
    if len(r) != len(h):
        continue
    try:
        v = float(r[ci].replace(',', '') or 0)
    except ValueError:
        continue
    data.append((v, r))
tot = sum(v for v, _ in data)
print('total samples', tot)
for v, r in sorted(data, key=lambda x: -x[0])[:45]:
    extra = ''
    print('%6.0f %5.1f%% %s ex=%s %s' % (v, 100 * v / tot if tot else 0, r[ai], r[ei] if ei is not None else '', r[si][:90]))
