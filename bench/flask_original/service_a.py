"""The original lab's service-a, for comparison only: Flask's built-in
server, as the lab first shipped it. Not part of the product."""
import os

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.get("/echo")
def echo():
    return jsonify(echo=request.args.get("msg", ""))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
