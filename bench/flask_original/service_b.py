"""The original lab's service-b, for comparison only: Flask calling
service-a with `requests` (a new connection per call), 1 s timeout."""
import os

import requests
from flask import Flask, jsonify, request

app = Flask(__name__)
SERVICE_A_URL = os.environ.get("SERVICE_A_URL", "http://127.0.0.1:8080")


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.get("/call-echo")
def call_echo():
    try:
        r = requests.get(SERVICE_A_URL + "/echo", params={"msg": request.args.get("msg", "")}, timeout=1)
        r.raise_for_status()
        return jsonify(service_b="ok", service_a=r.json())
    except requests.RequestException as e:
        return jsonify(service_b="ok", service_a="unavailable", error=str(e)), 503


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8081")))
