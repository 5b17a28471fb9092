#!/usr/bin/env bash
# Smoke-test a built bundle: run the demo offscreen (2 training steps), check it exits 0 and
# writes a screenshot that is not blank; print the bundle size and start-up times.
#
#   packaging/smoke.sh [BUNDLE_DIR]     (default: <repo>/dist/ielstudio)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=${1:-$ROOT/dist/ielstudio}
EXE="$BUNDLE/ielstudio"
SHOT=${SHOT:-/tmp/ielstudio-smoke-$$.png}
test -x "$EXE" || { echo "smoke.sh: no bundle at $BUNDLE (run packaging/build.sh)" >&2; exit 1; }
test -d "$BUNDLE/_internal/resources/sample" || { echo "smoke.sh: FAIL: the bundle lacks resources/sample (the demo data)" >&2; exit 1; }

export QT_QPA_PLATFORM=offscreen
# a clean home so the run cannot depend on the developer's settings
SMOKE_HOME=$(mktemp -d)
trap 'rm -rf "$SMOKE_HOME"' EXIT
export HOME="$SMOKE_HOME"
unset XDG_CONFIG_HOME XDG_DATA_HOME XDG_CACHE_HOME
rm -f "$SHOT"

now() { date +%s.%N; }
t0=$(now)
"$EXE" --help >/dev/null
t1=$(now)
LOG="$SMOKE_HOME/demo.log"
set +e
"$EXE" demo --train-steps 2 --screenshot "$SHOT" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
t2=$(now)
[ "$rc" -eq 0 ] || { echo "smoke.sh: FAIL: the demo exited with status $rc" >&2; exit 1; }
if grep -qiE '^(error|traceback)|: error:' "$LOG"; then
  echo "smoke.sh: FAIL: the demo reported an error (see above)" >&2; exit 1
fi

test -s "$SHOT" || { echo "smoke.sh: FAIL: no screenshot at $SHOT" >&2; exit 1; }

# Not blank: decode the PNG with the Python standard library only and look at the pixels.
python3 - "$SHOT" <<'PY'
import struct, sys, zlib

data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, width = 8, b"", 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
assert depth == 8 and ctype in (2, 6), f"unexpected PNG type depth={depth} colour={ctype}"
bpp = 3 if ctype == 2 else 4
raw, stride = zlib.decompress(idat), width * bpp
prev, colours, lum = bytearray(stride), set(), []
for y in range(height):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    prev = line
    if y % 4 == 0:
        for x in range(0, width, 4):
            px = bytes(line[x * bpp:x * bpp + 3])
            colours.add(px)
            lum.append(sum(px))
mean = sum(lum) / len(lum)
std = (sum((v - mean) ** 2 for v in lum) / len(lum)) ** 0.5
print(f"screenshot {width}x{height}: {len(colours)} distinct colours, luminance std {std / 3:.1f}")
if len(colours) < 16 or std / 3 < 5:
    sys.exit("smoke.sh: FAIL: the screenshot is blank")
PY

printf 'bundle size: %s\n' "$(du -sh "$BUNDLE" | cut -f1)"
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "start-up (--help, imports torch): %.2f s\ndemo to screenshot (2 training steps): %.2f s\n", b - a, c - b }'
echo "smoke.sh: OK"
