# Helpers loadtest/prod.sh and loadtest/apps.sh share (sourced; they set `report` first for
# `say`).

say() { printf '%s\n' "$*" >>"$report"; printf '%s\n' "$*"; }
note() { printf '%s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A field of a `|`-separated scenario row: field ROW_INDEX FIELD_INDEX (reads the array S).
field() { local IFS='|'; local -a f; read -r -a f <<<"${S[$1]}"; printf '%s' "${f[$2]:-}"; }
# Runs a command given one word per line on stdin (what the scripts' cmd_of prints).
run_cmd() { local -a c; mapfile -t c; "${c[@]}"; }

# Parses a tool's output: "rps p50_ms p99_ms requests errors bytes_per_answer".
parse() { # tool outputfile logfile
  if [ "$1" = wrk ]; then
    python3 - "$2" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n = float(re.match(r"[\d.]+", v).group())
    return n / 1000 if v.endswith("us") else n * 1000 if v.endswith("s") and not v.endswith("ms") else n
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", t)
reqs = int(m.group(1))
read = float(m.group(2)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(3)]
errs = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", t))
s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
if s:
    errs += sum(map(int, s.groups()))
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {reqs} {errs} {read / max(reqs, 1):.0f}")
PY
  else
    python3 - "$2" "$3" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", t).group(1))
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", t)
done, ok, failed, errored, timeout = (int(m.group(i)) for i in (3, 4, 5, 6, 7))
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t)
non2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
data = int(re.search(r"\((\d+)\) data", t).group(1))
durs = []
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) >= 3:
        durs.append(int(f[2]))  # microseconds
durs.sort()
pct = lambda q: durs[min(len(durs) - 1, int(q * len(durs)))] / 1000 if durs else float("nan")
print(f"{rps:.0f} {pct(0.50):.2f} {pct(0.99):.2f} {ok} {failed + errored + timeout + non2xx} {data / max(ok, 1):.0f}")
PY
  fi
}
