"""Prints a greeting made by a module of the pylibs Aos layer, then stays up."""

import time

from aos_greeting import greeting

print(greeting("edge"), flush=True)
while True:
    time.sleep(60)
