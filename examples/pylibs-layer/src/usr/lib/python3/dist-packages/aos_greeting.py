"""A module that only the pylibs layer provides."""


def greeting(name: str) -> str:
    return f"Hello, {name}, from the pylibs layer"
