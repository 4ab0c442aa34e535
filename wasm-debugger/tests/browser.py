"""Drive quiver-debug's page in headless chromium over the Chrome DevTools Protocol.

usage: browser.py CHROMIUM URL SCREENSHOT UDF_STEP VALUE_STEP
Prints one JSON line with what the page showed. Every wait has a deadline.
"""
import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # websocket-client, installed by scripts/browser-env.sh

chromium, url, shot, udf_step, value_step = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
profile = tempfile.mkdtemp(prefix="quiver-chromium-")
proc = subprocess.Popen(
    [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
     "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
     f"--user-data-dir={profile}", "--window-size=1400,900", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
try:
    deadline = time.time() + 60
    ws_url = None
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            sys.exit(f"chromium exited: {proc.returncode}")
        if "DevTools listening on" in line:
            ws_url = line.split("listening on", 1)[1].strip()
            break
    if not ws_url:
        sys.exit("chromium did not start its DevTools endpoint within 60 s")
    port = ws_url.split(":")[2].split("/")[0]
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
    page = next(t for t in targets if t["type"] == "page")
    ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
    ids = iter(range(1, 1_000_000))

    def cdp(method, **params):
        i = next(ids)
        ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(expr):
        r = cdp("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(expr, what, seconds=20):
        end = time.time() + seconds
        while time.time() < end:
            v = js(expr)
            if v:
                return v
            time.sleep(0.05)
        state = js("JSON.stringify({step: document.body.dataset.step, title: document.getElementById('step-title').textContent, body: document.getElementById('step-body').innerHTML.slice(0, 300)})")
        raise TimeoutError(f"waited {seconds} s for {what}; the page shows {state}")

    def key(k):
        code = "Key" + k.upper()
        for t in ("keyDown", "keyUp"):
            cdp("Input.dispatchKeyEvent", type=t, key=k, code=code, text=k if t == "keyDown" else "",
                windowsVirtualKeyCode=ord(k.upper()))

    def go(step):
        while int(js("document.body.dataset.step")) < step:
            before = int(js("document.body.dataset.step"))
            key("j")
            wait(f"document.body.dataset.step === '{before + 1}'", f"step {before + 1}")

    def rows(sel):
        return js(f"(document.querySelector('{sel}') || {{rows: []}}).rows.length") - 1

    cdp("Page.enable")
    cdp("Runtime.enable")
    cdp("Page.navigate", url=url)
    wait("document.body && document.body.dataset.ready === '1'", "the page to load the trace")
    seen = {
        "verdict": js("document.getElementById('verdict').textContent"),
        "verdict_class": js("document.getElementById('verdict').className"),
        "rail": js("document.querySelectorAll('#steps li').length"),
        "first_title": js("document.getElementById('step-title').textContent"),
        "first_rows": rows("#step-rows"),
        "changed_cells": js("document.querySelectorAll('#step-rows td.changed').length"),
        "command": js("document.getElementById('command').textContent"),
        "plan": js("document.getElementById('plan').textContent"),
    }
    key("j")
    wait("document.body.dataset.step === '1'", "j to move to step 2")
    seen["after_j"] = int(js("document.body.dataset.step"))
    key("k")
    wait("document.body.dataset.step === '0'", "k to move back")
    seen["after_k"] = int(js("document.body.dataset.step"))
    go(udf_step)
    wait("!!document.getElementById('udf-output')", "the UDF call's input and output")
    seen["udf_step"] = int(js("document.body.dataset.step"))
    seen["udf_input_rows"] = rows("#udf-input")
    seen["udf_output_rows"] = rows("#udf-output")
    shot_data = cdp("Page.captureScreenshot", format="png")["data"]
    with open(shot, "wb") as f:
        f.write(base64.b64decode(shot_data))
    go(value_step)
    wait("!!document.getElementById('compare')", "the replayed vs online table")
    seen["value_step"] = int(js("document.body.dataset.step"))
    seen["compare_rows"] = rows("#compare")
    seen["diff_rows"] = js("document.querySelectorAll('#compare tr.diff').length")
    ws.close()
    print(json.dumps(seen))
finally:
    proc.kill()
    proc.wait(timeout=10)
