#!/bin/bash
# session 24 call 5: where mla_decode_tma_kernel spills (SASS + executed counts)
O=${OUT:-/tmp/o}; mkdir -p $O
t0=$(date +%s)
t/gpu/run nothing > /tmp/build.log 2>&1; echo "build rc=$?"
cuobjdump -sass -fun mla_decode_tma_kernel build/gpu/obj/mla.o > /tmp/mla.sass 2>&1 || cuobjdump -sass build/gpu/obj/mla.o > /tmp/all.sass
[ -s /tmp/mla.sass ] || awk '/Function : .*mla_decode_tma_kernel/,/Function : [^m]/' /tmp/all.sass > /tmp/mla.sass
wc -l /tmp/mla.sass; gzip -c /tmp/mla.sass > $O/mla.sass.gz
grep -n "STL\|LDL" /tmp/mla.sass | head -40
timeout 100 ncu --clock-control none --set full --import-source yes -k regex:mla_decode_tma -c 1 -o /tmp/m build/gpu/kcheck bench /tmp/tab mlaone > /tmp/n.log 2>&1; echo "ncu rc=$?"
ncu -i /tmp/m.ncu-rep --page source --csv --print-source sass 2>/dev/null | gzip > $O/mla.src.csv.gz
echo "== t=$(( $(date +%s) - t0 ))"
