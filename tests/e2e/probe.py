"""The attacker's code: what a workload tries against the walls (docs/isolation.md).

`probe_source(config)` is a Python file that runs the attempts at import and prints one line
``PROBE<json>``; the e2e attack test puts it in a kernel, a job run, a model build and a replica.
It prints no secret: what it could read is reported as sha256 hashes of the contents and of
every token-like word it found (environment, other processes), which the test compares with
the hashes of the secrets it knows.
"""

import json
import textwrap

SOURCE = textwrap.dedent(
    """
    import hashlib, json, os, re, urllib.error, urllib.request

    CONFIG = json.loads({config!r})
    WORD = re.compile(r"[A-Za-z0-9_=-]{{16,}}")


    def digest(data):
        return hashlib.sha256(data).hexdigest()


    def words(text):
        return {{digest(w.encode()) for w in WORD.findall(text)}}


    def attempt_read(path):
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except OSError as e:
            return {{"ok": False, "error": type(e).__name__}}
        return {{"ok": True, "sha": digest(data), "words": sorted(words(data.decode("latin-1")))}}


    def attempt_write(path):
        try:
            with open(path, "a") as f:
                f.write("attacker was here\\n")
        except OSError as e:
            return {{"ok": False, "error": type(e).__name__}}
        return {{"ok": True}}


    def attempt_list(path):
        try:
            return {{"ok": True, "names": sorted(os.listdir(path))}}
        except OSError as e:
            return {{"ok": False, "error": type(e).__name__}}


    def call(url, token):
        headers = {{"Authorization": "token " + token}} if token else {{}}
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0


    def probe():
        found = {{"reads": {{}}, "writes": {{}}, "lists": {{}}, "uses": []}}
        for path in CONFIG["read"]:
            found["reads"][path] = attempt_read(path)
        for path in CONFIG["write"]:
            found["writes"][path] = attempt_write(path)
        for path in CONFIG["list"]:
            found["lists"][path] = attempt_list(path)
        seen = set()
        for value in os.environ.values():
            seen |= words(value)
        others = []
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                for part in ("environ", "cmdline"):
                    result = attempt_read(f"/proc/{{pid}}/{{part}}")
                    if result["ok"]:
                        seen |= set(result["words"])
                others.append(pid)
        found["env_and_proc_words"] = sorted(seen)
        found["other_pids"] = len(others)
        # every token this workload holds, against what only administrators may do
        tokens = [v for v in os.environ.values() if re.fullmatch(r"[A-Za-z0-9_]{{20,}}", v)]
        for token in ["", *tokens]:
            for url in CONFIG["admin_urls"]:
                found["uses"].append([url, call(url, token)])
        found["uid"] = os.getuid()
        found["cwd"] = os.getcwd()
        return found


    print("PROBE" + json.dumps(probe()), flush=True)


    def predict(args):
        return probe()
    """
)


def probe_source(config: dict) -> str:
    """The probe for `config`: ``read``, ``write`` and ``list`` (paths), ``admin_urls`` (called
    with no token and with each token-like value of the workload's environment)."""
    return SOURCE.format(config=json.dumps(config))


def parse(output: str) -> dict:
    """The probe's result from text that holds its ``PROBE`` line."""
    for line in output.splitlines():
        if "PROBE{" in line:  # a build log indents what the checked module prints
            return json.loads(line[line.index("PROBE{") + len("PROBE") :])
    raise AssertionError(f"no probe result in:\n{output[-3000:]}")
