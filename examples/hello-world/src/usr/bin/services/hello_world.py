#!/usr/bin/env python3
"""The example service: read /etc/hello.cfg, greet on a timer, count runs in /storage."""

import configparser
import os
import time
from pathlib import Path

config = configparser.ConfigParser()
config.read(os.environ.get("HELLO_CONFIG", "/etc/hello.cfg"))
message = config.get("hello", "message", fallback="Hello")
interval = config.getfloat("hello", "interval", fallback=2.0)

runs = None
storage = Path("/storage")
if storage.is_dir():
    counter = storage / "runs"
    runs = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(runs))

instance = os.environ.get("AOS_INSTANCE_INDEX", "?")
print(f"{message} (instance {instance}, run {runs if runs is not None else 'n/a'})", flush=True)
tick = 0
while True:
    tick += 1
    print(f"{message}: tick {tick}", flush=True)
    time.sleep(interval)
