#!/usr/bin/env python3
"""Numbers of the hwid SPIRE HA scale test (tests/scale/scale_test.sh).

batch WORK NAME N [SERVER_LOG...]: one batch of N agents started together. Reads WORK/batch-NAME.launch (lines
"I EPOCH_SECONDS": when agent I was started) and each agent's log WORK/agent/I/NAME.log (SPIRE
text log, RFC 3339 nanosecond timestamps). Latency of agent I = time of its "Node attestation was
successful" line minus its start time: process start, plugin start, the TPM work (AK creation on
first use, credential activation, quote), the wait in the server's rate limiter and the server's
verification. Prints one line "NAME n=N ok=K p50=... p95=... p99=... max=... total=... rate=..."
(seconds; total = last success minus first start; rate = K / total) and exits 1 when an agent has
no success line. With server logs, also "srv_rate=R srv=K1/K2": the hwid_tpm plugin's "agent
attested" lines of each server inside the batch (first start .. last success), and R = (lines - 1)
/ (last line - first line): the rate the servers verified at while the batch ran.

reattest WORK SINCE_EPOCH AGENT_IDS_FILE SERVER_LOG: for each agent ID (one per line), the number
of "agent attested" lines of the hwid_tpm server plugin in SERVER_LOG at or after SINCE_EPOCH;
prints "missing=ID,..." for the agents without one, and "count=K first=T last=T" (seconds after
SINCE_EPOCH).

count SERVER_LOG SINCE_EPOCH: the number of "agent attested" lines at or after SINCE_EPOCH.

ekinfo TPMS_DIR N: for TPM I = 1..N, reads TPMS_DIR/tpm/I/ekcert/ek-rsa2048.crt (DER), writes
it as PEM next to it (ek-rsa2048.pem, for one `openssl verify` of all) and prints
"I SERIAL_HEX SHA256(SubjectPublicKeyInfo DER)": the agent ID hwid_tpm must give that TPM.
"""
import datetime
import math
import re
import sys

TIME_RE = re.compile(r'time="([^"]+)"')
SPIFFE_RE = re.compile(r'spiffe_id="?(spiffe://[^" ]+)')


def epoch(ts):
    """RFC 3339 with up to 9 fractional digits -> float seconds."""
    m = re.match(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$', ts)
    if not m:
        raise ValueError(f"unexpected timestamp {ts!r}")
    base, frac, tz = m.groups()
    tz = "+00:00" if tz == "Z" else tz
    t = datetime.datetime.fromisoformat(base + tz).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def percentile(sorted_vals, p):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return float("nan")
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def log_lines(path, needle):
    """(epoch, line) of the lines of path containing needle."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if needle in line:
                    m = TIME_RE.search(line)
                    if m:
                        out.append((epoch(m.group(1)), line))
    except FileNotFoundError:
        pass
    return out


def batch(work, name, n, server_logs=()):
    starts = {}
    with open(f"{work}/batch-{name}.launch", encoding="utf-8") as f:
        for line in f:
            i, t = line.split()
            starts[int(i)] = float(t)
    lat, ends, missing = [], [], []
    for i in range(1, n + 1):
        ok = log_lines(f"{work}/agent/{i}/{name}.log", "Node attestation was successful")
        if i not in starts or not ok:
            missing.append(i)
            continue
        lat.append(ok[0][0] - starts[i])
        ends.append(ok[0][0])
    lat.sort()
    total = (max(ends) - min(starts.values())) if ends else float("nan")
    rate = len(ends) / total if ends and total > 0 else float("nan")
    srv = ""
    if server_logs and ends:
        lo, hi = min(starts.values()), max(ends) + 0.5
        per, alltimes = [], []
        for log in server_logs:
            ts = [t for t, _ in log_lines(log, "agent attested") if lo <= t <= hi]
            per.append(str(len(ts)))
            alltimes += ts
        alltimes.sort()
        span = alltimes[-1] - alltimes[0] if len(alltimes) > 1 else 0.0
        srate = (len(alltimes) - 1) / span if span > 0 else float("nan")
        srv = f" srv_rate={srate:.1f} srv={'/'.join(per)}"
    print(f"{name} n={n} ok={len(lat)} p50={percentile(lat, 50):.2f} p95={percentile(lat, 95):.2f} "
          f"p99={percentile(lat, 99):.2f} max={(lat[-1] if lat else float('nan')):.2f} "
          f"total={total:.1f} rate={rate:.2f}" + srv
          + (f" missing={','.join(map(str, missing))}" if missing else ""))
    return 1 if missing else 0


def reattest(since, ids_file, server_log):
    with open(ids_file, encoding="utf-8") as f:
        ids = [l.strip() for l in f if l.strip()]
    seen = {}
    for t, line in log_lines(server_log, "agent attested"):
        if t < since:
            continue
        m = SPIFFE_RE.search(line)
        if m:
            seen.setdefault(m.group(1), []).append(t)
    missing = [i for i in ids if i not in seen]
    times = sorted(t for i in ids for t in seen.get(i, []))
    if missing:
        print("missing=" + ",".join(missing))
    if times:
        print(f"count={len(times)} agents={len(ids) - len(missing)} first={times[0] - since:.1f} "
              f"last={times[-1] - since:.1f} last_first={max(min(seen[i]) for i in ids if i in seen) - since:.1f}")
    else:
        print("count=0 agents=0")
    return 1 if missing else 0


def count(server_log, since):
    print(sum(1 for t, _ in log_lines(server_log, "agent attested") if t >= since))
    return 0


def der_tlv(buf, pos):
    """(tag, content_start, content_end) of the DER element at pos."""
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    return tag, pos, pos + length


def ekinfo(tpms, n):
    import base64
    import hashlib
    for i in range(1, n + 1):
        path = f"{tpms}/tpm/{i}/ekcert/ek-rsa2048.crt"
        der = open(path, "rb").read()
        _, cs, _ = der_tlv(der, 0)           # Certificate
        _, ts, _ = der_tlv(der, cs)          # tbsCertificate
        pos = ts
        tag, s, e = der_tlv(der, pos)
        if tag == 0xA0:                      # [0] version
            pos = e
            tag, s, e = der_tlv(der, pos)
        serial = der[s:e].hex()
        pos = e
        for _ in range(4):                   # signature, issuer, validity, subject
            pos = der_tlv(der, pos)[2]
        tag, s, e = der_tlv(der, pos)        # subjectPublicKeyInfo
        spki = der[pos:e]
        b64 = base64.encodebytes(der).decode().replace("\n", "")
        pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(
            b64[j:j + 64] for j in range(0, len(b64), 64)) + "\n-----END CERTIFICATE-----\n"
        with open(path[:-4] + ".pem", "w", encoding="ascii") as f:
            f.write(pem)
        print(i, serial, hashlib.sha256(spki).hexdigest())
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "ekinfo":
        return ekinfo(argv[2], int(argv[3]))
    if len(argv) >= 5 and argv[1] == "batch":
        return batch(argv[2], argv[3], int(argv[4]), argv[5:])
    if len(argv) == 6 and argv[1] == "reattest":
        return reattest(float(argv[3]), argv[4], argv[5])
    if len(argv) == 4 and argv[1] == "count":
        return count(argv[2], float(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
